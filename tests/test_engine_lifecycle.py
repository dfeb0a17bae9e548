"""Bounce engine: probe bounces, disable, notices, removal, re-enable (frozen clock, real store and queue)."""
from __future__ import annotations

import pytest

from listgate import addresses, clock, verp
from listgate.store import UnknownToken

from engine_helpers import DAY, DOMAIN, attachments, dsn, make_env, parse, policy_dsn

JANE = "jane@example.com"


def probe_token(env, member=JANE) -> str:
    """Drive ``member`` to the threshold (1.0 here) and return the probe's token."""
    env.verp_bounce(member)
    [record] = env.pending_probes(member)
    return record.token


def confirm_token(qfile) -> str:
    msg = parse(qfile)
    reply_to = addresses.parse(str(msg["Reply-To"]), {f"demo@{DOMAIN}"})
    assert reply_to.role == "confirm"
    assert f"demo-confirm+{reply_to.extension}@{DOMAIN}" in msg.get_body().get_content()
    return reply_to.extension


def test_probe_bounce_disables_and_sends_first_notice(site):
    env = make_env(site, bounce_score_threshold=1.0, bounce_you_are_disabled_warnings=3)
    token = probe_token(env)
    outcome = env.bounce(dsn(JANE), env.probe_rcpt(token))
    assert env.actions(outcome) == [(JANE, "disabled")]
    assert outcome.actions[0].attribution == "probe"
    member = env.member(JANE)
    assert (member.delivery_status, member.notices_left, member.last_notice_at) == ("by_bounce", 2, clock.now())
    [notice] = env.virgin("disabled_notice")
    assert notice.meta["deliveries"][0]["rcpt"] == JANE
    assert confirm_token(notice) == member.re_enable_token
    record = env.store.peek_pending(member.re_enable_token)
    assert record.type == "re_enable" and record.payload["member"] == JANE
    assert parse(notice)["Auto-Submitted"] == "auto-generated"
    [owner] = env.virgin("owner_notice")
    assert owner.meta["deliveries"] == [{"rcpt": f"owner@{DOMAIN}", "sender": ""}]
    evidence = attachments(parse(owner))
    assert evidence and all(p.get_content_type() == "message/rfc822" for p in evidence)


def test_probe_token_is_single_use(site):
    env = make_env(site, bounce_score_threshold=1.0)
    token = probe_token(env)
    env.bounce(dsn(JANE), env.probe_rcpt(token))
    before = len(env.virgin())
    assert verp.decode(env.site, env.lc, token).error == "unknown-token"
    outcome = env.bounce(dsn(JANE), env.probe_rcpt(token))
    assert env.actions(outcome) == [(JANE, "probe_unknown")]
    assert len(env.virgin()) == before                # no second notice
    assert env.member(JANE).notices_left == 2


def test_probe_refused_for_policy_does_not_disable(site):
    env = make_env(site, bounce_score_threshold=1.0)
    token = probe_token(env)
    outcome = env.bounce(policy_dsn(JANE), env.probe_rcpt(token))
    assert env.actions(outcome) == [(JANE, "probe_policy")]
    assert env.member(JANE).delivery_status == "enabled"
    assert env.store.peek_pending(token) is not None  # a real failure of the probe still counts later


def test_probe_bounce_by_dsn_message_id_without_verp(site):
    env = make_env(site, bounce_score_threshold=1.0)
    token = probe_token(env)
    probe_id = env.store.peek_pending(token).payload["message_id"]
    outcome = env.bounce(dsn(JANE, original_message_id=probe_id), env.plain_rcpt())
    assert env.actions(outcome) == [(JANE, "disabled")]
    assert env.store.peek_pending(token) is None


def test_probe_5xx_at_hand_over_disables(site):
    env = make_env(site, bounce_score_threshold=1.0)
    token = probe_token(env)
    outcome = env.engine.register_failure(env.lc, JANE, "hard", "5.1.1", "550 5.1.1 no such user",
                                          probe_token=token)
    assert env.actions(outcome) == [(JANE, "disabled")]
    assert env.member(JANE).delivery_status == "by_bounce"


def test_notices_then_removal(site):
    env = make_env(site, bounce_score_threshold=1.0, bounce_you_are_disabled_warnings=3,
                   bounce_you_are_disabled_warnings_interval="7d")
    env.bounce(dsn(JANE), env.probe_rcpt(probe_token(env)))
    token = env.member(JANE).re_enable_token
    clock.advance(7 * DAY - 60)
    assert env.engine.run_periodic(env.lc) == []      # not due yet
    for left in (1, 0):
        clock.advance(60 if left == 1 else 7 * DAY)
        assert env.engine.run_periodic(env.lc) == [f"notice to {JANE} ({left} left)"]
        assert env.engine.run_periodic(env.lc) == []  # once per interval
        assert env.member(JANE).notices_left == left
        # each notice refreshes the same token so it outlives the next step
        record = env.store.peek_pending(token)
        assert record is not None and record.expires > clock.now() + 7 * DAY
    notices = env.virgin("disabled_notice")
    assert [confirm_token(q) for q in notices] == [token] * 3
    assert ["notice 1 of 3", "notice 2 of 3", "notice 3 of 3"] == [
        next(s for s in ("notice 1 of 3", "notice 2 of 3", "notice 3 of 3") if s in parse(q).get_body().get_content())
        for q in notices]
    clock.advance(7 * DAY)
    assert env.engine.run_periodic(env.lc) == [f"removed {JANE}"]
    assert env.member(JANE) is None
    assert env.store.peek_pending(token) is None
    owner = env.virgin("owner_notice")
    assert [("disabled" in parse(q)["Subject"], "removed" in parse(q)["Subject"]) for q in owner] == [
        (True, False), (False, True)]
    assert attachments(parse(owner[-1]))              # evidence kept until removal, attached
    assert env.store.events(JANE)[0].action == "removed"


def test_zero_warnings_removes_at_once_with_one_notice(site):
    env = make_env(site, bounce_score_threshold=1.0, bounce_you_are_disabled_warnings=0)
    outcome = env.bounce(dsn(JANE), env.probe_rcpt(probe_token(env)))
    assert env.actions(outcome) == [(JANE, "disabled"), (JANE, "removed")]
    assert env.member(JANE) is None
    [notice] = env.virgin("removed_notice")
    assert "removed" in parse(notice)["Subject"]
    assert env.virgin("disabled_notice") == [] and env.store.pending("re_enable") == []
    assert [q.meta["kind"] for q in env.virgin()] == ["probe", "removed_notice", "owner_notice"]


def test_owner_notices_follow_config(site):
    env = make_env(site, bounce_score_threshold=1.0, bounce_notify_owner_on_disable=False,
                   bounce_you_are_disabled_warnings=1, bounce_notify_owner_on_removal=False)
    env.bounce(dsn(JANE), env.probe_rcpt(probe_token(env)))
    clock.advance(7 * DAY)
    assert env.engine.run_periodic(env.lc) == [f"removed {JANE}"]
    assert env.virgin("owner_notice") == []


def test_residual_bounces_after_disable(site):
    env = make_env(site, bounce_score_threshold=1.0)
    env.bounce(dsn(JANE), env.probe_rcpt(probe_token(env)))
    queued = len(env.virgin())
    for _ in range(3):
        clock.advance(DAY)
        assert env.actions(env.verp_bounce(JANE)) == [(JANE, "residual")]
    assert env.member(JANE).bounce_score == 0.0 and len(env.virgin()) == queued


def test_re_enable(site):
    env = make_env(site, bounce_score_threshold=1.0)
    env.bounce(dsn(JANE), env.probe_rcpt(probe_token(env)))
    token = env.member(JANE).re_enable_token
    clock.advance(2 * DAY)
    member = env.engine.re_enable(env.lc, token)
    assert member.delivery_status == "enabled"
    stored = env.member(JANE)
    assert (stored.delivery_status, stored.bounce_score, stored.last_bounce_day, stored.notices_left,
            stored.re_enable_token) == ("enabled", 0.0, None, None, None)
    assert env.store.events(JANE)[0].action == "re_enabled"
    with pytest.raises(UnknownToken):
        env.engine.re_enable(env.lc, token)           # single use
    clock.advance(30 * DAY)
    assert env.engine.run_periodic(env.lc) == []      # no more notices, no removal
    assert env.member(JANE).delivery_status == "enabled"
    env.verp_bounce(JANE)
    assert env.member(JANE).bounce_score == 0.0 and len(env.pending_probes(JANE)) == 1


def test_re_enable_with_unknown_token(site):
    env = make_env(site)
    with pytest.raises(UnknownToken):
        env.engine.re_enable(env.lc, "a" * 26)


def test_notice_to_non_ascii_member(site):
    member = "jörg@exämple.org"
    env = make_env(site, members=(member,), bounce_score_threshold=1.0)
    outcome = env.engine.register_failure(env.lc, member, "hard", "5.1.1", "550 unknown")
    assert env.actions(outcome) == [(member, "probe_sent")]
    [probe] = env.virgin("probe")
    assert probe.meta["smtputf8"] is True
    assert member.encode("utf-8") in probe.msg
