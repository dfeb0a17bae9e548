"""Issue 15 item 2: a confirmed change of address or resubscription starts the bounce life cycle clean."""
from __future__ import annotations

from listgate import clock
from listgate.app import subscriptions

from engine_helpers import DAY, dsn, make_env

JANE = "jane@example.com"


def disabled(env, member=JANE):
    """Drive ``member`` to disabled by bounce (threshold 1.0): one bounce, then the probe bounces."""
    env.verp_bounce(member)
    [probe] = env.pending_probes(member)
    env.bounce(dsn(member), env.probe_rcpt(probe.token))
    m = env.member(member)
    assert m.delivery_status == "by_bounce" and m.re_enable_token
    return m


def test_change_of_address_while_disabled_starts_clean(site):
    env = make_env(site, bounce_score_threshold=1.0, bounce_you_are_disabled_warnings=3)
    old = disabled(env)
    rec = env.store.add_pending("change_of_address", {"old": JANE, "new": "jane@new.example.net"}, DAY)
    assert "moved" in subscriptions.complete(env.site, env.lc, rec)
    assert env.member(JANE) is None
    m = env.member("jane@new.example.net")
    assert (m.delivery_status, m.bounce_score, m.notices_left, m.re_enable_token) == ("enabled", 0.0, None, None)
    assert env.store.peek_pending(old.re_enable_token) is None
    [event] = [e for e in env.store.events("jane@new.example.net") if e.action == "bounce_cleared"]
    assert "change of address from jane@example.com" in event.detail and "by_bounce" in event.detail
    # No reminder: a week later the periodic run sends no disabled notice and removes nobody.
    before = len(env.virgin("disabled_notice"))
    for _ in range(5):
        clock.advance(8 * DAY)
        assert env.engine.run_periodic(env.lc) == []
    assert len(env.virgin("disabled_notice")) == before
    assert env.member("jane@new.example.net").delivery_status == "enabled"


def test_change_of_address_with_a_probe_pending_drops_the_probe(site):
    env = make_env(site, bounce_score_threshold=1.0)
    env.verp_bounce(JANE)
    [probe] = env.pending_probes(JANE)
    rec = env.store.add_pending("change_of_address", {"old": JANE, "new": "j@new.example.net"}, DAY)
    subscriptions.complete(env.site, env.lc, rec)
    assert env.store.peek_pending(probe.token) is None
    # The old probe's bounce no longer disables anyone.
    outcome = env.bounce(dsn(JANE), env.probe_rcpt(probe.token))
    assert [a.action for a in outcome.actions] == ["probe_unknown"]
    assert env.member("j@new.example.net").delivery_status == "enabled"


def test_clean_member_changes_address_without_an_event(site):
    env = make_env(site)
    rec = env.store.add_pending("change_of_address", {"old": JANE, "new": "j@new.example.net"}, DAY)
    subscriptions.complete(env.site, env.lc, rec)
    assert [e for e in env.store.events() if e.action == "bounce_cleared"] == []


def test_resubscription_of_a_disabled_member_enables(site):
    env = make_env(site, bounce_score_threshold=1.0)
    disabled(env)
    rec = env.store.add_pending("subscription", {"address": JANE, "display_name": ""}, DAY)
    subscriptions.complete(env.site, env.lc, rec)
    m = env.member(JANE)
    assert (m.delivery_status, m.bounce_score, m.re_enable_token) == ("enabled", 0.0, None)
    assert any(e.action == "bounce_cleared" and "resubscription" in e.detail for e in env.store.events(JANE))


def test_subscription_after_removal_is_not_hit_by_an_old_probe(site):
    env = make_env(site, bounce_score_threshold=1.0)
    env.verp_bounce(JANE)
    [probe] = env.pending_probes(JANE)
    env.store.remove_member(JANE)
    rec = env.store.add_pending("subscription", {"address": JANE, "display_name": ""}, DAY)
    subscriptions.complete(env.site, env.lc, rec)
    assert env.store.peek_pending(probe.token) is None
    assert env.member(JANE).delivery_status == "enabled"


def test_bounced_confirmation_cancels_its_pending_record(site):
    """Issue 15 item 5: a subscription confirmation that bounces (DSN to L-bounces@D) cancels the request."""
    env = make_env(site)
    rec = env.store.add_pending("subscription", {"address": "new@gone.example", "display_name": ""}, DAY)
    other = env.store.add_pending("subscription", {"address": "ok@fine.example", "display_name": ""}, DAY)
    outcome = env.bounce(dsn("new@gone.example"), env.plain_rcpt())
    assert [a.action for a in outcome.actions] == ["non_member", "pending_cancelled"]
    assert env.store.peek_pending(rec.token) is None and env.store.peek_pending(other.token) is not None
    [event] = env.store.events(actions=("pending_cancelled",))
    assert "subscription confirmation to new@gone.example bounced" in event.detail


def test_confirmation_refused_at_hand_over_cancels_the_change_of_address(site):
    env = make_env(site)
    rec = env.store.add_pending("change_of_address", {"old": JANE, "new": "typo@gone.example"}, DAY)
    env.engine.register_failure(env.lc, "typo@gone.example", "hard", "5.1.1", "550 5.1.1 no such user")
    assert env.store.peek_pending(rec.token) is None
    assert env.member(JANE).delivery_status == "enabled"


def test_a_bounced_welcome_is_the_new_members_bounce(site):
    """Issue 15 item 5, the welcome: it goes out from the member's VERP address; its bounce is
    scored like any other (once a day, toward the probe); the member is not removed."""
    from listgate import verp
    env = make_env(site, bounce_score_threshold=5.0)
    rec = env.store.add_pending("subscription", {"address": "new@example.org", "display_name": ""}, DAY)
    subscriptions.complete(env.site, env.lc, rec)
    [welcome] = env.virgin("welcome")
    [delivery] = welcome.meta["deliveries"]
    assert delivery == {"rcpt": "new@example.org",
                        "sender": verp.member_bounce_address(env.site, env.lc, "new@example.org")}
    outcome = env.bounce(dsn("new@example.org"), env.verp_rcpt("new@example.org"))
    assert [(a.address, a.action, a.attribution) for a in outcome.actions] == [("new@example.org", "scored", "verp")]
    m = env.member("new@example.org")
    assert (m.delivery_status, m.bounce_score) == ("enabled", 1.0)
    assert env.store.events(actions=("pending_cancelled",)) == []
