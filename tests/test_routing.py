"""RCPT decisions (listgate.routing.decide_rcpt): every role and rule, real SQLite stores."""
from __future__ import annotations

import os

import pytest

from listgate import clock, routing, verp
from listgate.store import close_all, open_store, store_path

from policy_helpers import add_key, edit_site, write_list

D = "lists.example.org"
OUTSIDE = "192.0.2.10"        # TEST-NET-1: never in trusted_networks


def decide(site, rcpt, sender="someone@example.net", client=OUTSIDE):
    return routing.decide_rcpt(site, rcpt, sender, client)


@pytest.fixture
def members(site):
    store = open_store(site, f"demo@{D}")
    store.add_member("member@example.com")
    return store


def test_foreign_domain_passes(site):
    for rcpt in ("someone@example.com", "demo@other.example.org", "not-an-address", "", "<>"):
        d = decide(site, rcpt)
        assert d.action == "pass" and d.smtp_reply is None


def test_postmaster_of_list_domain_passes(site):
    assert decide(site, f"Postmaster@{D}").action == "pass"


@pytest.mark.parametrize("rcpt", [f"nolist@{D}", f"demo-foo@{D}", f"demo-admin@{D}", f"demo+ext@{D}",
                                  f"demo-owner+x@{D}", f"demo-request+x@{D}", f"demo-confirm@{D}"])
def test_unknown_list_or_suffix_is_550_511(site, rcpt):
    d = decide(site, rcpt)
    assert (d.action, d.code, d.dsn) == ("reject", 550, "5.1.1")
    assert d.smtp_reply.startswith("550 5.1.1 ")


@pytest.mark.parametrize("role", ["request", "join", "leave", "owner"])
def test_command_and_owner_roles_accept(site, role):
    d = decide(site, f"Demo-{role.upper()}@{D.upper()}")
    assert d.action == "accept" and d.address.role == role and d.address.list_key == f"demo@{D}"


def test_confirm_needs_token_shape(site):
    assert decide(site, f"demo-confirm+{'a' * 26}@{D}").action == "accept"
    assert decide(site, f"demo-confirm+{'A' * 26}@{D}").action == "accept"      # case-folded
    d = decide(site, f"demo-confirm+short@{D}")
    assert (d.action, d.code, d.dsn) == ("reject", 550, "5.1.1")


def test_plain_bounce_address_accepts(site):
    d = decide(site, f"demo-bounces@{D}", sender="")
    assert d.action == "accept" and d.address.role == "bounces" and d.verp is None


def test_signed_verp_accepts_with_member(site):
    address = verp.member_bounce_address(site, site.get_list("demo"), "member@example.com")
    d = decide(site, address, sender="")
    assert d.action == "accept"
    assert (d.verp.kind, d.verp.member) == ("member", "member@example.com")


def test_forged_and_unknown_key_verp_rejected(site):
    address = verp.member_bounce_address(site, site.get_list("demo"), "member@example.com")
    local, _, domain = address.rpartition("@")
    for bad in (local[:-3] + "aaa", f"demo-bounces+member=example.com.nokey.abcdefgh", "demo-bounces+member=example.com"):
        d = decide(site, f"{bad}@{domain}", sender="")
        assert (d.action, d.code, d.dsn, d.text) == ("reject", 550, "5.1.1", "not a valid bounce address")
        assert d.verp is not None and d.verp.member is None


def test_retired_key_past_window_rejected(site):
    address = verp.member_bounce_address(site, site.get_list("demo"), "member@example.com")
    key = site.conf.verp.keys[0].as_dict()
    with open(os.path.join(site.state_dir, "keys", "k2.key"), "w") as fh:
        fh.write("ab" * 32)
    site = edit_site(site, verp={"keys": [{"id": "k2", "file": "keys/k2.key"},
                                          {**key, "retired": True, "retired_at": "2020-01-01"}],
                                 "retired_verify_window": "30d"})
    d = decide(site, address, sender="")
    assert (d.action, d.dsn, d.verp.error) == ("reject", "5.1.1", "retired-key")


def test_probe_token_known_unknown_expired(site):
    clock.freeze(1_800_000_000.0)
    store = open_store(site, f"demo@{D}")
    probe = store.add_pending("probe", {"member": "member@example.com"}, 86400)
    d = decide(site, f"demo-bounces+{probe.token}@{D}", sender="")
    assert d.action == "accept" and d.verp.kind == "probe" and d.verp.token == probe.token
    assert decide(site, f"demo-bounces+{'b' * 26}@{D}", sender="").action == "reject"
    clock.advance(86401)
    d = decide(site, f"demo-bounces+{probe.token}@{D}", sender="")
    assert (d.action, d.code, d.dsn, d.verp.error) == ("reject", 550, "5.1.1", "unknown-token")


def test_unsigned_verp_only_when_list_allows(site):
    assert decide(site, f"demo-bounces+jane=example.com@{D}").action == "reject"
    site = write_list(site, "demo", accept_unsigned_verp=True)
    d = decide(site, f"demo-bounces+jane=example.com@{D}")
    assert d.action == "accept" and d.verp.kind == "unsigned" and d.verp.member == "jane@example.com"


def test_trusted_reinjection_passes(site):
    # our runner hands a post back to Postfix: sender is a list bounce address, client is loopback
    sender = verp.member_bounce_address(site, site.get_list("demo"), "member@example.com")
    for rcpt in (f"demo@{D}", f"nolist@{D}"):
        assert decide(site, rcpt, sender=sender, client="127.0.0.1").action == "pass"
        assert decide(site, rcpt, sender=f"demo-bounces@{D}", client="::1").action == "pass"
        assert decide(site, rcpt, sender=f"demo-bounces@{D}", client="::ffff:127.0.0.1").action == "pass"
    # the same sender from outside is not trusted; a non-bounce sender from inside is not re-injection
    assert decide(site, f"nolist@{D}", sender=f"demo-bounces@{D}", client=OUTSIDE).action == "reject"
    assert decide(site, f"nolist@{D}", sender=f"demo-bounces@{D}", client=None).action == "reject"
    assert decide(site, f"nolist@{D}", sender="member@example.com", client="127.0.0.1").action == "reject"
    assert decide(site, f"nolist@{D}", sender=f"demo-bounces@{D}", client="garbage").action == "reject"


def test_trusted_networks_from_config(site):
    site = edit_site(site, trusted_networks=["192.0.2.0/24"])
    assert decide(site, f"nolist@{D}", sender=f"demo-bounces@{D}", client=OUTSIDE).action == "pass"
    assert decide(site, f"nolist@{D}", sender=f"demo-bounces@{D}", client="127.0.0.1").action == "reject"


def _policy(site, policy, action):
    return write_list(site, "demo", posting_policy=policy, non_member_action=action,
                      moderators=[f"mod@{D}"])


@pytest.mark.parametrize("policy", ["members_only", "moderated"])
def test_closed_list_non_member_reject(site, members, policy):
    site = _policy(site, policy, "reject")
    assert decide(site, f"demo@{D}", sender="member@example.com").action == "accept"
    assert decide(site, f"demo@{D}", sender="<member@EXAMPLE.com>").action == "accept"
    for sender in ("stranger@example.net", "", "<>"):
        d = decide(site, f"demo@{D}", sender=sender)
        assert (d.action, d.code, d.dsn) == ("reject", 550, "5.7.1"), sender
    # owners and moderators may post without being members
    assert decide(site, f"demo@{D}", sender=f"Owner@{D}").action == "accept"
    assert decide(site, f"demo@{D}", sender=f"mod@{D}").action == "accept"


def test_a_member_posts_whatever_the_case_of_their_address_unless_the_list_keeps_case(site, members):
    site = _policy(site, "members_only", "reject")
    members.add_member("Alice@Example.com")
    for sender in ("ALICE@example.COM", "alice@example.com", "MEMBER@example.com"):
        assert decide(site, f"demo@{D}", sender=sender).action == "accept", sender
    site = write_list(site, "demo", posting_policy="members_only", non_member_action="reject",
                      case_sensitive_local_parts=True)
    assert decide(site, f"demo@{D}", sender="Alice@EXAMPLE.com").action == "accept"
    for sender in ("ALICE@example.COM", "alice@example.com", "MEMBER@example.com"):
        assert decide(site, f"demo@{D}", sender=sender).action == "reject", sender


@pytest.mark.parametrize("action", ["hold", "discard"])
def test_closed_list_non_member_hold_or_discard_accepts(site, members, action):
    site = _policy(site, "members_only", action)
    d = decide(site, f"demo@{D}", sender="stranger@example.net")
    assert d.action == "accept" and d.address.role == "post"


def test_announce_only_staff_post(site, members):
    site = _policy(site, "announce", "reject")
    assert decide(site, f"demo@{D}", sender="member@example.com").action == "reject"
    assert decide(site, f"demo@{D}", sender=f"mod@{D}").action == "accept"
    assert decide(site, f"demo@{D}", sender=f"owner@{D}").action == "accept"


def test_open_list_and_unknown_sender_accept(site, members):
    assert decide(site, f"demo@{D}", sender=None).action == "accept"
    site = _policy(site, "open", "reject")
    assert decide(site, f"demo@{D}", sender="stranger@example.net").action == "accept"


def test_junk_senders_are_non_members(site, members):
    site = _policy(site, "members_only", "reject")
    junk = b"\xff\xfe@\x80.example".decode("utf-8", "surrogateescape")
    for sender in (junk, "a\x00b@example.com", "x" * 5000 + "@example.com", "@", "a@", "no-at-sign"):
        d = decide(site, f"demo@{D}", sender=sender)
        assert (d.action, d.dsn) == ("reject", "5.7.1"), sender
    junk_rcpt = b"demo-bounces+\xff=ex.com.k1.abcdefgh@" + D.encode()
    assert decide(site, junk_rcpt.decode("utf-8", "surrogateescape"), sender="").action == "reject"


def test_disabled_member_may_still_post(site, members):
    site = _policy(site, "members_only", "reject")
    m = members.get_member("member@example.com")
    m.delivery_status = "by_bounce"
    members.save_member(m)
    assert decide(site, f"demo@{D}", sender="member@example.com").action == "accept"


def test_store_failure_is_tempfail(site):
    site = _policy(site, "members_only", "reject")
    close_all()
    path = store_path(site, f"demo@{D}")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(b"this is not an SQLite database" * 100)
    try:
        for rcpt, sender in ((f"demo@{D}", "stranger@example.net"), (f"demo-bounces+{'c' * 26}@{D}", "")):
            d = decide(site, rcpt, sender=sender)
            assert (d.action, d.code, d.dsn) == ("tempfail", 451, "4.3.0")
            assert d.smtp_reply.startswith("451 4.3.0 ")
        # decisions that need no store still work
        assert decide(site, f"nolist@{D}").action == "reject"
        assert decide(site, f"demo-request@{D}").action == "accept"
        good_verp = verp.member_bounce_address(site, site.get_list("demo"), "member@example.com")
        assert decide(site, good_verp, sender="").action == "accept"
    finally:
        close_all()


def test_post_address_is_what_parse_says(site, members):
    from listgate.addresses import parse
    for rcpt in (f"demo@{D}", f"DeMo@{D.upper()}", f"<demo@{D}.>", f" demo@{D} "):
        d = decide(site, rcpt, sender="member@example.com")
        assert d.action == "accept" and d.address == parse(rcpt, site.lists), rcpt


def test_decisions_after_close_all_and_in_a_forked_child(site, members):
    site = _policy(site, "members_only", "reject")
    post = f"demo@{D}"
    assert decide(site, post, sender="member@example.com").action == "accept"
    close_all()                 # a closed store is opened again
    assert decide(site, post, sender="member@example.com").action == "accept"
    pid = os.fork()
    if pid == 0:                # the child reads through its own connection (never the parent's)
        code = 1
        try:
            open_store(site, f"demo@{D}").add_member("child@example.com")
            ok = (decide(site, post, sender="child@example.com").action == "accept"
                  and decide(site, post, sender="stranger@example.net").action == "reject")
            code = 0 if ok else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert decide(site, post, sender="child@example.com").action == "accept"


def test_unreadable_key_is_tempfail(site):
    address = verp.member_bounce_address(site, site.get_list("demo"), "member@example.com")
    os.remove(site.conf.verp.keys[0].file)
    site = edit_site(site)
    d = decide(site, address, sender="")
    assert (d.action, d.code, d.dsn) == ("tempfail", 451, "4.3.0")


def test_second_list_in_other_domain(site):
    site = write_list(site, "news", domain="example.net", posting_policy="open")
    assert decide(site, "news@example.net").action == "accept"
    assert decide(site, "demo@example.net").action == "reject"
    assert decide(site, f"news@{D}").action == "reject"


def test_repeated_verp_decisions_follow_the_clock(site):
    # the retired key's window is looked at on every decision
    clock.freeze(1_799_539_200.0 + 25 * 86400)      # signed 5 days before the window ends
    address = verp.member_bounce_address(site, site.get_list("demo"), "member@example.com")
    retiring = {**site.conf.verp.keys[0].as_dict(), "retired": True, "retired_at": "2027-01-10"}
    site = edit_site(site, verp={"keys": [{"id": "k2", "file": add_key(site, "k2")}, retiring],
                                 "retired_verify_window": "30d"})
    retired = site.conf.verp.keys[1].retired_at
    clock.freeze(retired + 30 * 86400 - 1)
    first, again = decide(site, address, sender=""), decide(site, address, sender="")
    assert first.action == again.action == "accept"
    assert again.verp.member == "member@example.com" and again.address == first.address
    clock.freeze(retired + 30 * 86400 + 1)
    for _ in range(2):
        d = decide(site, address, sender="")
        assert (d.action, d.dsn, d.verp.error) == ("reject", "5.1.1", "retired-key")


def test_repeated_recipient_decisions_follow_reloads(site):
    # a reload that adds a list or a domain decides the same text anew
    for _ in range(2):
        assert decide(site, "news@example.net").action == "pass"
        assert decide(site, f"news@{D}").action == "reject"
    site = write_list(site, "news", domain="example.net", posting_policy="open")
    for _ in range(2):
        assert decide(site, "news@example.net").action == "accept"
        assert decide(site, f"news@{D}").action == "reject"
    site = write_list(site, "news", domain=D, posting_policy="open")
    assert decide(site, f"news@{D}").action == "accept"


def test_repeated_sender_decisions_follow_the_store(site, members):
    # membership is asked of the store every time
    site = _policy(site, "members_only", "reject")
    post = f"demo@{D}"
    for _ in range(2):
        assert decide(site, post, sender="member@example.com").action == "accept"
        assert decide(site, post, sender="<member@EXAMPLE.com>").action == "accept"
        assert decide(site, post, sender="no-at-sign").action == "reject"
    members.remove_member("member@example.com")
    assert decide(site, post, sender="member@example.com").action == "reject"
    members.add_member("member@example.com")
    assert decide(site, post, sender="<member@EXAMPLE.com>").action == "accept"


def test_expired_and_undated_verp_refused_like_forged(site):
    lc = site.get_list("demo")
    now = clock.now()
    clock.freeze(now)
    address = verp.member_bounce_address(site, lc, "member@example.com")
    assert decide(site, address, sender="").action == "accept"
    clock.freeze(now + 15 * 86400)
    d = decide(site, address, sender="")
    assert (d.action, d.code, d.dsn, d.verp.error) == ("reject", 550, "5.1.1", "expired")
    assert "expired" in d.text
    # an undated address of the old form, correctly signed: refused unless accept_undated_until says so
    ring = site.verp_keys
    mac = verp._mac(ring.signer, "demo@lists.example.org", "member@example.com", ring.mac_length)
    old = f"demo-bounces+member=example.com.{ring.signer.id}.{mac}@{D}"
    d = decide(site, old, sender="")
    assert (d.action, d.dsn, d.verp.error) == ("reject", "5.1.1", "undated")
