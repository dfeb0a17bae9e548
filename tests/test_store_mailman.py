"""Mailman 2.1 ``config.pck`` import: the three corpus lists, delivery status, safety of the unpickler."""
from __future__ import annotations

import calendar
import os
import pickle
import random
import sys
import types

import pytest

from listgate.store import close_all, open_store
from listgate.store.mailman import (MailmanImportError, import_members, load_config, looks_like_pickle,
                                    read_config)

from conftest import SHARED

MAILMAN = SHARED / "corpus" / "mailman21"
CORPUS_MEMBERS = {"bperson@example.com": "Bill Person", "cris.person@example.net": "Cris Person",
                  "dperson@example.org": "Dave Person"}


@pytest.fixture
def mailman():
    if not (MAILMAN / "config.pck").exists():
        pytest.skip("Mailman corpus ../shared/corpus/mailman21 not present")
    return lambda name: (MAILMAN / name).read_bytes()


@pytest.fixture
def store(site):
    yield open_store(site, "demo@lists.example.org")
    close_all()


@pytest.mark.parametrize("name, language", [("config.pck", "en"), ("config-greek.pck", "el")])
def test_plain_lists(mailman, name, language):
    data = mailman(name)
    assert looks_like_pickle(data)
    found = read_config(data)
    assert (found.real_name, found.host_name, found.language) == ("Test", "heresy.example.org", language)
    assert {m.address: m.display_name for m in found.members} == CORPUS_MEMBERS
    assert all(m.delivery_status == "enabled" and m.bounce is None and not m.digest for m in found.members)


def test_greek_text_is_decoded_in_the_list_charset(mailman):
    # Mailman 2.1 kept a Greek list's texts as ISO-8859-7 byte strings.
    conf = load_config(mailman("config-greek.pck"))
    raw = conf["info"].encode("latin-1")
    assert raw.decode("iso-8859-7") == "Αυτή είναι μια λίστα."


def test_bounce_info_from_instances(mailman, store):
    found = read_config(mailman("config-with-instances.pck"))
    assert found.real_name == "eclipse-sig" and len(found.members) == 3
    bounced = {m.address: m.bounce for m in found.members if m.bounce}
    assert set(bounced) == {"xxxxxx@examplexxxxxx.org", "xxxxxxxx@exampl.com"}
    info = bounced["xxxxxx@examplexxxxxx.org"]
    assert (info.score, info.date, info.last_notice) == (1.0, "2015-03-24", None)   # (1970,1,2) = never
    assert info.notices_left is None     # only kept for members disabled by bounce

    report = import_members(store, found.members)
    assert len(report.added) == 3 and report.skipped == []
    m = store.get_member("xxxxxx@examplexxxxxx.org")
    assert (m.display_name, m.bounce_score, m.last_bounce_day, m.last_bounce_at) == (
        "Mat Xxxxx", 1.0, "2015-03-24", 1427155200.0)
    assert store.get_member("xxxxxxx@examplexxxxxx.org").bounce_score == 0.0

    again = import_members(store, found.members)
    assert again.added == [] and {reason for _, reason in again.skipped} == {"already a member"}


def test_delivery_status_case_preserved_and_digest_members(store, monkeypatch):
    # A pickle shaped like Mailman 2.1's, written here with a class that has _BounceInfo's name.
    module = types.ModuleType("Mailman.Bouncer")

    class _BounceInfo:
        pass
    _BounceInfo.__module__, _BounceInfo.__qualname__ = "Mailman.Bouncer", "_BounceInfo"
    module._BounceInfo = _BounceInfo
    monkeypatch.setitem(sys.modules, "Mailman", types.ModuleType("Mailman"))
    monkeypatch.setitem(sys.modules, "Mailman.Bouncer", module)
    info = _BounceInfo()
    info.__dict__.update(member="off@example.com", score=5.0, date=(2027, 1, 15), noticesleft=2,
                         lastnotice=(2027, 1, 16), cookie="c0ffee")
    conf = {
        "members": {"mixed@example.com": "MiXed@Example.com", "off@example.com": 0, "user@example.com": 0,
                    "admin@example.com": 0, "legacy@example.com": 0, "opt@example.com": 0},
        "digest_members": {"digest@example.com": 0},
        "delivery_status": {"off@example.com": (4, 1.8e9), "user@example.com": (2, 1.8e9),
                            "admin@example.com": (3, 1.8e9), "legacy@example.com": (1, 1.8e9)},
        "user_options": {"opt@example.com": 1 | 256},
        "bounce_info": {"off@example.com": info},
        "usernames": {}, "real_name": "T", "host_name": "h.example", "preferred_language": "en",
    }
    found = read_config(pickle.dumps(conf, protocol=1))
    status = {m.address: m.delivery_status for m in found.members}
    assert status == {"MiXed@Example.com": "enabled", "off@example.com": "by_bounce", "user@example.com": "by_user",
                      "admin@example.com": "by_admin", "legacy@example.com": "by_admin",
                      "opt@example.com": "by_user", "digest@example.com": "enabled"}
    assert [m.address for m in found.members if m.digest] == ["digest@example.com"]

    import_members(store, found.members)
    off = store.get_member("off@example.com")
    assert (off.delivery_status, off.bounce_score, off.notices_left, off.last_bounce_day) == (
        "by_bounce", 5.0, 2, "2027-01-15")
    assert off.last_notice_at == calendar.timegm((2027, 1, 16, 0, 0, 0))
    assert off.re_enable_token is None   # Mailman's cookie is not a pending record here
    assert store.get_member("MiXed@example.com").address == "MiXed@Example.com"
    # Mailman's own lower-cased key finds the member too (matched without case, as Mailman did)
    assert store.get_member("mixed@example.com").address == "MiXed@Example.com"


@pytest.mark.parametrize("payload", [
    pickle.dumps({"members": {}, "hook": os.system}, protocol=0),
    b"cos\nsystem\n(S'true'\ntR.",
    b"c__builtin__\neval\n(S'1'\ntR.",
    pickle.dumps({"members": {}, "x": types.SimpleNamespace(a=1)}, protocol=2),
])
def test_refuses_foreign_classes(payload):
    with pytest.raises(MailmanImportError, match="refusing to load"):
        load_config(payload)


@pytest.mark.parametrize("payload", [b"", b"(dp1\n", pickle.dumps([1, 2], protocol=1),
                                     pickle.dumps({"no": "members"}, protocol=1),
                                     # protocol 5 BYTEARRAY8 claiming 16 GiB: refused, not allocated
                                     b"\x80\x05\x96" + (1 << 34).to_bytes(8, "little") + b"x."])
def test_refuses_garbage(payload):
    with pytest.raises(MailmanImportError):
        load_config(payload)


def test_random_bytes_never_escape_as_other_errors(mailman):
    rng = random.Random(2026)
    real = mailman("config-with-instances.pck")
    for _ in range(3000):
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 100)))
        cut = rng.randrange(len(real))
        mangled = real[:cut] + bytes([rng.randrange(256)]) + real[cut + 1:]   # one byte of a real file
        for data in (junk, mangled):
            try:
                read_config(data)
            except MailmanImportError:
                pass
