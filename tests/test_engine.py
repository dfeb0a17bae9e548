"""Bounce engine: attribution and scoring rules (real store, real queue, real classifier, frozen clock)."""
from __future__ import annotations

import os

import pytest

from listgate import clock, verp
from listgate.addresses import make as make_address
from listgate.addresses import parse as parse_address
from listgate.queue import QueueError

from engine_helpers import (CORPUS, DAY, DOMAIN, attachments, corpus_file, dsn, human_reply, make_env, parse,
                            policy_dsn)
from policy_helpers import add_key, edit_site

JANE = "jane@example.com"


def test_one_increment_per_member_per_day(site):
    env = make_env(site)
    assert env.actions(env.verp_bounce(JANE)) == [(JANE, "scored")]
    clock.advance(3 * 3600)
    assert env.actions(env.verp_bounce(JANE)) == [(JANE, "same_day")]
    assert env.member(JANE).bounce_score == 1.0
    clock.advance(DAY)
    env.verp_bounce(JANE)
    member = env.member(JANE)
    assert (member.bounce_score, member.last_bounce_day) == (2.0, clock.day())
    # every bounce is an event, scored or not
    assert [e.action for e in env.store.events(JANE)] == ["scored", "same_day", "scored"]
    assert len(env.store.evidence(JANE)) == 2       # evidence only for scored bounces


def test_a_lower_cased_verp_of_a_mixed_case_member_scores_that_member(site):
    env = make_env(site, members=("Jane.Doe@Example.com",))
    rcpt = env.verp_rcpt("Jane.Doe@Example.com")
    assert rcpt.extension.startswith("Jane.Doe=")
    folded = parse_address(make_address(rcpt.name, rcpt.domain, rcpt.role, rcpt.extension).lower(), site.lists)
    outcome = env.bounce(dsn("jane.doe@example.com"), folded)   # an MTA lower-cased the VERP and the DSN
    assert [a.action for a in outcome.actions] == ["scored"]
    assert env.member("JANE.DOE@example.com").bounce_score == 1.0
    assert [e.action for e in env.store.events("jane.doe@example.com")] == ["scored"]
    assert len(env.store.evidence("Jane.Doe@example.com")) == 1
    # a plain DSN naming the member in two spellings is one failure of one member
    block = (b"Final-Recipient: rfc822; jane.doe@example.com\nOriginal-Recipient: rfc822; jane.doe@example.com\n"
             b"Action: failed\nStatus: 5.1.1\nDiagnostic-Code: smtp; 550 5.1.1 User unknown\n\n")
    twice = dsn("jane.doe@example.com").replace(block, block + block.replace(b"jane.doe", b"JANE.DOE"))
    assert twice.count(b"Final-Recipient") == 2
    assert [a.action for a in env.bounce(twice, env.plain_rcpt()).actions] == ["unverified"]


def test_a_case_sensitive_list_attributes_a_verp_to_the_spelling_it_was_made_for(site):
    env = make_env(site, members=("Jane.Doe@Example.com", "jane.doe@example.com"), case_sensitive_local_parts=True)
    assert env.actions(env.verp_bounce("Jane.Doe@Example.com")) == [("Jane.Doe@example.com", "scored")]
    assert (env.member("Jane.Doe@example.com").bounce_score, env.member("jane.doe@example.com").bounce_score) == (1.0, 0)


def test_weights_come_from_the_list(site):
    env = make_env(site, bounce_weights={"hard": 2.5, "soft": 0.25})
    env.verp_bounce(JANE)
    clock.advance(DAY)
    env.verp_bounce(JANE, "4.2.2", "552 4.2.2 Mailbox full, gave up after 5 days")
    events = env.store.events(JANE)
    assert events[0].bounce_class == "soft"
    assert env.member(JANE).bounce_score == pytest.approx(2.75)


def test_stale_bounce_info_restarts_the_score(site):
    env = make_env(site, bounce_info_stale_after="7d")
    env.verp_bounce(JANE)
    clock.advance(DAY)
    env.verp_bounce(JANE)
    assert env.member(JANE).bounce_score == 2.0
    clock.advance(7 * DAY + 1)
    env.verp_bounce(JANE)
    assert env.member(JANE).bounce_score == 1.0


def test_threshold_sends_probe_and_resets_score(site):
    env = make_env(site, bounce_score_threshold=3.0)
    for _ in range(2):
        env.verp_bounce(JANE)
        clock.advance(DAY)
    outcome = env.verp_bounce(JANE)
    assert env.actions(outcome) == [(JANE, "probe_sent")]
    assert env.member(JANE).bounce_score == 0.0
    [probe] = env.virgin("probe")
    assert outcome.queued == [probe.id]
    [record] = env.pending_probes(JANE)
    token = record.token
    probe_address = verp.probe_bounce_address(env.lc, token)
    assert probe.meta["deliveries"] == [{"rcpt": JANE, "sender": probe_address}]
    assert probe.meta["probe_token"] == token
    assert record.expires - record.created == site.conf.pending.probe
    msg = parse(probe)
    assert msg["From"] == probe_address and msg["To"] == JANE
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["Message-ID"] == record.payload["message_id"] and msg["Date"]
    [sample] = attachments(msg)
    assert sample.get_content_type() == "message/rfc822"
    assert "User unknown" in sample.get_content().as_string()
    # the token is what the probe's bounce comes back to
    assert verp.decode(env.site, env.lc, token).kind == "probe"


def test_bounces_while_probe_is_pending_are_not_scored(site):
    env = make_env(site, bounce_score_threshold=1.0)
    env.verp_bounce(JANE)
    assert len(env.pending_probes(JANE)) == 1
    for _ in range(3):
        clock.advance(DAY)
        assert env.actions(env.verp_bounce(JANE)) == [(JANE, "probe_outstanding")]
    assert env.member(JANE).bounce_score == 0.0
    assert len(env.virgin("probe")) == 1            # one probe decides, not one per bounce


def test_probe_expiry_keeps_member_enabled_and_scoring_starts_over(site):
    env = make_env(site, bounce_score_threshold=2.0)
    env.verp_bounce(JANE)
    clock.advance(DAY)
    env.verp_bounce(JANE)                           # probe sent
    token = env.pending_probes(JANE)[0].token
    clock.advance(site.conf.pending.probe + 1)
    assert env.engine.run_periodic(env.lc) == []
    member = env.member(JANE)
    assert (member.delivery_status, member.bounce_score) == ("enabled", 0.0)
    assert env.store.peek_pending(token) is None
    env.verp_bounce(JANE)
    assert env.member(JANE).bounce_score == 1.0     # from zero, not from before the probe


def test_policy_bounces_never_disable(site):
    env = make_env(site, bounce_score_threshold=1.0)
    for _ in range(40):
        outcome = env.bounce(policy_dsn(JANE), env.verp_rcpt(JANE))
        assert env.actions(outcome) == [(JANE, "recorded")]
        assert outcome.actions[0].bounce_class == "policy"
        clock.advance(DAY)
    member = env.member(JANE)
    assert (member.delivery_status, member.bounce_score) == ("enabled", 0.0)
    assert env.virgin() == [] and env.pending_probes(JANE) == []


def test_residual_bounces_of_disabled_members_are_recorded_not_scored(site):
    env = make_env(site)
    member = env.member(JANE)
    member.delivery_status = "by_bounce"
    env.store.save_member(member)
    assert env.actions(env.verp_bounce(JANE)) == [(JANE, "residual")]
    assert env.member(JANE).bounce_score == 0.0 and env.store.evidence(JANE) == []


def test_non_member_bounce_recorded_and_ignored(site):
    env = make_env(site)
    outcome = env.bounce(dsn("stranger@example.net"), env.plain_rcpt())
    assert env.actions(outcome) == [("stranger@example.net", "non_member")]
    assert env.virgin() == [] and env.member(JANE).bounce_score == 0.0
    assert env.store.events("stranger@example.net")[0].action == "non_member"


def test_plain_dsn_naming_a_verp_member_is_unverified_evidence(site):
    # issue 20: anyone can send this to L-bounces@D; Bob's posts go out with his VERP sender
    env = make_env(site, members=("jane@example.com", "Bob@Example.NET"))
    outcome = env.bounce(dsn("bob@example.net"), env.plain_rcpt())
    assert env.actions(outcome) == [("Bob@example.net", "unverified")]
    assert outcome.actions[0].attribution == "dsn"
    assert env.member("Bob@example.net").bounce_score == 0.0
    assert env.store.evidence("Bob@example.net") == []


def test_plain_dsn_with_our_post_envid_scores_its_member(site):
    env = make_env(site, members=("jane@example.com", "Bob@Example.NET"))
    envid = verp.post_envid(env.site, env.lc, "Bob@Example.NET")
    outcome = env.bounce(dsn("bob@example.net", envid=envid), env.plain_rcpt())
    assert env.actions(outcome) == [("Bob@example.net", "scored")]
    assert outcome.actions[0].attribution == "envid"
    assert env.member("Bob@example.net").bounce_score == 1.0
    # the ENVID names Bob only: a DSN naming Jane with Bob's ENVID proves nothing about Jane
    outcome = env.bounce(dsn("jane@example.com", envid=envid), env.plain_rcpt())
    assert env.actions(outcome) == [("jane@example.com", "unverified")]


def test_bounce_processing_off_records_only(site):
    env = make_env(site, bounce_processing=False, bounce_score_threshold=1.0)
    for _ in range(3):
        assert env.actions(env.verp_bounce(JANE)) == [(JANE, "recorded")]
        clock.advance(DAY)
    assert env.member(JANE).bounce_score == 0.0 and env.virgin() == []


def _forged(ext: str) -> str:
    body, _, mac = ext.rpartition(".")
    return f"{body}.{'a' * len(mac) if mac[0] != 'a' else 'b' * len(mac)}"


def test_forged_verp_never_attributes(site):
    env = make_env(site)
    ext = _forged(env.verp_rcpt(JANE).extension)
    rcpt = parse_address(f"demo-bounces+{ext}@{DOMAIN}", env.site.lists)
    # a bounce that names nobody: a forged VERP must not make it Jane's
    outcome = env.bounce(dsn("someone-else@example.org"), rcpt)
    assert env.actions(outcome) == [("someone-else@example.org", "non_member")]
    outcome = env.bounce(human_reply(f"demo-bounces+{ext}@{DOMAIN}"), rcpt)
    assert [a.action for a in outcome.actions] == ["forwarded"]
    assert env.member(JANE).bounce_score == 0.0
    assert env.store.events(JANE) == []


def test_retired_key_verp_never_attributes(site):
    env = make_env(site)
    old = env.verp_rcpt(JANE)
    previous = site.conf.verp.keys[0].as_dict()
    add_key(env.site, "k2")
    env.site = edit_site(env.site, verp={"keys": [{"id": "k2", "file": "keys/k2.key"},
                                                  {**previous, "retired": True, "retired_at": "2027-01-01"}],
                                         "retired_verify_window": "7d"})
    env.engine.site = env.site
    assert verp.decode(env.site, env.lc, old.extension).error == "retired-key"
    outcome = env.bounce(dsn("forwarded-copy@example.org"), old)
    assert env.actions(outcome) == [("forwarded-copy@example.org", "non_member")]
    assert env.member(JANE).bounce_score == 0.0


def test_verp_attributes_to_member_whatever_the_dsn_names(site):
    env = make_env(site)
    # the member forwards to another mailbox; the DSN names that one
    outcome = env.bounce(dsn("jane.smith@forwarded.example"), env.verp_rcpt(JANE))
    assert env.actions(outcome) == [(JANE, "scored")]
    assert outcome.actions[0].attribution == "verp"


def _corpus_rows(klass: str) -> list[tuple[str, str]]:
    rows = []
    with open(CORPUS / "EXPECTED.tsv", encoding="utf-8") as fh:
        next(fh)
        for line in fh:
            cols = line.rstrip("\n").split("\t")
            if cols[2] == klass:
                rows.append((cols[0], cols[1]))
    return rows


def test_autoreply_to_verp_is_never_scored(site, corpus):
    env = make_env(site, bounce_score_threshold=1.0)
    rows = _corpus_rows("autoreply")
    assert rows
    for rel, _ in rows:
        outcome = env.bounce(corpus_file(rel), env.verp_rcpt(JANE))
        assert [a.action for a in outcome.actions] == ["ignored"], rel
        clock.advance(DAY)
    member = env.member(JANE)
    assert (member.bounce_score, member.delivery_status) == (0.0, "enabled")
    assert env.virgin() == []                       # auto-replies are not forwarded either


def test_real_corpus_hard_bounces_score_the_verp_member(site, corpus):
    env = make_env(site, bounce_score_threshold=1000.0)
    scored = 0
    rows = [r for r in _corpus_rows("permanent") if r[0].startswith("flufl.bounce/dsn_")]
    for rel, _ in rows:
        outcome = env.bounce(corpus_file(rel), env.verp_rcpt(JANE))
        assert len(outcome.actions) == 1, rel
        scored += outcome.actions[0].action == "scored"
        clock.advance(DAY)
    # a permanent failure may be classed policy (5.7.x): recorded, not scored; never more than one per day
    assert scored >= len(rows) // 2
    weights = env.lc.bounce_weights
    assert env.member(JANE).bounce_score == sum(weights[e.bounce_class] for e in env.store.events(JANE)
                                                if e.action == "scored")


def test_real_corpus_dsn_attributes_by_address(site, corpus):
    members = sorted({addr for rel, addr in _corpus_rows("permanent")
                      if rel.startswith("flufl.bounce/dsn_") and addr and "," not in addr})
    env = make_env(site, members=members, bounce_score_threshold=1000.0)
    rel = "flufl.bounce/dsn_01.txt"
    outcome = env.bounce(corpus_file(rel), env.plain_rcpt())
    assert [a.address for a in outcome.actions] == ["userx@example.com"]
    assert outcome.actions[0].action == "unverified"     # a VERP member: the plain address never scores


def test_human_reply_to_verp_is_forwarded_to_owners(site):
    env = make_env(site)
    rcpt = env.verp_rcpt(JANE)
    outcome = env.bounce(human_reply(f"demo-bounces+{rcpt.extension}@{DOMAIN}"), rcpt, "jane@example.com")
    assert [a.action for a in outcome.actions] == ["forwarded"]
    assert env.member(JANE).bounce_score == 0.0
    [fwd] = env.virgin("forward")
    assert fwd.meta["deliveries"] == [{"rcpt": f"owner@{DOMAIN}", "sender": ""}]
    msg = parse(fwd)
    assert msg["Auto-Submitted"] == "auto-generated"
    assert "Thanks, that was useful" in attachments(msg)[0].get_content().as_string()


def test_human_reply_discarded_when_configured(site):
    env = make_env(site, bounce_unrecognized_goes_to_list_owner=False)
    outcome = env.bounce(human_reply(f"demo-bounces@{DOMAIN}"), env.plain_rcpt())
    assert [a.action for a in outcome.actions] == ["discarded"]
    assert env.virgin() == []
    assert env.store.events()[0].action == "discarded"


def test_unrecognised_bounce_is_forwarded(site):
    env = make_env(site)
    msg = (b"From: MAILER-DAEMON@mx.example.com\nTo: demo-bounces@lists.example.org\n"
           b"Subject: Undeliverable mail\n\nSomething went wrong with your message.\n")
    outcome = env.bounce(msg, env.plain_rcpt())
    assert [a.action for a in outcome.actions] == ["forwarded"]
    assert len(env.virgin("forward")) == 1


def test_domain_incident_stops_scoring_and_notifies_owners_once(site):
    members = [f"m{i}@bigisp.example" for i in range(5)] + ["other@example.net"]
    env = make_env(site, members=members, bounce_domain_incident={"members": 3, "window": "1h"})
    results = []
    for m in members[:5]:
        results += env.actions(env.bounce(dsn(m, "5.1.1"), env.verp_rcpt(m)))
        clock.advance(60)
    assert [a for _, a in results] == ["scored", "scored", "incident", "incident", "incident"]
    # the two scored before the incident was recognised are taken back when it opens (issue 15)
    assert [env.member(m).bounce_score for m in members[:5]] == [0.0] * 5
    [notice] = env.virgin("owner_notice")
    assert "bigisp.example" in parse(notice)["Subject"]
    # another domain, or another status, is not part of the incident
    assert env.actions(env.verp_bounce("other@example.net")) == [("other@example.net", "scored")]
    # the first members' later bounces in the window are not scored either
    clock.advance(DAY - 10 * 60)
    env.bounce(dsn(members[0], "5.1.1"), env.verp_rcpt(members[0]))
    env.bounce(dsn(members[1], "5.1.1"), env.verp_rcpt(members[1]))
    env.bounce(dsn(members[2], "5.1.1"), env.verp_rcpt(members[2]))
    assert len(env.virgin("owner_notice")) == 1     # told once


def test_domain_incident_window_passes(site):
    members = [f"m{i}@bigisp.example" for i in range(3)]
    env = make_env(site, members=members, bounce_domain_incident={"members": 3, "window": "1h"})
    for m in members:
        env.bounce(dsn(m, "5.1.1"), env.verp_rcpt(m))
        clock.advance(2 * 3600)                     # spread out: no incident
    assert [env.member(m).bounce_score for m in members] == [1.0, 1.0, 1.0]


def test_complaint_actions(site):
    arf = corpus_file("sisimai-set-of-emails/maildir/bsd/arf-16.eml") if CORPUS.exists() else None
    if arf is None:
        pytest.skip("corpus not present")
    for action, expect in (("record", "enabled"), ("disable", "by_admin"), ("unsubscribe", None)):
        env = make_env(site, complaint_action=action)
        outcome = env.bounce(arf, env.verp_rcpt(JANE))
        assert [(a.action, a.bounce_class) for a in outcome.actions] == [("complaint", "complaint")], action
        member = env.member(JANE)
        assert (member.delivery_status if member else None) == expect
        assert len(env.virgin("owner_notice")) == (0 if action == "record" else 1)
        if member is not None:
            env.store.remove_member(JANE)
        for q in env.virgin():
            os.remove(q.path)


def test_register_failure_scores_hand_over_5xx(site):
    env = make_env(site)
    outcome = env.engine.register_failure(env.lc, JANE, "hard", "5.1.1", "550 5.1.1 no such user")
    assert env.actions(outcome) == [(JANE, "scored")]
    assert outcome.actions[0].attribution == "smtp"
    assert b"550 5.1.1 no such user" in env.store.evidence(JANE)[0][1]
    outcome = env.engine.register_failure(env.lc, "nobody@example.org", "hard", "5.1.1", "550")
    assert env.actions(outcome) == [("nobody@example.org", "non_member")]


def test_queue_failure_rolls_back_the_bounce(site):
    """Mail is queued before the commit: if it cannot be queued, nothing is committed (the MTA retries)."""
    env = make_env(site, bounce_score_threshold=1.0)
    virgin_dir = os.path.join(env.site.queue_dir, "virgin")
    os.rename(virgin_dir, virgin_dir + ".moved")
    with open(virgin_dir, "w") as fh:               # a file where the directory should be
        fh.write("not a directory")
    try:
        with pytest.raises(QueueError):
            env.verp_bounce(JANE)
    finally:
        os.remove(virgin_dir)
        os.rename(virgin_dir + ".moved", virgin_dir)
    member = env.member(JANE)
    assert (member.bounce_score, member.last_bounce_day) == (0.0, None)
    assert env.store.events(JANE) == [] and env.pending_probes(JANE) == []
    # the retry works and sends the probe
    assert env.actions(env.verp_bounce(JANE)) == [(JANE, "probe_sent")]


def _bounce_in_child(site_path: str, member: str, conn) -> None:
    from listgate import config as cfg
    from listgate.app.bounces import BounceEngine
    from engine_helpers import Env
    try:
        env = Env(cfg.load(site_path), None)
        env.engine = BounceEngine(env.site)
        conn.send([a.action for a in env.verp_bounce(member).actions])
    except Exception as exc:  # report, never hang the parent
        conn.send([f"error: {exc!r}"])
    finally:
        conn.close()


def test_concurrent_bounces_for_one_member_score_once(site):
    """Several processes (milter threads, inject) handling bounces at once: one increment per day still."""
    import multiprocessing
    env = make_env(site)
    ctx = multiprocessing.get_context("fork")       # children inherit the frozen clock
    procs, pipes = [], []
    for _ in range(6):
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_bounce_in_child, args=(env.site.path, JANE, child))
        proc.start()
        procs.append(proc)
        pipes.append(parent)
    try:
        results = [p.recv() if p.poll(60) else ["timeout"] for p in pipes]
    finally:
        for proc in procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
    assert sorted(r[0] for r in results) == ["same_day"] * 5 + ["scored"]
    assert env.member(JANE).bounce_score == 1.0
    assert len(env.store.events(JANE)) == 6


@pytest.mark.parametrize("raw", [
    b"",
    b"\x00\xff\xfe garbage without any header\n",
    b"Content-Type: multipart/report; boundary=x\n\n--x\nContent-Type: message/delivery-status\n\nStatus: 5.1.1\n",
    b"From: MAILER-DAEMON@mx.example.com\nSubject: failure\n\n" + b"\xe9" * 2_000_000,
], ids=["empty", "garbage", "broken-mime", "huge-8bit"])
def test_malformed_mail_never_crashes(site, raw):
    env = make_env(site)
    for rcpt in (env.plain_rcpt(), env.verp_rcpt(JANE)):
        outcome = env.bounce(raw, rcpt)
        assert outcome.actions, rcpt
        assert all(a.action in ("forwarded", "discarded", "ignored", "recorded", "scored", "non_member")
                   for a in outcome.actions)
    assert len(env.store.events()) >= 2


def test_one_report_several_members_different_outcomes(site):
    env = make_env(site, members=("jane@example.com", "bob@example.net", "eve@example.org"))
    blocks = [("jane@example.com", "failed", "5.1.1", "550 5.1.1 unknown user"),
              ("bob@example.net", "delayed", "4.4.1", "421 4.4.1 connection timed out"),
              ("eve@example.org", "failed", "5.7.1", "554 5.7.1 rejected as spam")]
    report = "".join(f"Final-Recipient: rfc822; {r}\nAction: {a}\nStatus: {s}\nDiagnostic-Code: smtp; {d}\n\n"
                     for r, a, s, d in blocks)
    msg = (f"From: MAILER-DAEMON@mx.example.com\nTo: demo-bounces@{DOMAIN}\nSubject: Delivery Status\n"
           f"MIME-Version: 1.0\nContent-Type: multipart/report; report-type=delivery-status; boundary=b\n\n"
           f"--b\nContent-Type: text/plain\n\nSome recipients failed.\n\n"
           f"--b\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.com\n\n{report}"
           f"--b--\n").encode()
    outcome = env.bounce(msg, env.plain_rcpt())
    assert sorted((a.address, a.action, a.bounce_class) for a in outcome.actions) == [
        ("bob@example.net", "ignored", "delayed"),
        ("eve@example.org", "unverified", "policy"),       # plain address, VERP members: evidence only
        ("jane@example.com", "unverified", "hard")]
