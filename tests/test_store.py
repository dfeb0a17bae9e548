"""The SQLite list store in one process: members, evidence, events, pending records, expiry."""
from __future__ import annotations

import gc
import os
import shutil
import sqlite3
import subprocess
import sys

import psycopg
import pytest

from listgate import clock
from listgate.store import (AlreadyMember, BounceEvent, DigestState, NotAMember, StoreError, StoreUnavailable, UnknownEvent, UnknownToken,
                            close_all, open_store, store_path)
from listgate.store.common import EVIDENCE_KEEP, EVIDENCE_MAX_BYTES
from listgate.store.sqlite import SQLiteStore
from listgate.store.sqlite_schema import MIGRATIONS, SCHEMA_VERSION
from listgate.store.tokens import is_token

from conftest import BOTH_BACKENDS

LIST = "demo@lists.example.org"
T0 = 1_800_000_000.0


@pytest.fixture
def store(site):
    clock.freeze(T0)
    yield open_store(site, LIST)
    close_all()


def test_open_store_layout_and_pragmas(site, store):
    path = os.path.join(site.state_dir, "lists", f"{LIST}.db")
    assert store_path(site, "DEMO@Lists.Example.Org") == path and os.path.exists(path)
    assert open_store(site, "Demo@lists.example.org") is store
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    with pytest.raises(KeyError):
        open_store(site, "nosuch@lists.example.org")


@BOTH_BACKENDS
def test_closed_store_is_reopened_by_open_store(site, store):
    store.add_member("a@example.com")
    store.close()
    with pytest.raises(StoreUnavailable):
        store.members()
    again = open_store(site, LIST)
    assert again is not store and [m.key for m in again.members()] == ["a@example.com"]


def test_newer_schema_is_refused(site, store):
    path = store.path
    close_all()
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreUnavailable, match="newer"):
        open_store(site, LIST)


@BOTH_BACKENDS
def test_members_keep_typed_address_and_match_without_case(site, store):
    m = store.add_member("<Jane.Doe@Example.COM>", "Jane Doe")
    assert (m.address, m.key, m.display_name, m.subscribed_at) == ("Jane.Doe@Example.COM", "Jane.Doe@example.com",
                                                                     "Jane Doe", T0)
    assert store.get_member("Jane.Doe@EXAMPLE.com").address == "Jane.Doe@Example.COM"
    with pytest.raises(AlreadyMember):
        store.add_member("Jane.Doe@example.com")
    for bad in ("no-at-sign", "a@", "@b.example", "two words@example.com", "", "a@b@c"):
        with pytest.raises(ValueError):
            store.add_member(bad)
    assert store.get_member("not an address") is None
    with pytest.raises(ValueError):
        store.add_member("x@example.com", status="sleeping")
    # has_member: the posting rule's question, same keys as get_member
    store.add_member("off@example.com", status="by_bounce")
    for address, expected in [("Jane.Doe@EXAMPLE.com", True), ("<Jane.Doe@example.com>", True),
                              ("jane.doe@example.com", True), ("JANE.DOE@example.com", True),
                              ("jane.doe2@example.com", False), ("off@example.com", True),
                              ("nobody@example.com", False), ("not an address", False), ("", False),
                              ("Jane.Doe\udcff@example.com", False)]:
        assert store.has_member(address) is expected, address
        assert (store.get_member(address) is not None) is expected, address


@BOTH_BACKENDS
def test_members_order_status_filter_save_remove(site, store):
    store.add_member("b@example.com")
    store.add_member("a@example.com")
    store.add_member("c@example.com", status="by_admin")
    assert [m.key for m in store.members()] == ["a@example.com", "b@example.com", "c@example.com"]
    assert [m.key for m in store.members("by_admin")] == ["c@example.com"]
    assert store.get_member("c@example.com").status_changed_at == T0

    m = store.get_member("a@example.com")
    m.bounce_score, m.last_bounce_day, m.last_bounce_at = 2.5, "2027-01-15", T0 + 5
    m.delivery_status, m.notices_left, m.last_notice_at, m.re_enable_token = "by_bounce", 3, T0 + 6, "tok"
    store.save_member(m)
    assert store.get_member("a@example.com") == m

    gone = store.remove_member("a@EXAMPLE.COM")
    assert gone == m and store.get_member("a@example.com") is None
    with pytest.raises(NotAMember):
        store.remove_member("a@example.com")
    with pytest.raises(NotAMember):
        store.save_member(m)


@BOTH_BACKENDS
def test_change_address_moves_bounce_info_and_evidence(site, store):
    m = store.add_member("old@example.com", "Old")
    m.bounce_score = 3
    store.save_member(m)
    store.add_evidence("old@example.com", b"bounce", T0)
    store.add_member("taken@example.com")
    with pytest.raises(AlreadyMember):
        store.change_address("old@example.com", "taken@Example.com")
    with pytest.raises(NotAMember):
        store.change_address("nobody@example.com", "new@example.com")
    with pytest.raises(ValueError):
        store.change_address("old@example.com", "not-an-address")
    moved = store.change_address("old@example.com", "New@Example.com")
    assert (moved.address, moved.key, moved.bounce_score) == ("New@Example.com", "New@example.com", 3)
    assert store.get_member("old@example.com") is None
    assert store.get_member("New@EXAMPLE.com").display_name == "Old"
    assert store.evidence("New@example.com") == [(T0, b"bounce")]
    # A change of case only is allowed (same member).
    assert store.change_address("New@example.com", "New@EXAMPLE.com").address == "New@EXAMPLE.com"
    # The local part matches without case by default (Mailman's rule): a new spelling is the member
    # too, and may become the typed address, evidence and all.
    assert store.get_member("new@example.com").display_name == "Old"
    assert store.change_address("NEW@example.com", "new@example.com").key == "new@example.com"
    assert store.evidence("New@example.com") == [(T0, b"bounce")]
    with pytest.raises(AlreadyMember):
        store.change_address("new@example.com", "TAKEN@example.com")


def case_sensitive(site, value: bool = True):
    """``site`` reloaded with the demo list's ``case_sensitive_local_parts`` set to ``value``."""
    from listgate import config
    path = os.path.join(os.path.dirname(site.path), "lists.d", "demo.yaml")
    with open(path, encoding="utf-8") as fh:
        lines = [line for line in fh if not line.startswith("case_sensitive_local_parts:")]
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(lines + [f"case_sensitive_local_parts: {'true' if value else 'false'}\n"])
    return config.load(site.path)


@BOTH_BACKENDS
def test_addresses_differing_only_in_case_are_one_member_keeping_the_typed_case(site, store):
    alice = store.add_member("Alice@EXAMPLE.com")
    with pytest.raises(AlreadyMember):
        store.add_member("alice@example.com")
    assert [m.address for m in store.members()] == ["Alice@EXAMPLE.com"]     # delivered as typed
    assert store.get_member("ALICE@example.COM").key == alice.key == "Alice@example.com"
    assert store.same_address("aLiCe@Example.com", alice.address) and not store.same_address("bob@example.com", "x")
    # events and evidence about any spelling are filed under the member
    store.add_event(BounceEvent(at=T0, address="ALICE@example.com", bounce_class="hard", action="scored"))
    store.add_evidence("alice@example.com", b"bounce", T0)
    assert [e.address for e in store.events("Alice@Example.com")] == ["Alice@example.com"]
    assert store.evidence(alice.key) == [(T0, b"bounce")]
    assert store.remove_member("alice@EXAMPLE.COM").key == alice.key and store.members() == []


@BOTH_BACKENDS
def test_a_case_sensitive_list_keeps_two_spellings_and_switching_the_rule_strands_nobody(site, store):
    sensitive = open_store(case_sensitive(site), LIST)
    assert sensitive is store and store.case_sensitive_local
    store.add_member("Alice@example.com")
    clock.freeze(T0 + 10)
    store.add_member("alice@example.com")
    store.add_member("Bob@example.com")
    assert [m.key for m in store.members()] == ["Alice@example.com", "Bob@example.com", "alice@example.com"]
    assert store.get_member("ALICE@example.com") is None and store.get_member("bob@example.com") is None
    assert store.get_member("alice@EXAMPLE.com").subscribed_at == T0 + 10
    assert store.case_duplicates() == [] and not store.same_address("Alice@example.com", "alice@example.com")
    # back to the default rule: every member is still found, each spelling first, else the oldest
    assert open_store(case_sensitive(site, False), LIST) is store and not store.case_sensitive_local
    assert store.get_member("bob@example.com").key == "Bob@example.com"
    assert store.get_member("alice@example.com").subscribed_at == T0 + 10
    assert store.get_member("Alice@example.com").subscribed_at == T0
    assert store.get_member("ALICE@example.com").subscribed_at == T0
    with pytest.raises(AlreadyMember):
        store.add_member("ALICE@example.com")
    assert [[m.key for m in group] for group in store.case_duplicates()] == [["Alice@example.com",
                                                                              "alice@example.com"]]
    store.remove_member("Alice@example.com")            # the owner keeps one: spelt exactly
    assert store.get_member("ALICE@example.com").key == "alice@example.com" and store.case_duplicates() == []


@BOTH_BACKENDS
def test_add_members_in_bulk_skips_existing_and_repeated_keys(site, store, monkeypatch):
    from listgate.store import postgres
    from listgate.store.common import new_member
    monkeypatch.setattr(postgres, "ADD_BATCH", 3)               # several batches in one call
    store.add_member("Old@Example.com", "Old")
    batch = [new_member(f"m{i}@example.com", f"M\x00 {i}") for i in range(7)]
    batch[2].bounce_score, batch[2].delivery_mode, batch[2].moderated = 1.5, "plain_digest", True
    batch[4].delivery_status, batch[4].notices_left, batch[4].status_changed_at = "by_bounce", 2, T0 - 9
    again, old = new_member("m1@EXAMPLE.com"), new_member("Old@example.com", "New")
    added = store.add_members([*batch[:4], again, old, *batch[4:]])
    assert added == batch and all(a is b for a, b in zip(added, batch))
    assert [m.key for m in store.members()] == ["Old@example.com"] + [f"m{i}@example.com" for i in range(7)]
    assert [store.get_member(m.key) for m in batch] == batch
    assert batch[0].display_name == "M\ufffd 0"                  # text every backend holds
    assert store.get_member("Old@EXAMPLE.com").display_name == "Old"     # left as it was
    assert store.add_members(batch) == [] and store.add_members([]) == []
    bad = new_member("x@example.com")
    bad.delivery_mode = "weekly"
    with pytest.raises(ValueError):
        store.add_members([new_member("y@example.com"), bad])
    assert not store.has_member("y@example.com")
    with pytest.raises(ValueError):
        new_member("nul\x00@example.com")
    with pytest.raises(ValueError):
        new_member("a@example.com", status="sleeping")


@BOTH_BACKENDS
def test_evidence_is_capped_in_count_and_size(site, store):
    store.add_member("a@example.com")
    for i in range(EVIDENCE_KEEP + 3):
        store.add_evidence("a@example.com", f"bounce {i}".encode(), T0 + i)
    big = b"X" * (EVIDENCE_MAX_BYTES * 2)
    store.add_evidence("a@Example.com", big, T0 + 100)
    kept = store.evidence("a@example.com")
    assert len(kept) == EVIDENCE_KEEP
    assert [at for at, _ in kept] == [T0 + 100] + [T0 + i for i in range(EVIDENCE_KEEP + 2, 3, -1)]
    newest = kept[0][1]
    assert len(newest) <= EVIDENCE_MAX_BYTES and newest.startswith(b"XXXX") and b"truncated" in newest
    store.remove_member("a@example.com")
    assert store.evidence("a@example.com") == []


@BOTH_BACKENDS
def test_event_by_id_and_strike(site, store):
    first = store.add_event(BounceEvent(at=T0, address="bob@example.com", bounce_class="hard", status="5.1.1",
                                        action="scored", detail="user unknown"))
    other = store.add_event(BounceEvent(at=T0 + 1, address="bob@example.com", bounce_class="hard",
                                        action="scored"))
    assert store.event(first).detail == "user unknown" and store.event(first).id == first
    assert store.event(other + 1000) is None and store.event("1") is None and store.event(-1) is None
    was = store.strike_event(first)
    assert was.action == "scored"
    struck = store.event(first)
    assert struck.action == "struck" and struck.detail == "[struck, was scored] user unknown"
    assert store.event(other).action == "scored"
    with pytest.raises(UnknownEvent):
        store.strike_event(first)          # already struck
    with pytest.raises(UnknownEvent):
        store.strike_event(other + 1000)


@BOTH_BACKENDS
def test_events_append_only_filters_newest_first(site, store):
    ids = [store.add_event(BounceEvent(at=T0 + i, address="Bob@Example.com" if i % 2 else "eve@example.com",
                                       bounce_class="hard", status="5.1.1", attribution="verp",
                                       message_id=f"<m{i}@x>", action="scored", detail="user unknown"))
           for i in range(6)]
    assert ids == sorted(ids) and len(set(ids)) == 6
    bob = store.events("Bob@EXAMPLE.COM")
    assert [e.at for e in bob] == [T0 + 5, T0 + 3, T0 + 1]
    assert bob[0].address == "Bob@example.com" and bob[0].status == "5.1.1" and bob[0].id == ids[5]
    assert [e.at for e in store.events(since=T0 + 3)] == [T0 + 5, T0 + 4, T0 + 3]
    assert len(store.events(limit=2)) == 2
    # Events about non-members, or with no address at all, are kept too.
    store.add_event(BounceEvent(at=T0 + 9, address=None, bounce_class="unknown", action="forwarded"))
    assert store.events(limit=1)[0].address is None


@BOTH_BACKENDS
def test_pending_lifecycle_and_expiry_with_controlled_clock(site, store):
    sub = store.add_pending("subscription", {"address": "a@example.com", "name": "Ä"}, 3 * 86400)
    probe = store.add_pending("probe", {"member": "b@example.com"}, 10 * 86400)
    assert is_token(sub.token) and sub.token != probe.token
    assert (sub.created, sub.expires) == (T0, T0 + 3 * 86400)
    assert store.peek_pending(sub.token) == sub and store.peek_pending(sub.token) == sub  # peek keeps it
    assert [r.token for r in store.pending()] == [sub.token, probe.token]
    assert [r.token for r in store.pending("probe")] == [probe.token]

    with pytest.raises(UnknownToken):
        store.confirm_pending(sub.token, "probe")       # wrong type: not consumed
    assert store.confirm_pending(sub.token, ("unsubscription", "subscription")).payload["name"] == "Ä"
    with pytest.raises(UnknownToken):
        store.confirm_pending(sub.token)

    clock.advance(9 * 86400)
    assert store.repend(probe.token, 5 * 86400).expires == T0 + 14 * 86400
    clock.advance(5 * 86400 - 1)
    assert store.peek_pending(probe.token) is not None and store.evict_expired() == []
    clock.advance(1)
    assert store.peek_pending(probe.token) is None and store.pending() == []
    with pytest.raises(UnknownToken):
        store.confirm_pending(probe.token)
    with pytest.raises(UnknownToken):
        store.repend(probe.token, 100)
    evicted = store.evict_expired()
    assert [r.token for r in evicted] == [probe.token] and evicted[0].payload == {"member": "b@example.com"}
    assert store.evict_expired() == []


@BOTH_BACKENDS
def test_pending_rejects_bad_type_and_payload(site, store):
    with pytest.raises(ValueError):
        store.add_pending("lottery", {}, 10)
    with pytest.raises(ValueError):
        store.add_pending("probe", {"x": object()}, 10)
    assert store.pending() == []


@BOTH_BACKENDS
def test_remember_respects_ttl(site, store):
    assert store.remember("message-id", "<a@x>", 60) is True
    assert store.remember("message-id", "<a@x>", 60) is False
    assert store.remember("incident", "<a@x>", 60) is True     # kinds are separate
    clock.advance(60)
    assert store.remember("message-id", "<a@x>", 60) is True


@BOTH_BACKENDS
def test_remember_with_an_owner_is_fresh_again_for_that_owner_only(site, store):
    # the runner passes the qfile id: re-processing one qfile after a crash is not its own duplicate
    assert store.remember("accepted", "k", 60, owner="q1") is True
    assert store.remember("accepted", "k", 60, owner="q1") is True
    assert store.remember("accepted", "k", 60, owner="q2") is False
    assert store.remember("accepted", "k", 60) is False
    clock.advance(50)
    assert store.remember("accepted", "k", 60, owner="q1") is True     # and its ttl starts again
    clock.advance(20)
    assert store.remember("accepted", "k", 60, owner="q2") is False
    clock.advance(40)
    assert store.remember("accepted", "k", 60, owner="q2") is True     # expired: the new owner's now
    assert store.remember("accepted", "k", 60, owner="q1") is False


@BOTH_BACKENDS
def test_remember_without_an_owner_never_matches_one(site, store):
    assert store.remember("accepted", "k", 60) is True
    assert store.remember("accepted", "k", 60) is False
    assert store.remember("accepted", "k", 60, owner="q1") is False    # no owner is nobody's
    clock.advance(60)
    assert store.remember("accepted", "k", 60, owner="q1") is True
    assert store.remember("accepted", "k", 60) is False                # None is never "the same owner"


def test_a_new_store_logs_one_line_an_old_one_each_migration(tmp_path, caplog):
    with caplog.at_level("INFO", logger="listgate.store"):
        SQLiteStore(str(tmp_path / "new.db"), "x@example.org").close()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("store_")]
    assert len(lines) == 1 and lines[0].startswith("store_created ") and f"schema={SCHEMA_VERSION}" in lines[0]
    caplog.clear()
    path = str(tmp_path / "old.db")
    with sqlite3.connect(path, isolation_level=None) as conn:    # a file written by the version 1 code
        for statement in MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 1")
    with caplog.at_level("INFO", logger="listgate.store"):
        SQLiteStore(path, "x@example.org").close()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("store_")]
    assert [ln.split()[0] for ln in lines] == ["store_migrated"] * (SCHEMA_VERSION - 1)
    assert f"version={SCHEMA_VERSION}" in lines[-1]


def test_version_1_database_migrates_and_its_facts_have_no_owner(tmp_path):
    path = str(tmp_path / "old.db")
    with sqlite3.connect(path, isolation_level=None) as conn:    # a file written by the version 1 code
        for statement in MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 1")
        conn.execute("INSERT INTO remembered (kind, key, expires) VALUES ('accepted', 'k', ?)", (T0 + 60,))
    clock.freeze(T0)
    store = SQLiteStore(path, "x@example.org")
    try:
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
            assert conn.execute("SELECT kind, key, owner FROM remembered").fetchall() == [("accepted", "k", None)]
        assert store.remember("accepted", "k", 60, owner="q1") is False
        assert store.remember("accepted", "k", 60) is False
        clock.advance(60)
        assert store.remember("accepted", "k", 60, owner="q1") is True
        assert store.remember("accepted", "k", 60, owner="q1") is True
    finally:
        store.close()


def test_a_version_5_store_holding_two_spellings_keeps_both_and_check_names_them(site):
    path = store_path(site, LIST)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with sqlite3.connect(path, isolation_level=None) as conn:    # a file written by the version 5 code
        for statements in MIGRATIONS[:5]:
            for statement in statements:
                conn.execute(statement)
        conn.execute("PRAGMA user_version = 5")
        conn.executemany("INSERT INTO members (key, address, subscribed_at, bounce_score) VALUES (?, ?, ?, ?)",
                         [("alice@example.com", "alice@example.com", T0 + 10, 2.0),
                          ("Alice@example.com", "Alice@Example.com", T0, 1.0),
                          ("Bob@example.com", "Bob@example.com", T0, 0.0)])
        conn.execute("INSERT INTO evidence (member_key, at, message) VALUES ('alice@example.com', ?, x'2a')", (T0,))
    clock.freeze(T0)
    try:
        store = open_store(site, LIST)
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
            assert conn.execute("SELECT key, folded, bounce_score FROM members ORDER BY key").fetchall() == [
                ("Alice@example.com", "alice@example.com", 1.0), ("Bob@example.com", "bob@example.com", 0.0),
                ("alice@example.com", "alice@example.com", 2.0)]
        # nothing lost: each spelling finds its own row, any other the oldest subscription
        assert store.get_member("alice@example.com").bounce_score == 2.0
        assert store.get_member("Alice@example.com").bounce_score == 1.0
        assert store.get_member("ALICE@EXAMPLE.COM").bounce_score == 1.0
        assert store.get_member("bob@example.com").address == "Bob@example.com"
        assert store.evidence("alice@example.com") == [(T0, b"*")]
        out = subprocess.run([sys.executable, "-m", "listgate.cli", "-c", site.path, "check"],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        assert (f"{LIST}: warning: one address, 2 members (Alice@Example.com, alice@example.com)"
                in out.stderr), out.stderr
    finally:
        close_all()


@BOTH_BACKENDS
def test_transaction_rolls_back_and_nested_savepoint(site, store):
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.add_member("a@example.com")
            raise RuntimeError("boom")
    assert store.members() == []
    with store.transaction():
        store.add_member("b@example.com")
        with pytest.raises(AlreadyMember):
            with store.transaction():
                store.add_member("c@example.com")
                store.add_member("b@example.com")
        store.add_member("d@example.com")
    assert [m.key for m in store.members()] == ["b@example.com", "d@example.com"]


def test_full_database_is_store_unavailable_and_loses_nothing(store):
    store.add_member("a@example.com")
    with store._lease() as slot:            # every call below runs on this one connection
        conn = slot.conn
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        # SQLITE_FULL for real: cap this connection's file size just above what is used now.
        conn.execute(f"PRAGMA max_page_count = {pages + 2}")
        with pytest.raises(StoreUnavailable):
            with store.transaction():
                store.add_member("b@example.com")
                store.add_evidence("b@example.com", os.urandom(200_000), T0)
        assert [m.key for m in store.members()] == ["a@example.com"] and store.evidence("b@example.com") == []
        conn.execute("PRAGMA max_page_count = 1073741823")
    store.add_member("b@example.com")
    assert len(store.members()) == 2


def test_read_only_database_is_store_unavailable(store):
    store.add_member("a@example.com")
    with store._lease() as slot:            # every call below runs on this one connection
        slot.conn.execute("PRAGMA query_only = 1")  # SQLITE_READONLY on every write, as on a read-only mount
        try:
            with pytest.raises(StoreUnavailable, match="readonly"):
                store.add_event(BounceEvent(at=T0, address="a@example.com", bounce_class="hard"))
            with pytest.raises(StoreUnavailable):
                store.remember("k", "v", 1)
            assert store.get_member("a@example.com") is not None        # reads still work
        finally:
            slot.conn.execute("PRAGMA query_only = 0")
    assert store.events() == []


def test_unopenable_database_is_store_unavailable(tmp_path):
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(StoreUnavailable):
        SQLiteStore(str(tmp_path / "dir.db"), "x@example.org")
    (tmp_path / "junk.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreUnavailable):
        SQLiteStore(str(tmp_path / "junk.db"), "x@example.org")


@BOTH_BACKENDS
def test_threads_share_one_store_safely(site, store):
    import threading
    store.add_member("t@example.com")
    errors = []

    def bump():
        try:
            for _ in range(25):
                with store.transaction():
                    m = store.get_member("t@example.com")
                    m.bounce_score += 1
                    store.save_member(m)
        except Exception as exc:  # reported below; a thread's exception would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=bump) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == [] and store.get_member("t@example.com").bounce_score == 200


def _in_thread(fn, *args):
    """``fn(*args)`` on a new thread (as libmilter runs each SMTP session); its result, or its exception raised."""
    import threading
    out = {}

    def run():
        try:
            out["value"] = fn(*args)
        except BaseException as exc:  # re-raised below: a thread's exception would otherwise vanish
            out["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    assert not thread.is_alive()
    if "error" in out:
        raise out["error"]
    return out["value"]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_short_lived_threads_one_after_another_share_one_connection(store):
    store.add_member("a@example.com")
    fds = _open_fds()
    for i in range(300):
        assert _in_thread(store.get_member, "a@example.com").key == "a@example.com"
        if i % 30 == 0:
            _in_thread(store.add_event, BounceEvent(at=T0, address="a@example.com", bounce_class="soft"))
    assert len(store._idle) == 1
    assert _open_fds() - fds < 2            # not one more connection (each is 2 fds: the file and its WAL)
    assert len(store.events()) == 10


def test_overlapping_threads_open_no_more_connections_than_overlap(store):
    import threading
    store.add_member("a@example.com")
    fds = _open_fds()
    width = 6
    for _ in range(5):  # five waves of `width` threads holding a connection at the same time
        barrier = threading.Barrier(width)

        def session():
            with store._lease():                # held across the barrier: all `width` overlap
                barrier.wait(30)
                return store.get_member("a@example.com")

        threads = [threading.Thread(target=session) for _ in range(width)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(store._idle) == width
    assert _open_fds() - fds <= 2 * (width - 1)  # the store had one connection before (each: db and WAL)


@BOTH_BACKENDS
def test_transaction_keeps_one_connection_and_other_threads_see_only_commits(site, store):
    import threading
    store.add_member("a@example.com")
    inside, finish = threading.Event(), threading.Event()
    conns, seen = [], {}

    def writer():
        with store.transaction():
            with store._lease() as slot:
                conns.append(slot.conn)
            store.add_member("new@example.com")
            m = store.get_member("a@example.com")
            m.bounce_score = 5
            store.save_member(m)
            with store.transaction():
                with store._lease() as slot:
                    conns.append(slot.conn)
                store.add_event(BounceEvent(at=T0, address="a@example.com", bounce_class="hard"))
            seen["own writes"] = (store.get_member("new@example.com") is not None,
                                  store.get_member("a@example.com").bounce_score, len(store.events()))
            inside.set()
            assert finish.wait(30)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert inside.wait(30)
        # this thread: another connection, which sees only what is committed
        assert store.get_member("new@example.com") is None
        assert store.get_member("a@example.com").bounce_score == 0 and store.events() == []
        assert _in_thread(store.get_member, "new@example.com") is None
    finally:
        finish.set()
        thread.join(60)
    assert len(conns) == 2 and conns[0] is conns[1]
    assert seen["own writes"] == (True, 5, 1)
    assert store.get_member("new@example.com") is not None and store.get_member("a@example.com").bounce_score == 5
    assert _in_thread(lambda: len(store.events())) == 1


def test_a_failing_transaction_gives_its_connection_back(store):
    def fail():
        with store.transaction():
            store.add_member("gone@example.com")
            raise RuntimeError("boom")

    for _ in range(3):
        with pytest.raises(RuntimeError):
            _in_thread(fail)
    assert len(store._idle) == 1 and not store._idle[0].conn.in_transaction and store._idle[0].depth == 0
    store.add_member("b@example.com")       # the write lock is free
    assert [m.key for m in store.members()] == ["b@example.com"]


def test_an_abandoned_transaction_is_rolled_back_without_touching_another_threads_lease(store):
    import gc
    abandoned = {}

    def begin_and_leave():  # enters a transaction and never leaves it: the thread just ends
        cm = store.transaction()
        cm.__enter__()
        store.add_member("ghost@example.com")
        abandoned["cm"] = cm

    _in_thread(begin_and_leave)
    with store._lease() as mine:
        abandoned.clear()
        gc.collect()                        # the suspended block is finished here, on this thread
        assert store._local.held is mine
        assert store.get_member("ghost@example.com") is None
    store.add_member("after@example.com")   # the abandoned write lock was released


def test_close_lets_a_leased_connection_finish_its_transaction(store):
    import threading
    inside, finish = threading.Event(), threading.Event()
    fds = _open_fds()

    def writer():
        with store.transaction():
            store.add_member("late@example.com")
            inside.set()
            assert finish.wait(30)
            store.add_member("later@example.com")       # still its own connection, after close()

    thread = threading.Thread(target=writer)
    thread.start()
    assert inside.wait(30)
    store.close()
    with pytest.raises(StoreUnavailable):
        store.get_member("late@example.com")
    finish.set()
    thread.join(60)
    assert _open_fds() < fds                # the leased one closed when its block ended
    again = SQLiteStore(store.path, store.list_key)
    try:
        assert [m.key for m in again.members()] == ["late@example.com", "later@example.com"]
    finally:
        again.close()


@BOTH_BACKENDS
def test_forked_child_opens_its_own_connection(site, store):
    store.add_member("parent@example.com")
    pid = os.fork()
    if pid == 0:  # child: must not reuse the parent's SQLite connection
        code = 1
        try:
            child = open_store(site, LIST)
            child.add_member("child@example.com")
            code = 0 if child is not store and child.get_member("parent@example.com") else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert [m.key for m in store.members()] == ["child@example.com", "parent@example.com"]
    store.add_member("after@example.com")


@BOTH_BACKENDS
def test_reads_follow_this_processs_own_writes_and_give_fresh_copies(site, store):
    assert store.get_member("a@example.com") is None and store.get_member("a@example.com") is None
    store.add_member("a@example.com")
    assert store.get_member("a@example.com").bounce_score == 0
    m = store.get_member("a@example.com")
    m.bounce_score = 3.5                     # the caller's copy: not the store's
    assert store.get_member("a@example.com").bounce_score == 0
    store.save_member(m)
    assert store.get_member("a@example.com").bounce_score == 3.5
    store.change_address("a@example.com", "b@example.com")
    assert store.get_member("a@example.com") is None and store.get_member("b@example.com").bounce_score == 3.5
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.remove_member("b@example.com")
            assert store.get_member("b@example.com") is None        # inside: its own uncommitted write
            raise RuntimeError("boom")
    assert store.get_member("b@example.com") is not None            # rolled back
    store.remove_member("b@example.com")
    assert store.get_member("b@example.com") is None

    rec = store.add_pending("probe", {"member": "b@example.com"}, 60)
    assert store.peek_pending(rec.token) == rec
    store.peek_pending(rec.token).payload["member"] = "changed"     # the caller's copy again
    assert store.peek_pending(rec.token).payload == {"member": "b@example.com"}
    clock.advance(30)
    store.repend(rec.token, 60)
    assert store.peek_pending(rec.token).expires == T0 + 90
    clock.advance(60)
    assert store.peek_pending(rec.token) is None                    # expiry needs no write
    clock.advance(-1)
    assert store.peek_pending(rec.token) is not None
    store.confirm_pending(rec.token)
    assert store.peek_pending(rec.token) is None


def test_reads_see_other_connections_commits(store):
    import threading
    assert store.get_member("x@example.com") is None
    # another connection in this process: a plain sqlite3 one, then another thread's own
    with sqlite3.connect(store.path, isolation_level=None) as other:
        other.execute("INSERT INTO members (key, address, subscribed_at, folded) VALUES ('x@example.com', 'x@example.com', 0, 'x@example.com')")
    assert store.get_member("x@example.com").address == "x@example.com"
    thread = threading.Thread(target=store.remove_member, args=("x@example.com",))
    thread.start()
    thread.join(30)
    assert store.get_member("x@example.com") is None
    rec = store.add_pending("probe", {"member": "x@example.com"}, 60)
    assert store.peek_pending(rec.token) is not None
    thread = threading.Thread(target=store.confirm_pending, args=(rec.token,))
    thread.start()
    thread.join(30)
    assert store.peek_pending(rec.token) is None


@BOTH_BACKENDS
def test_pending_payloads_are_fresh_objects(site, store):
    flat = store.add_pending("probe", {"member": "a@example.com", "n": 1, "ok": True, "none": None}, 60)
    nested = store.add_pending("held_message", {"meta": {"x": [1]}}, 60)
    store.peek_pending(flat.token).payload["member"] = "changed"
    store.pending("probe")[0].payload["n"] = 2
    assert store.peek_pending(flat.token).payload == {"member": "a@example.com", "n": 1, "ok": True, "none": None}
    assert store.pending("probe")[0].payload == flat.payload
    store.peek_pending(nested.token).payload["meta"]["x"].append(2)
    assert store.peek_pending(nested.token).payload == {"meta": {"x": [1]}}


@BOTH_BACKENDS
def test_forked_child_uses_a_parent_store_object_through_its_own_connection(site, store):
    store.add_member("parent@example.com")
    with store._lease() as slot:
        parent_conn = slot.conn
        pid = os.fork()                     # inside the lease: the child inherits it and must not use it
        if pid == 0:
            code = 1
            try:
                ok = store.get_member("parent@example.com") is not None
                with store._lease() as mine:
                    ok = ok and mine.conn is not parent_conn
                store.add_member("child@example.com")
                code = 0 if ok else 2
            finally:
                os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with store._lease() as slot:
        assert slot.conn is parent_conn and store.get_member("child@example.com") is not None


def _commit_elsewhere(path: str, address: str) -> None:
    """``address`` becomes a member, committed by another process."""
    code = f"from listgate.store.sqlite import SQLiteStore; SQLiteStore({path!r}, {LIST!r}).add_member({address!r})"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_store_dropped_unclosed_closes_its_connections(store):
    # its connections are closed when the garbage collector takes them; the last close deletes DB-shm
    path = store.path
    store.close()
    fds = _open_fds()
    dropped = SQLiteStore(path, LIST)
    assert dropped.get_member("a@example.com") is None
    del dropped
    gc.collect()
    assert _open_fds() == fds and not os.path.exists(path + "-shm")
    again = SQLiteStore(path, LIST)
    assert again.get_member("late@example.com") is None
    _commit_elsewhere(path, "late@example.com")
    assert again.get_member("late@example.com") is not None
    again.close()


def _dms_lock_holder(shm_path: str) -> int | None:
    """The pid holding a lock on DB-shm's "DMS" byte (120 + SQLITE_SHM_NLOCK, unix VFS), asked from another process."""
    code = ("import fcntl, os, struct, sys\n"
            "fd = os.open(sys.argv[1], os.O_RDWR)\n"
            "got = fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack('hhqqi', fcntl.F_WRLCK, 0, 128, 1, 0))\n"
            "kind, _, _, _, pid = struct.unpack('hhqqi', got)\n"
            "print(pid if kind != fcntl.F_UNLCK else 0)\n")
    out = subprocess.run([sys.executable, "-c", code, shm_path], capture_output=True, text=True, check=True,
                         timeout=60).stdout
    return int(out) or None


def test_closing_a_store_opened_under_another_name_keeps_the_others_locks(store, tmp_path):
    # two names of one file: closing one store's connections must not drop the locks SQLite
    # holds through the other's (https://www.sqlite.org/howtocorrupt.html section 2.2)
    link = tmp_path / "elsewhere"
    link.symlink_to(os.path.dirname(store.path))
    alias = SQLiteStore(str(link / os.path.basename(store.path)), LIST)
    assert _dms_lock_holder(store.path + "-shm") == os.getpid()
    alias.close()
    assert _dms_lock_holder(store.path + "-shm") == os.getpid()
    store.add_member("still@example.com")
    assert store.get_member("still@example.com") is not None


def test_a_symlinked_database_file_sees_commits_made_through_the_target(store, tmp_path):
    # SQLite follows a symlinked database file, so its DB-shm is next to the target; a stale copy next
    # to the link must not be taken for it
    real = store.path
    store.add_member("a@example.com")
    link = tmp_path / "link.db"
    shutil.copy(real + "-shm", str(link) + "-shm")
    link.symlink_to(real)
    via_link = SQLiteStore(str(link), LIST)
    assert via_link.get_member("late@example.com") is None
    _commit_elsewhere(real, "late@example.com")
    assert via_link.get_member("late@example.com") is not None
    via_link.close()



# -- a store file found corrupt, missing or replaced (issue 20, item 4) ---------------------------

def _good_copy(store, path: str) -> None:
    """A consistent copy of ``store``'s database at ``path`` (SQLite's online backup)."""
    with sqlite3.connect(store.path) as src, sqlite3.connect(path) as dst:
        src.backup(dst)
    dst.close()
    src.close()


def _mv(src: str, dst: str) -> None:
    os.rename(src, dst)                     # what mv(1) does within one file system


def test_a_corrupt_store_file_replaced_by_mv_is_used_again_by_the_same_store(site, store, tmp_path):
    store.add_member("a@example.com")
    good = str(tmp_path / "good.db")
    _good_copy(store, good)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"garbage, not SQLite" * 500)
    _mv(str(junk), store.path)
    for call in (lambda: store.get_member("a@example.com"), lambda: store.has_member("a@example.com"),
                 lambda: store.add_member("b@example.com"), store.members):
        with pytest.raises(StoreUnavailable, match="not a database"):
            call()
        with pytest.raises(StoreUnavailable):
            _in_thread(call)                # another thread's connection too
    _mv(good, store.path)
    assert open_store(site, LIST) is store
    assert store.get_member("a@example.com").key == "a@example.com"
    assert _in_thread(store.has_member, "a@example.com") is True
    store.add_member("b@example.com")
    assert [m.key for m in store.members()] == ["a@example.com", "b@example.com"]
    with sqlite3.connect(store.path) as conn:           # the writes went to the restored file
        assert conn.execute("SELECT count(*) FROM members").fetchone()[0] == 2


def test_a_store_file_corrupted_in_place_is_used_again_once_repaired(store):
    store.add_member("a@example.com")
    with sqlite3.connect(store.path) as other:          # everything into the main file, the WAL emptied
        assert other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
    other.close()
    with open(store.path, "r+b") as fh:
        header = fh.read(100)
        fh.seek(0)
        fh.write(b"garbage!" * 12 + b"junk")            # the same inode, its header destroyed
    with pytest.raises(StoreUnavailable):
        store.get_member("a@example.com")
    with open(store.path, "r+b") as fh:
        fh.write(header)                                # repaired in place
    assert store.get_member("a@example.com") is not None
    store.add_member("b@example.com")


def test_a_connection_that_saw_a_bad_file_is_not_reused(store, tmp_path):
    # SQLite raised on it: the next call opens a fresh connection, which reads the repaired file
    store.add_member("a@example.com")
    with store._lease() as held:
        with pytest.raises(StoreUnavailable):
            with store.transaction():
                held.conn.execute("PRAGMA query_only = 1")
                store.add_member("b@example.com")       # SQLITE_READONLY on this connection
        held.conn.execute("PRAGMA query_only = 0")
    assert held not in store._idle
    store.add_member("b@example.com")       # a fresh connection, without the read-only setting


def test_a_store_file_moved_away_is_unavailable_not_recreated_empty_then_used_again(store, tmp_path):
    store.add_member("a@example.com")
    aside = str(tmp_path / "aside.db")
    _mv(store.path, aside)
    with pytest.raises(StoreUnavailable):
        store.get_member("a@example.com")   # never "no such member": the file is missing
    with pytest.raises(StoreUnavailable):
        store.add_member("b@example.com")
    assert not os.path.exists(store.path)
    _mv(aside, store.path)
    assert store.get_member("a@example.com") is not None
    store.add_member("b@example.com")
    assert len(store.members()) == 2


@BOTH_BACKENDS
def test_driver_errors_never_reach_the_caller(site, store):
    # the store contract's exceptions only: StoreUnavailable for "cannot now", StoreError for the rest
    from listgate.store import StoreError
    with pytest.raises(StoreError) as caught:
        store._query("SELECT * FROM no_such_table")
    assert not isinstance(caught.value, (StoreUnavailable, sqlite3.Error, psycopg.Error))
    assert store.members() == []            # and the store works on


@BOTH_BACKENDS
def test_try_lock_one_holder_per_lease_until_it_expires_or_is_given_up(site, store):
    # periodic tasks: whoever takes ("tasks", period) runs them; the others skip until it expires
    assert store.try_lock("tasks", 3600, "mx1:100") is True
    assert store.try_lock("tasks", 3600, "mx2:200") is False
    assert store.try_lock("other", 60, "mx2:200") is True          # leases are separate by name
    clock.advance(1800)
    assert store.try_lock("tasks", 3600, "mx1:100") is True        # its holder renews it
    clock.advance(3599)
    assert store.try_lock("tasks", 3600, "mx2:200") is False
    clock.advance(1)
    assert store.try_lock("tasks", 3600, "mx2:200") is True        # expired: a crashed holder loses it
    store.unlock("tasks", "mx1:100")                                # not its lease any more: nothing happens
    assert store.try_lock("tasks", 60, "mx1:100") is False
    store.unlock("tasks", "mx2:200")
    assert store.try_lock("tasks", 60, "mx1:100") is True


@BOTH_BACKENDS
def test_delivery_mode_moderation_and_language_are_kept(site, store):
    member = store.add_member("dig@example.com")
    assert (member.delivery_mode, member.moderated, member.language) == ("regular", False, "")
    member.delivery_mode, member.moderated, member.language = "mime_digest", True, "de"
    store.save_member(member)
    again = store.get_member("dig@example.com")
    assert (again.delivery_mode, again.moderated, again.language) == ("mime_digest", True, "de")
    assert again.moderated is True
    member.delivery_mode = "weekly"
    with pytest.raises(ValueError):
        store.save_member(member)
    assert store.get_member("dig@example.com").delivery_mode == "mime_digest"


@BOTH_BACKENDS
def test_restore_pending_keeps_a_mailman_token(site, store):
    from listgate.store import PendingRecord
    token = "0123456789abcdef0123456789abcdef01234567"
    record = PendingRecord(token=token, type="re_enable", payload={"member": "a@example.com"},
                           created=T0 - 100, expires=T0 + 3600)
    assert store.restore_pending(record) is True
    assert store.restore_pending(record) is False            # idempotent: nothing written twice
    seen = store.peek_pending(token)
    assert (seen.type, seen.payload, seen.created, seen.expires) == ("re_enable", record.payload, T0 - 100, T0 + 3600)
    assert store.confirm_pending(token, "re_enable").payload == {"member": "a@example.com"}
    for bad in ("not-a-token", "0123", "ZZ" * 20):
        with pytest.raises(ValueError):
            store.restore_pending(PendingRecord(token=bad, type="probe", payload={}, created=T0, expires=T0 + 1))
    with pytest.raises(ValueError):
        store.restore_pending(PendingRecord(token="f" * 40, type="digest", payload={}, created=T0, expires=T0 + 1))
    assert is_token("a" * 40) and not is_token("a" * 39) and not is_token("g" * 40)


@BOTH_BACKENDS
def test_digest_collection_and_claims(store):
    assert store.digest_state() == DigestState() and store.claim_digest("c1", 1, 1, T0) == []
    assert store.collect_digest("q1", b"Subject: a\n\nx\n", T0)
    assert not store.collect_digest("q1", b"Subject: a\n\nx\n", T0)          # a replay is collected once
    assert store.collect_digest("q2", b"\xff8-bit\n", T0 + 1)
    assert [p.key for p in store.claim_digest("c1", 1, 1, T0 + 5)] == ["q1", "q2"]
    assert store.collect_digest("q3", b"later\n", T0 + 6)
    with pytest.raises(StoreError):
        store.claim_digest("c2", 1, 2, T0 + 7)                             # c1 not sent yet
    assert store.digest_state() == DigestState(1, 1, None, "c1", T0 + 5, False)
    assert [p.message for p in store.digest_posts("c1")] == [b"Subject: a\n\nx\n", b"\xff8-bit\n"]
    assert store.digest_sent("c2") == 0 and store.digest_sent("c1") == 2 and store.digest_sent("c1") == 0
    assert store.digest_state() == DigestState(1, 1, T0 + 5, "c1", T0 + 5, True)
    assert [p.key for p in store.digest_posts()] == ["q3"] and store.digest_posts("c1") == []
    assert [p.claim for p in store.claim_digest("c2", 1, 2, T0 + 8)] == ["c2"]
