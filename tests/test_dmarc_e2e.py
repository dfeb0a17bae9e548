"""On a real Postfix: DMARC mitigation, DKIM signature and ARC seal of posts, checked at the sink.

``listgate serve`` asks a DNS server on loopback (tests/dns_helpers.py) that
publishes the posters' DMARC policies and the list's DKIM key; the sink's
copies are verified with dkimpy against the same zone.
"""
from __future__ import annotations

import email
import email.policy
import re
import time

import dkim
import pytest
from dns_helpers import ZoneServer, dns_conf, txt
from test_dmarc import dkim_key

from harness import available
from harness.stack import Stack
from listgate.dns import Resolver

pytestmark = pytest.mark.skipif(not available(), reason="needs Postfix and root")

LIST = "demo@lists.example.org"
ALICE, CAROL, BOB = "alice@reject.test", "carol@none.test", "bob@members.test"


@pytest.fixture(scope="module")
def zone(tmp_path_factory):
    keydir = tmp_path_factory.mktemp("dkim")
    keyfile, record = dkim_key(keydir, "lg1")
    records = {
        "_dmarc.reject.test": [("TXT", 300, txt("v=DMARC1; p=reject"))],
        "_dmarc.none.test": [("TXT", 300, txt("v=DMARC1; p=none"))],
        "lg1._domainkey.lists.example.org": [("TXT", 300, txt(record))],
    }
    for domain in ("reject.test", "none.test", "members.test"):
        records.setdefault(domain, []).append(("A", 300, "127.0.0.1"))
    with ZoneServer(records) as srv:
        srv.keyfile = keyfile
        yield srv


@pytest.fixture(scope="module")
def st(zone):
    site = (f"dns:\n  nameservers: [127.0.0.1]\n  port: {zone.port}\n  timeout: 1s\n  attempts: 2\n"
            f"dkim:\n  sign: true\n  keys:\n    - selector: lg1\n      file: {zone.keyfile}\n"
            f"arc:\n  seal: true\n  authserv_id: lists.example.org\n")
    with Stack(site_settings=site, list_settings="dmarc_mitigation: munge_from\n") as stack:
        for member in (ALICE, CAROL, BOB):
            stack.listgate("members", "add", "demo", member)
        yield stack


def post(st, sender: str, subject: str) -> bytes:
    mid = f"<dmarc-{time.monotonic_ns()}@{sender.split('@')[1]}>"
    msg = (f"From: Poster <{sender}>\r\nTo: {LIST}\r\nSubject: {subject}\r\nMessage-ID: {mid}\r\n"
           f"\r\nBody of {subject}\r\n").encode()
    assert st.send(sender, [LIST], msg) == {}
    [got] = st.sink.wait_for(lambda s: [d for d in s.messages_for(BOB) if mid.encode() in d.data] or None, 60)
    return got.data


def test_post_from_p_reject_is_munged_signed_and_sealed(st, zone):
    data = post(st, ALICE, "from a reject domain")
    m = email.message_from_bytes(data, policy=email.policy.default)
    assert m["From"].addresses[0].addr_spec == LIST
    assert m["From"].addresses[0].display_name == "Poster via demo"
    assert [a.addr_spec for a in m["Reply-To"].addresses] == [ALICE]
    assert m["Subject"] == "[demo] from a reject domain"
    resolver = Resolver(dns_conf(zone.port))
    assert dkim.verify(data, dnsfunc=resolver.dkim_txt)
    assert b"d=lists.example.org" in data
    cv, _, why = dkim.arc_verify(data, dnsfunc=resolver.dkim_txt)
    assert cv == b"pass", why


def test_post_from_p_none_keeps_its_from_and_is_signed(st, zone):
    data = post(st, CAROL, "from a none domain")
    m = email.message_from_bytes(data, policy=email.policy.default)
    assert m["From"].addresses[0].addr_spec == CAROL and m["Reply-To"] is None
    assert dkim.verify(data, dnsfunc=Resolver(dns_conf(zone.port)).dkim_txt)


@pytest.fixture(scope="module")
def st_web(zone):
    """A site that signs and gives every member a one-click link of their own (RFC 8058)."""
    from harness import free_port
    site = (f"dns:\n  nameservers: [127.0.0.1]\n  port: {zone.port}\n  timeout: 1s\n  attempts: 2\n"
            f"dkim:\n  sign: true\n  keys:\n    - selector: lg1\n      file: {zone.keyfile}\n"
            f"arc:\n  seal: true\n  authserv_id: lists.example.org\n"
            f"web:\n  base_url: https://lists.example.org/listgate\n  listen: inet:{free_port()}@127.0.0.1\n")
    with Stack(site_settings=site) as stack:
        for member in (CAROL, BOB):
            stack.listgate("members", "add", "demo", member)
        yield stack


def test_each_copy_is_signed_over_its_own_one_click_link(st_web, zone):
    """The per-member List-Unsubscribe is added at hand-over, so each copy is signed
    there, after it: the signature covers the member's own link (RFC 8058 section 4)."""
    mid = f"<web-{time.monotonic_ns()}@none.test>"
    msg = (f"From: Poster <{CAROL}>\r\nTo: {LIST}\r\nSubject: one click\r\nMessage-ID: {mid}\r\n"
           f"\r\nBody\r\n").encode()
    assert st_web.send(CAROL, [LIST], msg) == {}
    resolver = Resolver(dns_conf(zone.port))
    links = set()
    for member in (CAROL, BOB):
        [got] = st_web.sink.wait_for(
            lambda s: [d for d in s.messages_for(member) if mid.encode() in d.data] or None, 60)
        m = email.message_from_bytes(got.data, policy=email.policy.default)
        assert m["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        links.add(str(m["List-Unsubscribe"]))
        signed = re.search(r"\bh=([^;]+)", re.sub(r"\s", "", str(m["DKIM-Signature"]))).group(1).lower()
        assert {"list-unsubscribe", "list-unsubscribe-post"} <= set(signed.split(":"))
        assert dkim.verify(got.data, dnsfunc=resolver.dkim_txt), member
        cv, _, why = dkim.arc_verify(got.data, dnsfunc=resolver.dkim_txt)
        assert cv == b"pass", why
    assert len(links) == 2      # each member's own link
