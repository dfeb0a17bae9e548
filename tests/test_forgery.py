"""Forged bounces and complaints never act (issue 20, defects 2 and 3); probes answer by DSN (issue 15, item 3).

The engine with its real store, queue, classifier and VERP codec; the clock
is frozen (engine_helpers.make_env).
"""
from __future__ import annotations

import pytest

from listgate import clock, verp
from listgate.app import attribution

from engine_helpers import DAY, DOMAIN, dsn, make_env

JANE = "jane@example.com"
# 60 octets of local part: with the list's bounce prefix it cannot get a VERP sender (RFC 5321: 64 octets)
LONG = "a.very.long.local.part.that.does.not.fit.in.a.verp.address.x@example.com"
LIST_ID = f"<demo.{DOMAIN}>"


def arf(complainer: str, *, message_id: str = "<post-1@lists.example.org>", list_id: str | None = LIST_ID,
        return_path: str | None = None) -> bytes:
    """An RFC 5965 abuse report naming ``complainer``, with the reported message attached
    (with ``return_path``: as the member's MTA delivered it, RFC 5321 section 4.4)."""
    list_line = f"List-Id: {list_id}\n" if list_id else ""
    if return_path:
        list_line = f"Return-Path: <{return_path}>\n" + list_line
    return (
        "From: fbl@isp.example\nTo: demo-bounces@lists.example.org\nSubject: complaint\n"
        "Message-ID: <fbl-1@isp.example>\nMIME-Version: 1.0\n"
        "Content-Type: multipart/report; report-type=feedback-report; boundary=fb\n\n"
        "--fb\nContent-Type: text/plain\n\nThis is an abuse report.\n\n"
        "--fb\nContent-Type: message/feedback-report\n\n"
        f"Feedback-Type: abuse\nUser-Agent: isp-fbl/1.0\nVersion: 1\nOriginal-Rcpt-To: {complainer}\n\n"
        "--fb\nContent-Type: message/rfc822\n\n"
        f"From: someone@example.net\nTo: demo@{DOMAIN}\nSubject: [demo] a post\nMessage-ID: {message_id}\n"
        f"{list_line}\nbody\n"
        "--fb--\n").encode()


def test_long_member_gets_the_plain_sender():
    # the premise of the rules below: LONG cannot be embedded within 64 octets
    assert len(f"demo-bounces+{LONG.replace('@', '=')}.k1.aaa12345678") > verp.MAX_LOCAL_PART


def test_forged_plain_dsns_for_ten_days_never_score_or_probe(site):
    env = make_env(site, members=(JANE,), bounce_score_threshold=3.0)
    for _ in range(10):
        outcome = env.bounce(dsn(JANE), env.plain_rcpt())
        assert env.actions(outcome) == [(JANE, "unverified")]
        clock.advance(DAY)
    member = env.member(JANE)
    assert (member.bounce_score, member.delivery_status) == (0.0, "enabled")
    assert env.pending_probes(JANE) == [] and env.virgin() == []
    assert [e.action for e in env.store.events(JANE)] == ["unverified"] * 10


def test_member_without_verp_scored_only_for_a_post_we_sent(site):
    env = make_env(site, members=(LONG,))
    assert verp.member_bounce_address(env.site, env.lc, LONG) == f"demo-bounces@{DOMAIN}"   # no VERP for LONG
    # no post with that Message-ID went out: not scored
    outcome = env.bounce(dsn(LONG, original_message_id="<made-up@x>", list_id=LIST_ID), env.plain_rcpt())
    assert env.actions(outcome) == [(LONG, "unverified")]
    attribution.record_post(env.store, env.lc, "<post-9@lists.example.org>")
    clock.advance(60)
    # a post of ours, but the returned original does not carry our List-Id
    outcome = env.bounce(dsn(LONG, original_message_id="<post-9@lists.example.org>"), env.plain_rcpt())
    assert env.actions(outcome) == [(LONG, "unverified")]
    outcome = env.bounce(dsn(LONG, original_message_id="<post-9@lists.example.org>", list_id=LIST_ID),
                         env.plain_rcpt())
    assert env.actions(outcome) == [(LONG, "scored")] and outcome.actions[0].attribution == "post"
    assert env.member(LONG).bounce_score == 1.0


def test_post_recorded_before_the_member_joined_does_not_count(site):
    env = make_env(site, members=())
    attribution.record_post(env.store, env.lc, "<old@lists.example.org>")
    clock.advance(60)
    env.store.add_member(LONG)
    outcome = env.bounce(dsn(LONG, original_message_id="<old@lists.example.org>", list_id=LIST_ID),
                         env.plain_rcpt())
    assert env.actions(outcome) == [(LONG, "unverified")]


def test_member_without_verp_scored_by_our_envid(site):
    env = make_env(site, members=(LONG,))
    outcome = env.bounce(dsn(LONG, envid=verp.post_envid(env.site, env.lc, LONG)), env.plain_rcpt())
    assert env.actions(outcome) == [(LONG, "scored")] and outcome.actions[0].attribution == "envid"
    # an ENVID past verp.max_age proves nothing
    old = verp.post_envid(env.site, env.lc, LONG)
    clock.advance(15 * DAY)
    outcome = env.bounce(dsn(LONG, envid=old), env.plain_rcpt())
    assert env.actions(outcome) == [(LONG, "unverified")]


def test_probe_attaches_a_summary_not_a_plain_address_bounce(site):
    env = make_env(site, members=(LONG,), bounce_score_threshold=1.0)
    marker = "OUTSIDER-CHOSEN-TEXT"
    msg = dsn(LONG, envid=verp.post_envid(env.site, env.lc, LONG)).replace(b"a post", marker.encode())
    outcome = env.bounce(msg, env.plain_rcpt())
    assert env.actions(outcome) == [(LONG, "probe_sent")]
    [probe] = env.virgin("probe")
    assert marker.encode() not in probe.msg
    assert b"Status: 5.1.1" in probe.msg and b"Attributed by: envid" in probe.msg
    # the evidence kept for the owners is the bounce itself
    assert marker.encode() in env.store.evidence(LONG)[0][1]


def test_probe_attaches_a_bounce_that_reached_the_verp_address(site):
    env = make_env(site, members=(JANE,), bounce_score_threshold=1.0)
    env.verp_bounce(JANE)
    [probe] = env.virgin("probe")
    assert b"Final-Recipient: rfc822; jane@example.com" in probe.msg


# -- complaints -------------------------------------------------------------------------------------

@pytest.mark.parametrize("action", ["unsubscribe", "disable"])
def test_forged_complaint_to_plain_address_changes_nothing(site, action):
    env = make_env(site, members=(JANE,), complaint_action=action)
    outcome = env.bounce(arf(JANE, message_id="<never-sent@x>"), env.plain_rcpt())
    assert env.actions(outcome) == [(JANE, "complaint_unverified")]
    assert env.member(JANE).delivery_status == "enabled"
    [notice] = env.virgin("owner_notice")
    assert b"nothing done" in notice.msg


@pytest.mark.parametrize("action, expect", [("unsubscribe", None), ("disable", "by_admin")])
def test_complaint_through_verp_acts(site, action, expect):
    env = make_env(site, members=(JANE,), complaint_action=action)
    outcome = env.bounce(arf(JANE, list_id=None), env.verp_rcpt(JANE))
    assert env.actions(outcome) == [(JANE, "complaint")]
    member = env.member(JANE)
    assert (member.delivery_status if member else None) == expect


def test_complaint_quoting_a_public_post_proves_nothing(site):
    """A post's List-Id and Message-ID are known to every member and archive reader:
    a report quoting them, sent to the plain address, changes nothing."""
    env = make_env(site, members=(JANE,), complaint_action="unsubscribe")
    attribution.record_post(env.store, env.lc, "<post-7@lists.example.org>")
    clock.advance(60)
    outcome = env.bounce(arf(JANE, message_id="<post-7@lists.example.org>"), env.plain_rcpt())
    assert env.actions(outcome) == [(JANE, "complaint_unverified")]
    assert env.member(JANE).delivery_status == "enabled"


def test_complaint_quoting_the_members_own_copy_acts(site):
    """The member's copy as delivered carries their signed VERP address as Return-Path:
    an outsider cannot make that, so such a report acts even at the plain address."""
    bob = "bob@example.org"
    env = make_env(site, members=(JANE, bob), complaint_action="unsubscribe")
    # another member's copy does not speak for Jane
    outcome = env.bounce(arf(JANE, return_path=verp.member_bounce_address(env.site, env.lc, bob)), env.plain_rcpt())
    assert env.actions(outcome) == [(JANE, "complaint_unverified")]
    # a tampered Return-Path proves nothing either
    forged = verp.member_bounce_address(env.site, env.lc, JANE)[:-15] + "aaaa" + verp.member_bounce_address(
        env.site, env.lc, JANE)[-11:]
    assert env.actions(env.bounce(arf(JANE, return_path=forged), env.plain_rcpt())) == [(JANE, "complaint_unverified")]
    outcome = env.bounce(arf(JANE, return_path=verp.member_bounce_address(env.site, env.lc, JANE)), env.plain_rcpt())
    assert env.actions(outcome) == [(JANE, "complaint")]
    assert env.member(JANE) is None


def test_complaint_record_only_never_notifies(site):
    env = make_env(site, members=(JANE,), complaint_action="record")
    assert env.actions(env.bounce(arf(JANE), env.plain_rcpt())) == [(JANE, "complaint")]
    assert env.member(JANE).delivery_status == "enabled" and env.virgin() == []


# -- probes answered by DSN (RFC 3461) ------------------------------------------------------------

def _probe(env, member: str) -> str:
    env.engine.register_failure(env.lc, member, "hard", "5.1.1", "550 5.1.1 gone")
    [record] = env.pending_probes(member)
    return record.token


@pytest.mark.parametrize("action", ["delivered", "relayed", "expanded"])
def test_success_dsn_closes_the_probe(site, action):
    env = make_env(site, members=(JANE,), bounce_score_threshold=1.0)
    token = _probe(env, JANE)
    outcome = env.bounce(dsn(JANE, "2.0.0", "250 2.0.0 ok", action=action), env.probe_rcpt(token))
    assert env.actions(outcome) == [(JANE, "probe_delivered")]
    assert env.pending_probes(JANE) == []
    member = env.member(JANE)
    assert (member.delivery_status, member.bounce_score) == ("enabled", 0.0)
    # the token is spent: a later failure DSN of the same probe does nothing
    outcome = env.bounce(dsn(JANE, envid=verp.probe_envid(env.site, env.lc, token)), env.plain_rcpt())
    assert env.actions(outcome) == [(JANE, "probe_unknown")]
    assert env.member(JANE).delivery_status == "enabled"


def test_delayed_dsn_leaves_the_probe_open(site):
    env = make_env(site, members=(JANE,), bounce_score_threshold=1.0)
    token = _probe(env, JANE)
    env.bounce(dsn(JANE, "4.4.1", "421 timeout", action="delayed"), env.probe_rcpt(token))
    assert len(env.pending_probes(JANE)) == 1


def test_failure_dsn_with_probe_envid_at_plain_address_is_the_probe_bouncing(site):
    env = make_env(site, members=(JANE,), bounce_score_threshold=1.0)
    token = _probe(env, JANE)
    outcome = env.bounce(dsn(JANE, original_message_id="<other@x>", envid=verp.probe_envid(env.site, env.lc, token)),
                         env.plain_rcpt())
    assert env.actions(outcome)[0] == (JANE, "disabled")
    assert env.member(JANE).delivery_status == "by_bounce"


def test_forged_probe_envid_is_no_probe_bounce(site):
    env = make_env(site, members=(JANE,), bounce_score_threshold=1.0)
    token = _probe(env, JANE)
    real = verp.probe_envid(env.site, env.lc, token)
    forged = real[:-1] + ("b" if real[-1] == "a" else "a")
    outcome = env.bounce(dsn(JANE, original_message_id="<other@x>", envid=forged), env.plain_rcpt())
    assert env.actions(outcome) == [(JANE, "unverified")]
    assert env.member(JANE).delivery_status == "enabled" and len(env.pending_probes(JANE)) == 1



# -- what the runner asks of the re-injection listener (RFC 3461 section 4) ------------------------

def test_dsn_options_for_probes_posts_and_other_mail(site):
    from listgate.runner.delivery import dsn_options
    from listgate.store.tokens import new_token
    env = make_env(site, members=(JANE,))
    token = new_token()
    mail_opts, rcpt_opts = dsn_options(env.site, env.lc, {"kind": "probe", "probe_token": token}, JANE)
    [envid] = [o[len("ENVID="):] for o in mail_opts]
    assert verp.envid_probe_token(env.site, env.lc, envid) == token
    assert rcpt_opts == ["NOTIFY=SUCCESS,FAILURE", f"ORCPT=rfc822;{JANE}"]
    mail_opts, rcpt_opts = dsn_options(env.site, env.lc, {"kind": "post"}, JANE)
    assert verp.envid_member(env.site, env.lc, mail_opts[0][len("ENVID="):], [JANE]) == JANE
    assert rcpt_opts[0] == "NOTIFY=FAILURE,DELAY"
    # ORCPT is xtext: "+" and "=" in an address are encoded
    assert dsn_options(env.site, env.lc, {"kind": "post"}, "a+b=c@example.org")[1][1] == "ORCPT=rfc822;a+2Bb+3Dc@example.org"
    # notices, XVERP batches and non-list mail ask for nothing
    assert dsn_options(env.site, env.lc, {"kind": "owner_notice"}, JANE) == ([], [])
    assert dsn_options(env.site, env.lc, {"kind": "post", "xverp": True}, JANE) == ([], [])
    assert dsn_options(env.site, None, {"kind": "post"}, JANE) == ([], [])
