"""Subscriptions check the address's domain in DNS (null MX, NXDOMAIN, no MX and no address; unknown:
retried later / the CLI says so), against a real DNS server on loopback."""
from __future__ import annotations

import pytest
from dns_helpers import TEST_DNS, ZoneServer
from runner_helpers import LIST, Env, message, text_of

from listgate import clock, config
from listgate.cli import main

ZONE = {
    "good.test": [("MX", 300, "10 mx.good.test.")],
    "mx.good.test": [("A", 300, "127.0.0.9")],
    "aonly.test": [("A", 300, "127.0.0.10")],
    "nullmx.test": [("MX", 300, "0 .")],
    "noaddr.test": [("TXT", 300, '"hello"')],
}


@pytest.fixture(scope="module")
def server():
    with ZoneServer(ZONE, servfail=["broken.test"]) as srv:
        yield srv


def point_at(site_path: str, port: int) -> None:
    with open(site_path, encoding="utf-8") as fh:
        text = fh.read()
    assert TEST_DNS in text
    text = text.replace(TEST_DNS, f"dns:\n  nameservers: [127.0.0.1]\n  port: {port}\n  timeout: 1s\n  attempts: 1\n")
    with open(site_path, "w", encoding="utf-8") as fh:
        fh.write(text)


@pytest.fixture
def env(tmp_path, server):
    e = Env(tmp_path)
    point_at(e.site.path, server.port)
    e.site = config.load(e.site.path)
    yield e
    e.close()


@pytest.mark.parametrize("address,why", [
    ("a@nullmx.test", "null MX"), ("a@gone.test", "does not exist (NXDOMAIN)"),
    ("a@noaddr.test", "no MX and no address record"),
])
def test_email_subscribe_refused_with_the_reason(env, address, why):
    env.inject(message(address, "subscribe"), role="request", sender=address)
    env.run()
    replies = env.sink.messages_for(address)
    assert len(replies) == 1
    body = text_of(replies[0])
    assert f"{address} cannot receive mail" in body and why in body
    assert not env.store.pending()


@pytest.mark.parametrize("address", ["a@good.test", "a@aonly.test"])
def test_email_subscribe_to_a_domain_that_takes_mail(env, address):
    env.inject(message(address, "subscribe"), role="join", sender=address)
    env.run()
    assert [r.type for r in env.store.pending()] == ["subscription"]


def test_dns_unknown_waits_in_retry_without_blocking_the_queue(env, server):
    env.members("m@good.test")
    env.inject(message("a@broken.test", "subscribe"), role="join", sender="a@broken.test")
    env.inject(message("m@good.test", "a post"), sender="m@good.test")
    env.run()
    assert env.sink.messages_for("m@good.test"), "the post behind the request went out"
    waiting = env.queue("retry").ids()
    assert len(waiting) == 1 and not env.store.pending()
    qf = env.queue("retry").take(waiting[0])
    assert qf.meta["requeue"] == "in" and qf.meta["retry_at"] > clock.now()
    env.queue("retry").release(qf)
    env.run()
    assert env.queue("retry").ids() == waiting           # not due yet
    # later the DNS answers (the domain takes mail now) and the request goes through
    server.servfail.discard("broken.test.")
    server.records["broken.test."] = [("A", 300, "127.0.0.11")]
    try:
        clock.set_offset(env.site.conf.runner.retry_backoff + 1)
        env.run()
    finally:
        server.servfail.add("broken.test.")
        del server.records["broken.test."]
    assert env.queue("retry").ids() == [] and [r.type for r in env.store.pending()] == ["subscription"]


def cli(site_path, *argv):
    try:
        return main(["-c", site_path, *argv])
    except SystemExit as exc:
        return exc.code


def test_cli_members_add(env, capsys):
    assert cli(env.site.path, "members", "add", "demo", "a@nullmx.test") == 1
    assert "a@nullmx.test: cannot receive mail" in capsys.readouterr().err
    assert cli(env.site.path, "members", "add", "demo", "a@broken.test") == 75
    assert "could not be made" in capsys.readouterr().err
    assert cli(env.site.path, "members", "add", "demo", "a@good.test") == 0
    assert cli(env.site.path, "members", "add", "demo", "a@nullmx.test", "--force") == 0
    assert {m.address for m in env.store.members()} == {"a@good.test", "a@nullmx.test"}


def test_cli_members_sync_checks_the_dns_unless_forced(env, capsys, tmp_path):
    """--force means one thing for add and sync: skip the DNS check (a host without DNS can still sync)."""
    path = tmp_path / "members.txt"
    path.write_text("a@good.test\nb@nullmx.test\nc@broken.test\n", encoding="utf-8")
    assert cli(env.site.path, "members", "sync", "demo", str(path)) == 75     # c: the DNS could not answer
    err = capsys.readouterr().err
    assert "b@nullmx.test: cannot receive mail" in err and "c@broken.test" in err
    assert {m.address for m in env.store.members()} == {"a@good.test"}
    assert cli(env.site.path, "members", "sync", "demo", str(path), "--force") == 0
    assert {m.address for m in env.store.members()} == {"a@good.test", "b@nullmx.test", "c@broken.test"}
