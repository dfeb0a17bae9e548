"""Signed member VERP, probe addresses and their decoding (listgate.verp)."""
from __future__ import annotations

import os

import pytest

from listgate import clock, verp
from listgate.addresses import parse
from listgate.store import open_store

from policy_helpers import add_key, edit_site, write_list

DAY = 86400


def ext_of(site, address):
    return parse(address, site.lists).extension


def demo(site):
    return site.get_list("demo")


def test_round_trip(site):
    lc = demo(site)
    address = verp.member_bounce_address(site, lc, "Jane.Doe@Example.COM")
    key_id = site.conf.verp.keys[0].id
    local = address.rpartition("@")[0]
    assert address.endswith("@lists.example.org")
    assert local.startswith(f"demo-bounces+Jane.Doe=example.com.{key_id}.")
    assert len(local) <= verp.MAX_LOCAL_PART
    last = local.rpartition(".")[2]
    day, mac = last[:verp.DAY_CHARS], last[verp.DAY_CHARS:]
    assert day == verp.day_code() and verp.day_age(day) == 0
    assert len(mac) == site.conf.verp.mac_length and mac == mac.lower()
    result = verp.decode(site, lc, ext_of(site, address))
    assert result.kind == "member" and result.valid
    assert result.member == "Jane.Doe@example.com"
    assert result.key_id == key_id and result.error is None


def test_case_folding_mta_does_not_break_signature(site):
    lc = demo(site)
    ext = ext_of(site, verp.member_bounce_address(site, lc, "Jane.Doe@example.com"))
    for folded in (ext.upper(), ext.lower()):
        result = verp.decode(site, lc, folded)
        assert result.kind == "member"
        assert result.member.lower() == "jane.doe@example.com"


def test_member_local_parts_with_delimiters_round_trip(site):
    lc = demo(site)
    for member in ("a+tag@example.com", "x=y@example.org", "o'brien@example.ie", "a.b-c_d@sub.example.co.uk"):
        result = verp.decode(site, lc, ext_of(site, verp.member_bounce_address(site, lc, member)))
        assert (result.kind, result.member) == ("member", member)


def test_forged_mac_never_yields_member(site):
    lc = demo(site)
    ext = ext_of(site, verp.member_bounce_address(site, lc, "jane@example.com"))
    body, _, mac = ext.rpartition(".")
    forged = [
        f"{body}.{'a' * len(mac)}",                    # wrong MAC
        f"{body}.{mac[:-1]}",                          # truncated MAC
        f"{body}.{mac}a",                              # extended MAC
        ext.replace("jane=", "john="),                 # MAC of another member
        f"{body}.",                                    # no MAC
    ]
    for ext_forged in forged:
        result = verp.decode(site, lc, ext_forged)
        assert result.kind == "invalid", ext_forged
        assert result.member is None
        assert result.error == "bad-mac"


def test_signature_is_bound_to_the_list(site):
    site = write_list(site, "other")
    ext = ext_of(site, verp.member_bounce_address(site, demo(site), "jane@example.com"))
    result = verp.decode(site, site.get_list("other"), ext)
    assert (result.kind, result.error, result.member) == ("invalid", "bad-mac", None)


def test_mac_length_from_config(site):
    site = edit_site(site, verp={"keys": [k.as_dict() for k in site.conf.verp.keys], "mac_length": 12})
    address = verp.member_bounce_address(site, demo(site), "jane@example.com")
    assert len(address.rpartition("@")[0].rpartition(".")[2]) == 12 + verp.DAY_CHARS   # day + MAC
    assert verp.decode(site, demo(site), ext_of(site, address)).kind == "member"


@pytest.mark.parametrize("mac_length", [6, 8, 12, 33, 52])
def test_mac_is_the_documented_hmac_in_lower_case_base32(site, mac_length):
    # HMAC-SHA256 over "list_key NUL member NUL day" (lower case), base32 (RFC 4648) lower case, cut:
    # computed here with the standard library alone, independently of verp
    import base64
    import hashlib
    import hmac
    site = edit_site(site, verp={"keys": [k.as_dict() for k in site.conf.verp.keys], "mac_length": mac_length})
    with open(site.resolve(site.conf.verp.keys[0].file), encoding="ascii") as fh:
        secret = bytes.fromhex(fh.read().strip())
    for member in ("Jane.Doe@Example.COM", "o'brien@example.ie", "x=y@example.org"):
        day = verp.day_code()
        digest = hmac.new(secret, f"demo@lists.example.org\x00{member}".lower().encode() + f"\x00{day}".encode(),
                          hashlib.sha256).digest()
        expected = base64.b32encode(digest).decode().lower()[:mac_length]
        ring = site.verp_keys
        assert verp._mac(ring.signer, "Demo@Lists.Example.Org", member, ring.mac_length, day) == expected
        address = verp.member_bounce_address(site, demo(site), member)
        if address != "demo-bounces@lists.example.org":         # long MACs do not fit in 64 octets
            assert address.rpartition("@")[0].rpartition(".")[2] == day + expected
            local, _, domain = member.rpartition("@")
            assert verp.decode(site, demo(site), ext_of(site, address)).member == f"{local}@{domain.lower()}"


# Undated addresses signed by listgate before dated ones (and before its MAC encoding moved to
# base64.b32encode, commit 141b1f4), with the key 000102...1f: mail sent just before the upgrade
# carries them, so they verify byte for byte while verp.accept_undated_until says so.
SIGNED_BEFORE = [
    (8, "Jane.Doe@Example.COM", "demo-bounces+Jane.Doe=example.com.fixed.rdabftlw@lists.example.org"),
    (8, "a@x.org", "demo-bounces+a=x.org.fixed.5bqpinb2@lists.example.org"),
    (13, "Jane.Doe@Example.COM", "demo-bounces+Jane.Doe=example.com.fixed.rdabftlwyqgqi@lists.example.org"),
    (13, "a@x.org", "demo-bounces+a=x.org.fixed.5bqpinb2ncv6z@lists.example.org"),
    (26, "a@x.org", "demo-bounces+a=x.org.fixed.5bqpinb2ncv6zgflb5lx37cnyo@lists.example.org"),
    (33, "a@x.org", "demo-bounces+a=x.org.fixed.5bqpinb2ncv6zgflb5lx37cnyomuhtat5@lists.example.org"),
]


@pytest.mark.parametrize("mac_length, member, address", SIGNED_BEFORE)
def test_addresses_signed_by_earlier_versions_still_verify(site, mac_length, member, address):
    path = os.path.join(site.state_dir, "keys", "fixed.key")
    with open(path, "w", encoding="ascii") as fh:
        fh.write(bytes(range(32)).hex() + "\n")
    import datetime
    until = clock.now() + 86400
    iso = datetime.datetime.fromtimestamp(until, datetime.timezone.utc).isoformat()
    site = edit_site(site, verp={"keys": [{"id": "fixed", "file": path}], "mac_length": mac_length,
                                 "accept_undated_until": iso})
    local, _, domain = member.rpartition("@")
    result = verp.decode(site, demo(site), ext_of(site, address))
    assert (result.kind, result.member, result.key_id) == ("member", f"{local}@{domain.lower()}", "fixed")
    # past the date (or without one) the old form is refused: it carries no date to expire by
    clock.freeze(until + 1)
    try:
        assert verp.decode(site, demo(site), ext_of(site, address)).error == "undated"
    finally:
        clock.freeze(None)
    site = edit_site(site, verp={"keys": [{"id": "fixed", "file": path}], "mac_length": mac_length})
    result = verp.decode(site, demo(site), ext_of(site, address))
    assert (result.kind, result.error) == ("invalid", "undated")
    # and what is signed now is dated: its last label is day + MAC
    signed = verp.member_bounce_address(site, demo(site), member)
    if signed != "demo-bounces@lists.example.org":
        assert len(signed.rpartition("@")[0].rpartition(".")[2]) == mac_length + verp.DAY_CHARS


def _rotate(site, *, retired_at=None, window=None):
    """New key k2 signs; the instance's key is retired (optionally with retired_at / window)."""
    old = site.conf.verp.keys[0].as_dict()
    old["retired"] = True
    if retired_at is not None:
        old["retired_at"] = retired_at
    add_key(site, "k2")
    verp_section = {"keys": [{"id": "k2", "file": "keys/k2.key"}, old]}
    if window is not None:
        verp_section["retired_verify_window"] = window
    return edit_site(site, verp=verp_section)


def test_rotation_new_key_signs_retired_key_verifies_within_window(site):
    clock.freeze(1_800_000_000.0 - 6 * DAY)             # signed before the rotation
    old_ext = ext_of(site, verp.member_bounce_address(site, demo(site), "jane@example.com"))
    old_id = site.conf.verp.keys[0].id
    clock.freeze(1_800_000_000.0)                       # 2027-01-15
    site = _rotate(site, retired_at="2027-01-10", window="30d")
    new_address = verp.member_bounce_address(site, demo(site), "jane@example.com")
    assert ".k2." in new_address
    assert verp.decode(site, demo(site), ext_of(site, new_address)).kind == "member"
    result = verp.decode(site, demo(site), old_ext)
    assert (result.kind, result.key_id, result.member) == ("member", old_id, "jane@example.com")


def test_retired_key_after_window_is_refused(site):
    retired = 1_799_539_200.0                           # 2027-01-10
    clock.freeze(retired + 25 * DAY)                    # signed within verp.max_age of the checks below
    old_ext = ext_of(site, verp.member_bounce_address(site, demo(site), "jane@example.com"))
    site = _rotate(site, retired_at="2027-01-10", window="30d")
    assert site.conf.verp.keys[1].retired_at == retired
    clock.freeze(retired + 30 * DAY - 1)
    assert verp.decode(site, demo(site), old_ext).kind == "member"
    clock.freeze(retired + 30 * DAY + 1)
    result = verp.decode(site, demo(site), old_ext)
    assert (result.kind, result.error, result.member) == ("invalid", "retired-key", None)
    # a forged MAC under the retired key is still "bad-mac", not a retired-key pass
    body, _, mac = old_ext.rpartition(".")
    assert verp.decode(site, demo(site), f"{body}.{'b' * len(mac)}").error == "bad-mac"


def test_retired_key_without_retired_at_verifies_while_listed(site):
    old_ext = ext_of(site, verp.member_bounce_address(site, demo(site), "jane@example.com"))
    site = _rotate(site)
    clock.freeze(clock.now() + 10 * DAY)                # (a dated address's own age still counts)
    assert verp.decode(site, demo(site), old_ext).kind == "member"


def test_removed_key_is_unknown(site):
    old_ext = ext_of(site, verp.member_bounce_address(site, demo(site), "jane@example.com"))
    add_key(site, "k2")
    site = edit_site(site, verp={"keys": [{"id": "k2", "file": "keys/k2.key"}]})
    result = verp.decode(site, demo(site), old_ext)
    assert (result.kind, result.error, result.member) == ("invalid", "unknown-key", None)


def test_unknown_key_id(site):
    result = verp.decode(site, demo(site), "jane=example.com.zz99.abcdefgh")
    assert (result.kind, result.error, result.member) == ("invalid", "unknown-key", None)


def test_unreadable_key_file_raises_clear_error(site):
    os.remove(site.conf.verp.keys[0].file)
    site = edit_site(site)          # a fresh Site: key files are read per loaded configuration
    with pytest.raises(verp.VerpKeyError, match="not a readable hex secret"):
        verp.member_bounce_address(site, demo(site), "jane@example.com")


def test_check_keys_reports_bad_key_files(site):
    assert verp.check_keys(site) == []
    with open(site.conf.verp.keys[0].file, "w") as fh:
        fh.write("not hex at all\n")
    assert "not a readable hex secret" in verp.check_keys(edit_site(site))[0]
    with open(site.conf.verp.keys[0].file, "w") as fh:
        fh.write("abcd\n")
    assert "shorter than 128 bits" in verp.check_keys(edit_site(site))[0]
    add_key(site, "bad")
    site = edit_site(site, verp={"keys": [{"id": "bad.id", "file": "keys/bad.key"}]})
    assert "key id" in verp.check_keys(site)[0]


def test_unsigned_refused_by_default(site):
    assert demo(site).accept_unsigned_verp is False
    result = verp.decode(site, demo(site), "jane=example.com")
    assert (result.kind, result.error, result.member) == ("invalid", "unsigned-not-accepted", None)


def test_unsigned_accepted_when_list_allows(site):
    site = write_list(site, "demo", accept_unsigned_verp=True)
    result = verp.decode(site, demo(site), "Jane=Example.com")
    assert (result.kind, result.member) == ("unsigned", "Jane@example.com")
    # a signed address with a bad MAC stays refused even then
    ext = ext_of(site, verp.member_bounce_address(site, demo(site), "jane@example.com"))
    assert verp.decode(site, demo(site), ext[:-2] + "aa").error == "bad-mac"
    assert verp.decode(site, demo(site), "no-domain=").kind == "invalid"


def test_xverp_lists_accept_the_unsigned_form_postfix_writes(site):
    site = write_list(site, "demo", verp_mode="xverp")
    result = verp.decode(site, demo(site), "jane=example.com")       # XVERP, default delimiters +=
    assert (result.kind, result.member) == ("unsigned", "jane@example.com")
    ext = ext_of(site, verp.member_bounce_address(site, demo(site), "jane@example.com"))
    assert verp.decode(site, demo(site), ext).kind == "member"       # signed ones still verify


@pytest.mark.parametrize("ext", ["", "   ", "=", "jane=", "=example.com", "jane=localhost", "x" * 2000,
                                 "jane=exa mple.com", "ünï=example.com", "\x00=\x01"])
def test_malformed_extensions(site, ext):
    result = verp.decode(site, demo(site), ext)
    assert result.kind == "invalid" and result.member is None
    assert result.error in verp.ERRORS


def test_probe_known_unknown_expired_and_wrong_type(site):
    lc = demo(site)
    store = open_store(site, "demo@lists.example.org")
    clock.freeze(1_800_000_000.0)
    probe = store.add_pending("probe", {"member": "jane@example.com"}, 10 * DAY)
    address = verp.probe_bounce_address(lc, probe.token)
    assert address == f"demo-bounces+{probe.token}@lists.example.org"
    result = verp.decode(site, lc, ext_of(site, address))
    assert (result.kind, result.token, result.member) == ("probe", probe.token, None)
    assert result.pending.payload == {"member": "jane@example.com"}
    assert verp.decode(site, lc, probe.token.upper()).kind == "probe"      # case-folded by an MTA

    unknown = "a" * 26
    assert verp.decode(site, lc, unknown).error == "unknown-token"
    other = store.add_pending("subscription", {"address": "x@example.com"}, 10 * DAY)
    assert verp.decode(site, lc, other.token).error == "unknown-token"

    clock.advance(10 * DAY + 1)
    result = verp.decode(site, lc, probe.token)
    assert (result.kind, result.error) == ("invalid", "unknown-token")


def test_probe_address_needs_a_token(site):
    with pytest.raises(ValueError):
        verp.probe_bounce_address(demo(site), "not-a-token")


def test_local_part_limit_and_fallback(site):
    lc = demo(site)
    overhead = len(f"demo-bounces+=.{site.conf.verp.keys[0].id}.") + verp.DAY_CHARS + site.conf.verp.mac_length
    # exactly 64 octets: still signed
    domain = "example.com"
    local = "a" * (verp.MAX_LOCAL_PART - overhead - len(domain))
    fits = verp.member_bounce_address(site, lc, f"{local}@{domain}")
    assert len(fits.rpartition("@")[0]) == verp.MAX_LOCAL_PART
    assert verp.decode(site, lc, ext_of(site, fits)).member == f"{local}@{domain}"
    # one more octet: the plain bounce address, never a truncated or ambiguous VERP
    assert verp.member_bounce_address(site, lc, f"{local}a@{domain}") == "demo-bounces@lists.example.org"
    # realistic addresses fit
    for member in ("firstname.lastname@example.com", "j.random.hacker@mail.example.org"):
        assert "+" in verp.member_bounce_address(site, lc, member)


@pytest.mark.parametrize("member", ['"john doe"@example.com', "jürgen@example.de", "user@[192.0.2.1]",
                                    "a..b@example.com"])
def test_unembeddable_members_get_plain_sender_logged_at_debug(site, member, caplog):
    assert verp.member_bounce_address(site, demo(site), member) == "demo-bounces@lists.example.org"
    with caplog.at_level("DEBUG", logger="listgate.verp"):
        assert verp.member_bounce_address(site, demo(site), member, log_plain=True) == "demo-bounces@lists.example.org"
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith("verp_not_used ") and "reason=" in line


@pytest.mark.parametrize("member", ["erin@localhost", "root+alice@localhost", "Root+Ivan@mx.example.org"])
def test_dotless_domains_and_plus_in_local_part_get_signed_verp(site, member):
    """A member at a dotless domain is legal on a local system (RFC 5321 section 2.3.5 names a
    host; Postfix delivers to user@localhost): signed VERP like any other, decoding back to it."""
    lc = demo(site)
    address = verp.member_bounce_address(site, lc, member)
    assert address.startswith("demo-bounces+") and len(address.rpartition("@")[0]) <= verp.MAX_LOCAL_PART
    result = verp.decode(site, lc, ext_of(site, address))
    assert (result.kind, result.member.lower()) == ("member", member.lower())


def test_member_bounce_address_rejects_non_address(site):
    with pytest.raises(ValueError):
        verp.member_bounce_address(site, demo(site), "no-at-sign")


def test_dated_address_expires_after_max_age(site):
    lc = demo(site)
    now = clock.now()
    clock.freeze(now)
    try:
        ext = ext_of(site, verp.member_bounce_address(site, lc, "jane@example.com"))
        for days, kind in ((0, "member"), (14, "member"), (15, "invalid"), (400, "invalid")):
            clock.freeze(now + days * 86400)
            result = verp.decode(site, lc, ext)
            assert result.kind == kind, days
            if kind == "invalid":
                assert result.error == "expired"
        # another host a day behind signs "tomorrow": still valid here
        clock.freeze(now - 86400)
        assert verp.decode(site, lc, ext).kind == "member"
        clock.freeze(now - 3 * 86400)
        assert verp.decode(site, lc, ext).error == "expired"
        # the date is under the MAC: moving it forward breaks the signature
        local_dom, _, last = ext.rpartition(".")
        day = verp.day_code(now + 20 * 86400)
        clock.freeze(now + 20 * 86400)
        assert verp.decode(site, lc, f"{local_dom}.{day}{last[verp.DAY_CHARS:]}").error == "bad-mac"
    finally:
        clock.freeze(None)


def test_max_age_from_config(site):
    site = edit_site(site, verp={"keys": [k.as_dict() for k in site.conf.verp.keys], "max_age": "3d"})
    lc = demo(site)
    now = clock.now()
    try:
        clock.freeze(now)
        ext = ext_of(site, verp.member_bounce_address(site, lc, "jane@example.com"))
        clock.freeze(now + 3 * 86400)
        assert verp.decode(site, lc, ext).kind == "member"
        clock.freeze(now + 4 * 86400)
        assert verp.decode(site, lc, ext).error == "expired"
    finally:
        clock.freeze(None)


def test_day_code_round_trip_and_wrap():
    for day in (0, 1, 20000, 32767, 32768, 40000):
        ts = day * 86400 + 3600
        code = verp.day_code(ts)
        assert len(code) == verp.DAY_CHARS and code.isalnum() and code == code.lower()
        assert verp.day_age(code, ts) == 0
        assert verp.day_age(code, ts + 5 * 86400) == 5
    assert verp.day_age("ab") is None and verp.day_age("a1!") is None


def test_post_envid_names_only_its_member_and_expires(site):
    lc = demo(site)
    now = clock.now()
    try:
        clock.freeze(now)
        envid = verp.post_envid(site, lc, "Long.Name@Example.org")
        assert len(envid) <= verp.MAX_ENVID and verp.xtext(envid) == envid
        assert verp.envid_member(site, lc, envid, ["other@example.org", "long.name@example.org"]) \
            == "long.name@example.org"
        assert verp.envid_member(site, lc, envid, ["other@example.org"]) is None
        assert verp.envid_member(site, site.get_list("demo"), envid.upper(), ["long.name@example.org"])
        forged = envid[:-1] + ("a" if envid[-1] != "a" else "b")
        assert verp.envid_member(site, lc, forged, ["long.name@example.org"]) is None
        assert verp.envid_probe_token(site, lc, envid) is None
        clock.freeze(now + 15 * 86400)
        assert verp.envid_member(site, lc, envid, ["long.name@example.org"]) is None
    finally:
        clock.freeze(None)


def test_probe_envid_carries_a_signed_token(site):
    from listgate.store.tokens import new_token
    lc = demo(site)
    token = new_token()
    envid = verp.probe_envid(site, lc, token)
    assert len(envid) <= verp.MAX_ENVID
    assert verp.envid_probe_token(site, lc, envid) == token
    assert verp.envid_probe_token(site, lc, f"p.{new_token()}.{envid.split('.')[2]}.{envid.split('.')[3]}") is None
    assert verp.envid_probe_token(site, lc, None) is None and verp.envid_probe_token(site, lc, "junk") is None


def test_xtext():
    assert verp.xtext("a+b=c d") == "a+2Bb+3Dc+20d"
    assert verp.xtext("é") == "+C3+A9"
