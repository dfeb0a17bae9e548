"""listgate.dns against a real authoritative server on loopback (tests/dns_helpers.py)."""
from __future__ import annotations

import time

import pytest
from dns_helpers import ZoneServer, dns_conf, txt

from listgate.dns import Resolver

RECORDS = {
    "mx.test": [("MX", 300, "10 mail.mx.test.")],
    "mail.mx.test": [("A", 300, "127.0.0.9")],
    "nullmx.test": [("MX", 300, "0 .")],
    "aonly.test": [("A", 300, "127.0.0.10")],
    "v6only.test": [("AAAA", 300, "::1")],
    "nothing.test": [("TXT", 300, txt("v=spf1 -all"))],
    "short.test": [("MX", 1, "10 mail.mx.test.")],
}


@pytest.fixture(scope="module")
def server():
    with ZoneServer(RECORDS, servfail=["broken.test"], silent=["slow.test"], neg_ttl=1) as srv:
        yield srv


@pytest.fixture
def resolver(server):
    return Resolver(dns_conf(server.port, timeout=0.3, attempts=2))


@pytest.mark.parametrize("domain,status", [
    ("mx.test", "ok"), ("aonly.test", "ok"), ("v6only.test", "ok"),
    ("nullmx.test", "null_mx"), ("gone.test", "nxdomain"), ("nothing.test", "no_address"),
    ("broken.test", "unknown"), ("slow.test", "unknown"),
])
def test_mail_domain(resolver, domain, status):
    got = resolver.mail_domain(domain)
    assert got.status == status
    assert got.dead == (status in ("null_mx", "nxdomain", "no_address"))
    if status != "ok":
        assert domain in got.reason


def test_timeout_is_bounded_by_timeout_times_attempts(resolver):
    start = time.monotonic()
    assert resolver.query("slow.test", "MX").status == "unknown"
    assert time.monotonic() - start < 0.3 * 2 + 0.5


def test_answers_are_cached_for_their_ttl_and_negative_answers_for_the_soa_minimum(resolver, server):
    for _ in range(3):
        assert resolver.query("short.test", "MX").status == "ok"
        assert resolver.query("gone2.test", "MX").status == "nxdomain"
        assert resolver.query("aonly.test", "TXT").status == "nodata"
    assert server.count("short.test", "MX") == 1
    assert server.count("gone2.test", "MX") == 1
    assert server.count("aonly.test", "TXT") == 1
    time.sleep(1.2)                      # TTL 1 s, negative TTL 1 s (SOA minimum)
    resolver.query("short.test", "MX")
    resolver.query("gone2.test", "MX")
    resolver.query("aonly.test", "TXT")
    assert server.count("short.test", "MX") == 2
    assert server.count("gone2.test", "MX") == 2
    assert server.count("aonly.test", "TXT") == 2


def test_failures_are_not_cached(resolver, server):
    resolver.query("broken.test", "TXT")
    resolver.query("broken.test", "TXT")
    assert server.count("broken.test", "TXT") == 2


def test_txt_and_dkim_dnsfunc(resolver):
    assert resolver.txt("nothing.test").records == ("v=spf1 -all",)
    assert resolver.dkim_txt(b"nothing.test.") == b"v=spf1 -all"
    assert resolver.dkim_txt(b"gone.test.") is None
