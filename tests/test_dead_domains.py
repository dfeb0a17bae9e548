"""A hard bounce from a domain that is gone (null MX, NXDOMAIN) gets the member probed at once, from the
runner's periodic tasks, against a real DNS server on loopback (tests/dns_helpers.py)."""
from __future__ import annotations

import pytest
from dns_helpers import TEST_DNS, ZoneServer
from engine_helpers import DAY, make_env

from listgate import clock, config
from listgate.app import bounce_admin, dead_domains
from listgate.runner import tasks

ZONE = {
    "good.test": [("MX", 300, "10 mx.good.test.")],
    "mx.good.test": [("A", 300, "127.0.0.9")],
    "nullmx.test": [("MX", 300, "0 .")],
}
NULL = "jane@nullmx.test"
GONE = "bob@gone.test"
FINE = "amy@good.test"
SLOW = "tim@slow.test"


@pytest.fixture
def server():
    with ZoneServer(ZONE, silent=["slow.test"]) as srv:
        yield srv


@pytest.fixture
def env(site, server):
    with open(site.path, encoding="utf-8") as fh:
        text = fh.read()
    assert TEST_DNS in text
    with open(site.path, "w", encoding="utf-8") as fh:
        fh.write(text.replace(TEST_DNS, f"dns:\n  nameservers: [127.0.0.1]\n  port: {server.port}\n"
                                        f"  timeout: 1s\n  attempts: 1\n"))
    return make_env(config.load(site.path), members=(NULL, GONE, FINE, SLOW))


def fresh(env):
    """The site reloaded: a new resolver, so nothing is answered from its cache."""
    env.site = config.load(env.site.path)
    env.engine.site = env.site
    return env


def check(env) -> list[str]:
    return dead_domains.run(env.site, env.lc, env.engine)


@pytest.mark.parametrize("member,why", [(NULL, "null MX"), (GONE, "NXDOMAIN")])
def test_hard_bounce_from_a_dead_domain_is_probed_at_once(env, member, why):
    env.verp_bounce(member)
    assert env.member(member).bounce_score == 1.0        # far below the threshold
    assert not env.pending_probes(member)
    done = tasks.run(env.site, env.engine)                # the runner's periodic tasks
    assert [line for line in done if member in line and "probe sent" in line]
    [event] = env.store.events(member, actions=["dead_domain"])
    assert event.attribution == "dns" and event.bounce_class == "hard" and event.status == "5.1.1"
    assert why in event.detail and "probe sent" in event.detail
    [record] = env.pending_probes(member)
    assert env.member(member).bounce_score == 0.0        # reset, as for a threshold probe
    [probe] = [q for q in env.virgin("probe") if q.meta["probe_token"] == record.token]
    assert probe.meta["deliveries"][0]["rcpt"] == member
    # bounce_admin counts the event as a reset: a recomputed score stays 0
    assert bounce_admin.recompute(env.lc, env.store.events(member))[0] == 0.0
    # the probe is outstanding now: nothing more is asked or sent
    clock.advance(DAY)
    env.verp_bounce(member)
    assert check(fresh(env)) == []
    assert len(env.pending_probes(member)) == 1


def test_domain_that_takes_mail_changes_nothing_and_is_asked_once_a_day(env, server):
    env.verp_bounce(FINE)
    assert check(env) == []
    assert env.store.events(FINE, actions=["dead_domain"]) == [] and not env.pending_probes(FINE)
    assert env.member(FINE).bounce_score == 1.0
    asked = server.count("good.test", "MX")
    assert asked == 1
    clock.advance(3600)
    check(fresh(env))
    assert server.count("good.test", "MX") == asked      # same member, same day: not asked again
    clock.advance(DAY)
    env.verp_bounce(FINE)
    check(fresh(env))
    assert server.count("good.test", "MX") == asked + 1  # a new day, a new bounce: asked again


def test_dns_timeout_does_nothing_and_is_asked_again_next_run(env, server):
    env.verp_bounce(SLOW)
    assert check(env) == []
    assert server.count("slow.test", "MX") == 1
    assert not env.pending_probes(SLOW) and not env.store.events(SLOW, actions=["dead_domain"])
    assert env.member(SLOW).bounce_score == 1.0
    clock.advance(600)
    assert check(fresh(env)) == []
    assert server.count("slow.test", "MX") == 2          # unknown is no answer: asked again
    # the DNS answers at last: the domain is gone
    server.silent.discard("slow.test.")
    clock.advance(600)
    [line] = check(fresh(env))
    assert SLOW in line and "NXDOMAIN" in line
    assert len(env.pending_probes(SLOW)) == 1


def test_no_check_when_domain_checks_are_off_or_the_bounce_did_not_count(env, server):
    env.verp_bounce(NULL, "4.2.2", "452 4.2.2 Mailbox full")      # soft: not a reason to ask
    assert check(env) == []
    assert server.queries == []
    with open(env.site.path, encoding="utf-8") as fh:
        text = fh.read()
    with open(env.site.path, "w", encoding="utf-8") as fh:
        fh.write(text.replace("dns:\n", "dns:\n  check_domains: false\n"))
    env.verp_bounce(GONE)
    assert check(fresh(env)) == []
    assert server.queries == [] and not env.pending_probes(GONE)
