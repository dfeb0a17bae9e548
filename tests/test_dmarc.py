"""DMARC policy discovery and mitigation (listgate.app.dmarc), DKIM/ARC signing (listgate.app.signing),
against a real authoritative DNS server on loopback."""
from __future__ import annotations

import email
import email.policy
import os
import subprocess
import sys
from types import SimpleNamespace

import dkim
import pytest
from dns_helpers import ZoneServer, dns_conf, txt

from listgate.app import dmarc, posting, signing
from listgate.config.loader import Frozen
from listgate.dns import Resolver

ZONE = {
    "_dmarc.reject.test": [("TXT", 300, txt("v=DMARC1; p=reject; rua=mailto:d@reject.test"))],
    "_dmarc.quarantine.test": [("TXT", 300, txt("v=DMARC1; p=quarantine"))],
    "_dmarc.none.test": [("TXT", 300, txt("v=DMARC1; p=none"))],
    "_dmarc.org.test": [("TXT", 300, txt("v=DMARC1; p=none; sp=reject"))],
    "_dmarc.orgonly.test": [("TXT", 300, txt("v=DMARC1; p=quarantine"))],
    "_dmarc.malformed.test": [("TXT", 300, txt("v=DMARC1; p=bogus"))],
    "_dmarc.twice.test": [("TXT", 300, txt("v=DMARC1; p=reject")), ("TXT", 300, txt("v=DMARC1; p=none"))],
    "_dmarc.notdmarc.test": [("TXT", 300, txt("v=spf1 -all"))],
}


def dkim_key(directory, selector: str) -> tuple[str, str]:
    """A new RSA key by dkimpy's dknewkey: (PEM file, TXT record text)."""
    tool = os.path.join(os.path.dirname(sys.executable), "dknewkey")
    subprocess.run([tool, selector], cwd=directory, check=True, capture_output=True)
    with open(os.path.join(directory, selector + ".dns")) as fh:
        return os.path.join(directory, selector + ".key"), fh.read().strip()


@pytest.fixture(scope="module")
def server():
    with ZoneServer(ZONE, servfail=["_dmarc.broken.test"]) as srv:
        yield srv


@pytest.fixture
def resolver(server):
    return Resolver(dns_conf(server.port, timeout=0.3))


def make_lc(**kw):
    base = dict(name="demo", domain="lists.test", description="", subject_prefix="[demo] ", posting_policy="open",
                dmarc_mitigation="munge_from", dmarc_mitigate_policies=("reject", "quarantine"),
                dmarc_mitigate_addresses=(), dmarc_poster_in="reply_to", dmarc_wrapped_message_text="",
                dkim_sign=None)
    base.update(kw)
    return Frozen(base)


@pytest.mark.parametrize("domain,policy,found_at", [
    ("reject.test", "reject", "reject.test"),
    ("quarantine.test", "quarantine", "quarantine.test"),
    ("none.test", "none", "none.test"),
    ("sub.orgonly.test", "quarantine", "orgonly.test"),     # only the organizational domain publishes
    ("sub.org.test", "reject", "org.test"),                 # sp= for subdomains
    ("org.test", "none", "org.test"),
    ("malformed.test", None, "malformed.test"),
    ("twice.test", None, "twice.test"),                     # RFC 7489 6.6.3: more than one record: none
    ("notdmarc.test", None, "notdmarc.test"),
    ("nowhere.test", None, "nowhere.test"),
    ("_x.broken.test", "unknown", "_x.broken.test"),          # its organizational domain: SERVFAIL
])
def test_policy_discovery(resolver, domain, policy, found_at):
    got = dmarc.lookup_policy(resolver, domain)
    assert (got.policy, got.domain) == (policy, found_at)


def test_servfail_is_unknown_and_mitigated(resolver):
    assert dmarc.lookup_policy(resolver, "broken.test").policy == "unknown"
    site = SimpleNamespace(resolver=resolver)
    assert "could not be looked up" in dmarc.reason(site, make_lc(), "a@broken.test")


def test_organizational_domain_from_the_bundled_public_suffix_list():
    assert dmarc.organizational_domain("a.b.example.co.uk") == "example.co.uk"
    assert dmarc.organizational_domain("mail.example.com") == "example.com"
    assert dmarc.organizational_domain("co.uk") == "co.uk"


@pytest.mark.parametrize("author,policies,addresses,mitigated", [
    ("a@reject.test", ("reject", "quarantine"), (), True),
    ("a@quarantine.test", ("reject", "quarantine"), (), True),
    ("a@quarantine.test", ("reject",), (), False),
    ("a@none.test", ("reject", "quarantine"), (), False),
    ("a@none.test", ("reject", "quarantine", "none"), (), True),
    ("a@nowhere.test", ("reject", "quarantine", "none"), (), False),
    ("Big@Mailbox.test", ("reject",), ("big@mailbox.test",), True),
    ("x@mailbox.test", ("reject",), (r"^.*@mailbox\.test$",), True),
    ("x@other.test", ("reject",), (r"^.*@mailbox\.test$", "^(bad"), False),
])
def test_reason(resolver, author, policies, addresses, mitigated):
    lc = make_lc(dmarc_mitigate_policies=policies, dmarc_mitigate_addresses=addresses)
    assert (dmarc.reason(SimpleNamespace(resolver=resolver), lc, author) is not None) == mitigated
    assert dmarc.reason(SimpleNamespace(resolver=resolver), make_lc(dmarc_mitigation="none"), author) is None


POST = (b"From: Jane Doe <jane@reject.test>\r\nTo: demo@lists.test\r\nSubject: hello\r\n"
        b"Message-ID: <m1@reject.test>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
        b"Content-Type: text/plain; charset=iso-8859-1\r\n\r\nbody \xe9\r\n")


def parse(raw: bytes):
    return email.message_from_bytes(raw, policy=email.policy.default)


def test_munge_from_reply_to_and_cc(resolver):
    site = SimpleNamespace(resolver=resolver)
    out = dmarc.mitigate(site, make_lc(), POST)
    m = parse(out)
    assert m["From"].addresses[0].addr_spec == "demo@lists.test"
    assert m["From"].addresses[0].display_name == "Jane Doe via demo"
    assert [a.addr_spec for a in m["Reply-To"].addresses] == ["jane@reject.test"]
    assert out.endswith(b"\r\n\r\nbody \xe9\r\n")
    cc = parse(dmarc.mitigate(site, make_lc(dmarc_poster_in="cc"), POST.replace(b"To:", b"Cc: x@y.test\r\nTo:")))
    assert [a.addr_spec for a in cc["Cc"].addresses] == ["x@y.test", "jane@reject.test"] and cc["Reply-To"] is None
    # not mitigated: the same bytes
    assert dmarc.mitigate(site, make_lc(), POST.replace(b"reject.test", b"none.test")) == \
        POST.replace(b"reject.test", b"none.test")


def test_wrap_message_carries_the_post_unchanged(resolver):
    lc = make_lc(dmarc_mitigation="wrap_message", dmarc_wrapped_message_text="The post is attached.")
    out = dmarc.mitigate(SimpleNamespace(resolver=resolver), lc, POST)
    m = parse(out)
    assert m["From"].addresses[0].addr_spec == "demo@lists.test"
    assert m["Subject"] == "hello" and m["Message-ID"] == "<m1@reject.test>"
    assert m.get_content_type() == "multipart/mixed"
    parts = list(m.iter_parts())
    assert parts[0].get_content().strip() == "The post is attached."
    assert parts[1].get_content_type() == "message/rfc822"
    assert POST in out                                  # byte for byte
    assert b"Content-Transfer-Encoding: 8bit" in out    # the post is 8-bit


def signing_site(tmp_path, resolver, server, *, seal=False):
    path, record = dkim_key(tmp_path, "lg1")
    server.records["lg1._domainkey.lists.test."] = [("TXT", 300, txt(record))]
    conf = Frozen({"dkim": Frozen({"sign": True, "keys": (Frozen({"selector": "lg1", "domain": None, "file": path,
                                                                  "retired": False}),)}),
                   "arc": Frozen({"seal": seal, "authserv_id": "mx.lists.test"}), "hostname": "mx.lists.test"})
    site = SimpleNamespace(resolver=resolver, conf=conf)
    site.dkim_keys = signing.Keyring(conf.dkim)
    return site


def test_dkim_signature_after_decoration_verifies(tmp_path, resolver, server):
    site = signing_site(tmp_path, resolver, server)
    lc = make_lc()
    final = signing.sign(site, lc, posting.decorate(lc, dmarc.mitigate(site, lc, POST)), original=POST)
    assert final.startswith(b"DKIM-Signature:") and b"d=lists.test" in final and b"s=lg1" in final
    assert dkim.verify(final, dnsfunc=resolver.dkim_txt)
    tampered = final.replace(b"Subject: [demo] hello", b"Subject: [demo] changed")
    assert not dkim.verify(tampered, dnsfunc=resolver.dkim_txt)
    assert signing.sign(site, make_lc(dkim_sign=False), b"Subject: x\n\ny\n") == b"Subject: x\n\ny\n"


def test_arc_seal_verifies_and_forged_results_go(tmp_path, resolver, server):
    site = signing_site(tmp_path, resolver, server, seal=True)
    lc = make_lc()
    forged = b"Authentication-Results: mx.lists.test; dkim=pass header.d=bank.test\r\n" + POST
    final = signing.sign(site, lc, posting.decorate(lc, forged), original=forged)
    assert dkim.verify(final, dnsfunc=resolver.dkim_txt)
    cv, results, why = dkim.arc_verify(final, dnsfunc=resolver.dkim_txt)
    assert cv == b"pass", why
    assert b"bank.test" not in final.split(b"\r\n\r\n")[0]
    assert b"ARC-Authentication-Results: i=1; mx.lists.test; dkim=none; arc=none" in final.replace(b"\r\n ", b" ")


def test_keyring_errors(tmp_path):
    bad = tmp_path / "bad.key"
    bad.write_text("not a key")
    conf = Frozen({"keys": (Frozen({"selector": "s", "domain": None, "file": str(bad), "retired": False}),)})
    with pytest.raises(signing.DkimKeyError, match="not a readable PEM"):
        signing.Keyring(conf)
    path, _ = dkim_key(tmp_path, "old")
    ring = signing.Keyring(Frozen({"keys": (
        Frozen({"selector": "old", "domain": None, "file": path, "retired": True}),
        Frozen({"selector": "d2", "domain": "other.test", "file": path, "retired": False}))}))
    assert ring.signer("other.test")[0] == "d2"
    with pytest.raises(signing.DkimKeyError, match="no DKIM key signs for lists.test"):
        ring.signer("lists.test")
