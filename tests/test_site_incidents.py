"""Issue 15 item 1: site incidents score nobody, pause fan-out, tell the postmaster once, clear by themselves.

The runner hands mail to a real SMTP sink playing our re-injection listener
(tests/harness/sink.py); the clock is the frozen test clock.
"""
from __future__ import annotations

import pytest
from harness import ACCEPT
from runner_helpers import Env, message

from listgate import clock, verp
from listgate.app import site_incidents
from listgate.app.bounces import BounceEngine

from engine_helpers import dsn, make_env, policy_dsn

LOCAL_TABLE = "550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown in local recipient table"
MEMBERS = ["a@one.test", "b@two.test", "c@three.test", "d@four.test", "e@five.test"]
HOUR, DAY = 3600, 86400


@pytest.fixture
def env(tmp_path):
    clock.freeze(1_800_000_000.0)
    e = Env(tmp_path, list_settings="bounce_score_threshold: 1.0\n")
    e.members(*MEMBERS)
    yield e
    e.close()


def kinds(env, kind):
    return [q for name in ("virgin", "retry") for q in (env.queue(name).peek(i) for i in env.queue(name).ids())
            if q is not None and q.meta.get("kind") == kind]


def posts_received(env, rcpt):
    return sorted(d.message()["Subject"] for d in env.sink.messages_for(rcpt) if "post " in str(d.message()["Subject"]))


def test_listener_refusing_everyone_for_six_days_scores_nobody_and_clears_itself(env):
    env.sink.default = LOCAL_TABLE
    for day in range(6):
        env.inject(message(MEMBERS[0], f"post {day}"), sender=MEMBERS[0])
        env.run()
        clock.advance(DAY)
        env.run()                                    # the paused retries: one delivery tried, refused again
    store = env.store
    assert [(m.bounce_score, m.delivery_status) for m in store.members()] == [(0.0, "enabled")] * 5
    assert not [e for e in store.events() if e.action in ("scored", "probe_sent", "disabled")]
    assert store.pending("probe") == []
    assert len(kinds(env, "postmaster_notice")) == 1           # told once, waiting like the rest
    assert env.queue("retry").ids() and not env.queue("out").ids()
    [incident] = site_incidents.open_incidents(store, env.lc).values()
    assert incident.scope == site_incidents.ALL and "local recipient table" in incident.reason
    assert env.sink.messages() == []
    # The listener is fixed: after the pause one delivery goes through, the incident clears,
    # every paused post reaches every member exactly once.
    env.sink.default = ACCEPT
    clock.advance(HOUR)
    env.run()
    assert env.queue("retry").ids() == []
    for m in MEMBERS:
        assert posts_received(env, m) == [f"[demo] post {d}" for d in range(6)], m
    assert site_incidents.open_incidents(env.store, env.lc) == {}
    assert [e.action for e in env.store.events(actions=("site_incident_cleared",))] == ["site_incident_cleared"]
    notices = [d for d in env.sink.messages() if "site incident" in str(d.message()["Subject"])]
    assert len({d.message()["Message-ID"] for d in notices}) == 1
    assert [(m.bounce_score, m.delivery_status) for m in env.store.members()] == [(0.0, "enabled")] * 5


def test_refusal_about_one_remote_mailbox_is_still_the_members(env):
    env.sink.set_behaviour(MEMBERS[1], "550 5.1.1 <{rcpt}>: Recipient address rejected: undeliverable address")
    env.inject(message(MEMBERS[0], "post x"), sender=MEMBERS[0])
    env.run()
    assert site_incidents.open_incidents(env.store, env.lc) == {}
    # scored to the probe, whose refusal at hand-over disables, as before
    assert [e.action for e in env.store.events(MEMBERS[1])][::-1][:2] == ["probe_sent", "disabled"]
    assert all(posts_received(env, m) == ["[demo] post x"] for m in MEMBERS if m != MEMBERS[1])


@pytest.mark.parametrize("code,text,site_failure", [
    (550, "5.1.1 <x@y.test>: Recipient address rejected: User unknown in local recipient table", True),
    (554, "5.7.1 <x@y.test>: Relay access denied", True),
    (554, "5.7.1 Service unavailable; client blocked by our smarthost policy", True),
    (550, "5.1.1 <x@y.test>: Recipient address rejected: undeliverable address: host mx said: 550 no such user",
     False),
    (552, "5.2.2 <x@y.test>: mailbox full", False),
    (554, "5.3.0 mail system misconfigured", True),
])
def test_handover_refusals_of_our_own_mta(code, text, site_failure):
    from listgate.bounce.status import reply_status
    assert (site_incidents.handover_site_reason(code, text, reply_status(code, text)) is not None) == site_failure


def test_one_remote_domain_failing_for_everyone_pauses_that_domain(env):
    broken = ["x@broken.test", "y@broken.test", "z@broken.test"]
    env.members(*broken)
    engine = BounceEngine(env.site)
    from listgate import addresses, routing
    actions = []
    for m in broken:      # Postfix's DSNs for post 0, back at the members' VERP addresses
        rcpt = verp.member_bounce_address(env.site, env.lc, m)
        decision = routing.decide_rcpt(env.site, rcpt)
        out = engine.handle_bounce(env.lc, dsn(m, "5.4.4", "550 5.4.4 host mx.broken.test not found"),
                                   addresses.parse(rcpt, env.site.lists), verp_result=decision.verp,
                                   envelope_sender="")
        actions += [a.action for a in out.actions]
    assert actions == ["probe_sent", "probe_sent", "incident"]        # the first two came before it was seen
    assert set(site_incidents.open_incidents(env.store, env.lc)) == {"broken.test"}
    assert len(kinds(env, "postmaster_notice")) == 1
    env.inject(message(MEMBERS[0], "post 1"), sender=MEMBERS[0])
    env.run()
    assert all(posts_received(env, m) == ["[demo] post 1"] for m in MEMBERS)
    assert all(posts_received(env, m) == [] for m in broken)
    # Seen from bounces: the first 2xx at hand-over after the pause is a trial (one recipient);
    # when the next pause ends with no bounce of it, the next 2xx clears it and the rest go.
    clock.advance(HOUR)
    env.run()
    assert sum(len(env.sink.messages_for(m)) for m in broken) == 1   # the trial (a post or a probe)
    assert set(site_incidents.open_incidents(env.store, env.lc)) == {"broken.test"}
    clock.advance(HOUR)
    env.run()
    assert all(posts_received(env, m) == ["[demo] post 1"] for m in broken + MEMBERS)
    assert site_incidents.open_incidents(env.store, env.lc) == {}
    # the two scored before the incident was recognised are taken back, their probes withdrawn
    assert [(env.store.get_member(m).bounce_score, env.store.get_member(m).delivery_status) for m in broken] \
        == [(0.0, "enabled")] * 3
    assert env.store.pending("probe") == []


def test_one_text_across_many_domains_is_a_site_incident(site):
    members = [f"m{i}@d{i % 4}.test" for i in range(10)]
    env = make_env(site, members=members, bounce_score_threshold=1.0,
                   bounce_weights={"hard": 1.0, "soft": 0.5, "policy": 1.0, "complaint": 0.0, "unknown": 0.0})
    actions = [a for m in members for _, a in env.actions(env.bounce(policy_dsn(m), env.verp_rcpt(m)))]
    # 20 % of 10 members is 2, but three domains are needed: the third domain's failure opens it.
    assert actions[:2] == ["probe_sent", "probe_sent"] and set(actions[2:]) == {"incident"}
    [incident] = site_incidents.open_incidents(env.store, env.lc).values()
    assert incident.scope == site_incidents.ALL
    [notice] = env.virgin("postmaster_notice")
    assert {d["rcpt"] for d in notice.meta["deliveries"]} == {"postmaster@localhost", f"owner@{env.lc.domain}"}


def test_different_texts_across_domains_are_members_own(site):
    members = [f"m{i}@d{i}.test" for i in range(5)]
    env = make_env(site, members=members, bounce_score_threshold=5.0)
    for i, m in enumerate(members):
        env.bounce(dsn(m, "5.1.1", f"550 5.1.1 mailbox {i} unknown"), env.verp_rcpt(m))
    assert [env.member(m).bounce_score for m in members] == [1.0] * 5
    assert site_incidents.open_incidents(env.store, env.lc) == {}


def test_two_lists_on_one_broken_listener_tell_the_postmaster_once(env):
    """Issue 15: the postmaster is told once per site incident; each list's owners get theirs."""
    import os
    demo = (env.dir / "lists.d" / "demo.yaml").read_text()
    (env.dir / "lists.d" / "other.yaml").write_text(
        demo.replace("name: demo", "name: other").replace("owner@lists.example.org", "boss@lists.example.org"))
    env.edit_list("bounce_score_threshold: 1.0\n")          # reload the site with both lists
    other = env.site.get_list("other@lists.example.org")
    assert other is not None
    from listgate.store import open_store
    open_store(env.site, "other@lists.example.org").add_member(MEMBERS[1])
    env.sink.default = LOCAL_TABLE
    env.inject(message(MEMBERS[0], "post demo"), sender=MEMBERS[0])
    meta_other = message(MEMBERS[1], "post other").replace(b"To: demo@", b"To: other@")
    from listgate.queue import Switchboard
    Switchboard.for_site(env.site, "in").enqueue(meta_other, {
        "list": "other@lists.example.org", "role": "post", "extension": None,
        "envelope_sender": MEMBERS[1], "recipients": ["other@lists.example.org"], "mta_queue_id": "T2"})
    env.run()
    assert set(site_incidents.open_incidents(env.store, env.lc)) == {site_incidents.ALL}
    assert set(site_incidents.open_incidents(open_store(env.site, "other@lists.example.org"), other)) == \
        {site_incidents.ALL}
    told = [{d["rcpt"] for d in q.meta["deliveries"]} for q in kinds(env, "postmaster_notice")]
    assert sorted(told, key=sorted) == sorted([{"postmaster@localhost", "owner@lists.example.org"},
                                               {"boss@lists.example.org"}], key=sorted) \
        or sorted(told, key=sorted) == sorted([{"owner@lists.example.org"},
                                               {"postmaster@localhost", "boss@lists.example.org"}], key=sorted)
    assert os.path.exists(os.path.join(env.site.state_dir, "site-incidents", "all"))
    # The listener is fixed: each list's incident clears at its next delivery.
    env.sink.default = ACCEPT
    clock.advance(HOUR)
    env.run()
    assert site_incidents.open_incidents(env.store, env.lc) == {}
    assert site_incidents.open_incidents(open_store(env.site, "other@lists.example.org"), other) == {}
    assert len([d for d in env.sink.messages_for("postmaster@localhost")
                if "site incident" in str(d.message()["Subject"])]) == 1
