"""One-click unsubscribe tokens (listgate.web.tokens) and the per-member List-Unsubscribe fields
(listgate.app.posting.add_unsubscribe_headers)."""
from __future__ import annotations

import base64
import email
import email.policy

import pytest

from listgate import clock, verp
from listgate.app import posting
from listgate.web import tokens

from policy_helpers import add_key, edit_site, write_list

DAY = 86400


def demo(site):
    return site.get_list("demo")


def _parts(token):
    payload, key_id, mac = token.split(".")
    return payload, key_id, mac


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def test_round_trip(site):
    token = tokens.sign(site, demo(site), "Jane.Doe@example.com")
    assert all(c.isalnum() or c in "-_." for c in token)   # URL-safe, no escaping needed
    got = tokens.verify(site, token)
    assert got.lc is demo(site)
    assert got.member == "Jane.Doe@example.com"
    assert got.key_id == site.conf.verp.keys[0].id


def test_non_ascii_member_round_trips(site):
    token = tokens.sign(site, demo(site), "jürgen@exämple.de")
    assert token.isascii()
    assert tokens.verify(site, token).member == "jürgen@exämple.de"


@pytest.mark.parametrize("mangle", [
    lambda p, k, m: f"{p}.{k}.{'A' * len(m)}",                       # wrong MAC
    lambda p, k, m: f"{p}.{k}.{m[:-1]}",                             # truncated MAC
    lambda p, k, m: f"{p}.{k}.{m}A",                                 # extended MAC
    lambda p, k, m: f"{_b64('demo@lists.example.org' + chr(0) + 'john@example.com')}.{k}.{m}",  # other member
])
def test_forged_token_is_bad_mac(site, mangle):
    token = tokens.sign(site, demo(site), "jane@example.com")
    with pytest.raises(tokens.TokenError) as err:
        tokens.verify(site, mangle(*_parts(token)))
    assert err.value.reason == "bad-mac"


def test_token_is_bound_to_its_list(site):
    site = write_list(site, "other")
    payload, key_id, mac = _parts(tokens.sign(site, demo(site), "jane@example.com"))
    moved = _b64("other@lists.example.org\x00jane@example.com")
    with pytest.raises(tokens.TokenError) as err:
        tokens.verify(site, f"{moved}.{key_id}.{mac}")
    assert err.value.reason == "bad-mac"
    # each list's own token names its own list
    assert tokens.verify(site, tokens.sign(site, site.get_list("other"), "jane@example.com")).lc.name == "other"


def test_token_of_a_list_this_site_no_longer_has(site):
    site = write_list(site, "gone")
    token = tokens.sign(site, site.get_list("gone"), "jane@example.com")
    import os
    os.remove(site.list_files["gone@lists.example.org"])
    site = edit_site(site)
    with pytest.raises(tokens.TokenError) as err:
        tokens.verify(site, token)
    assert err.value.reason == "unknown-list"


def test_a_verp_mac_is_not_a_token_mac(site):
    """Same key, same list and member: the VERP signature must not pass as a token's."""
    address = verp.member_bounce_address(site, demo(site), "jane@example.com")
    key_id = site.conf.verp.keys[0].id
    vmac = address.rpartition("@")[0].rpartition(".")[2]
    with pytest.raises(tokens.TokenError):
        tokens.verify(site, f"{_b64('demo@lists.example.org' + chr(0) + 'jane@example.com')}.{key_id}.{vmac}")


@pytest.mark.parametrize("junk", ["", "x", "a.b", "a.b.c.d", "..", "!!!.k1.abc", "é.k1.abc",
                                  _b64("no-nul-here") + ".k1.abc", _b64("demo@lists.example.org\x00nobody") + ".k1.abc",
                                  base64.urlsafe_b64encode(b"\xff\xfe\x00x@y").decode() + ".k1.abc", "a" * 5000])
def test_malformed_tokens(site, junk):
    with pytest.raises(tokens.TokenError) as err:
        tokens.verify(site, junk)
    assert err.value.reason == "malformed"


def test_unknown_key(site):
    payload, _, mac = _parts(tokens.sign(site, demo(site), "jane@example.com"))
    with pytest.raises(tokens.TokenError) as err:
        tokens.verify(site, f"{payload}.zz99.{mac}")
    assert err.value.reason == "unknown-key"


def _rotate(site, *, retired_at):
    old = site.conf.verp.keys[0].as_dict()
    old.update(retired=True, retired_at=retired_at)
    add_key(site, "k2")
    return edit_site(site, verp={"keys": [{"id": "k2", "file": "keys/k2.key"}, old],
                                 "retired_verify_window": "30d"})


def test_rotated_key(site):
    old_token = tokens.sign(site, demo(site), "jane@example.com")
    site = _rotate(site, retired_at="2027-01-10")
    new_token = tokens.sign(site, demo(site), "jane@example.com")
    assert _parts(new_token)[1] == "k2"
    retired = site.conf.verp.keys[1].retired_at
    clock.freeze(retired + 30 * DAY - 1)
    assert tokens.verify(site, old_token).member == "jane@example.com"
    assert tokens.verify(site, new_token).key_id == "k2"
    clock.freeze(retired + 30 * DAY + 1)
    with pytest.raises(tokens.TokenError) as err:
        tokens.verify(site, old_token)
    assert err.value.reason == "retired-key"
    # a key removed from the list stops verifying at once
    site = edit_site(site, verp={"keys": [{"id": "k2", "file": "keys/k2.key"}]})
    with pytest.raises(tokens.TokenError) as err:
        tokens.verify(site, old_token)
    assert err.value.reason == "unknown-key"


POST = (b"From: Jane <jane@example.com>\r\nTo: demo@lists.example.org\r\nSubject: hi\r\n"
        b"List-Unsubscribe: <mailto:elsewhere@example.net>\r\n\r\nbody \xe9 8-bit\r\n")


def test_decorate_without_web_carries_the_mailto_form_only(site):
    out = posting.decorate(demo(site), POST)
    assert posting.add_unsubscribe_headers(out, site, demo(site), "jane@example.com") == out
    m = email.message_from_bytes(out, policy=email.policy.compat32)
    assert m.get_all("List-Unsubscribe") == ["<mailto:demo-leave@lists.example.org?subject=unsubscribe>"]
    assert m["List-Unsubscribe-Post"] is None


def test_per_member_one_click_fields(site):
    site = edit_site(site, web={"base_url": "https://lists.example.org/lg/"})
    lc = demo(site)
    decorated = posting.decorate(lc, POST)
    out = posting.add_unsubscribe_headers(decorated, site, lc, "jane@example.com")
    head, body = out.split(b"\r\n\r\n", 1)
    assert body == b"body \xe9 8-bit\r\n"                      # the body byte for byte
    assert b"\n" not in head.replace(b"\r\n", b"")             # CRLF kept, no bare LF
    m = email.message_from_bytes(out, policy=email.policy.compat32)
    (value,) = m.get_all("List-Unsubscribe")
    url, mailto = [v.strip() for v in value.replace("\r\n", "").split(",")]
    assert mailto == "<mailto:demo-leave@lists.example.org?subject=unsubscribe>"
    assert url.startswith("<https://lists.example.org/lg/u/") and url.endswith(">")
    assert tokens.verify(site, url[1:-1].rsplit("/", 1)[1]).member == "jane@example.com"
    assert m.get_all("List-Unsubscribe-Post") == ["List-Unsubscribe=One-Click"]
    # replaces the mailto field in place: the other fields keep their order
    names = [n.lower() for n in m.keys()]
    dec_names = [n.lower() for n in email.message_from_bytes(decorated, policy=email.policy.compat32).keys()]
    i = dec_names.index("list-unsubscribe")
    assert names == dec_names[:i + 1] + ["list-unsubscribe-post"] + dec_names[i + 1:]
    # another member, another token; applied twice, still one field of each
    other = posting.add_unsubscribe_headers(out, site, lc, "bob@example.org")
    m2 = email.message_from_bytes(other, policy=email.policy.compat32)
    assert len(m2.get_all("List-Unsubscribe")) == 1 and len(m2.get_all("List-Unsubscribe-Post")) == 1
    assert tokens.verify(site, m2["List-Unsubscribe"].split(">")[0].rsplit("/", 1)[1]).member == "bob@example.org"


def test_unreadable_key_keeps_the_mailto_form(site, caplog):
    import os
    site = edit_site(site, web={"base_url": "https://lists.example.org"})
    decorated = posting.decorate(demo(site), POST)
    os.remove(site.conf.verp.keys[0].file)
    site = edit_site(site)
    assert posting.add_unsubscribe_headers(decorated, site, demo(site), "jane@example.com") == decorated
    assert "no one-click unsubscribe" in caplog.text
