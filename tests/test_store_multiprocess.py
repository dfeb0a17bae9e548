"""The list store under several real processes: isolation, serialised updates, racing confirms, crashes."""
from __future__ import annotations

import os
import signal
import sqlite3
import threading

import pytest

from listgate import config
from listgate.store import close_all, open_store
from listgate.store.sqlite import _WalIndex

from conftest import make_site
from store_helpers import Worker, add_second_list, start_all

A = "demo@lists.example.org"
B = "other@lists.example.org"


@pytest.fixture
def site_path(tmp_path):
    site = make_site(tmp_path / "instance")
    add_second_list(site.path, busy_timeout="2s")
    yield site.path
    close_all()


@pytest.fixture
def workers():
    started: list[Worker] = []
    yield started
    for w in started:
        w.stop()


def spawn(workers, *args) -> Worker:
    w = Worker(*args)
    workers.append(w)
    return w


def test_long_write_on_one_list_does_not_delay_another(site_path, workers):
    holder = spawn(workers, "hold", site_path, A)
    holder.expect("locked")

    other = spawn(workers, "write", site_path, B, "20").result(timeout=20)
    assert other["written"] == 20 and other["seconds"] < 2.0, other

    # Control: the lock is real; a writer on the held list gives up after the busy timeout (2s).
    same = spawn(workers, "write", site_path, A, "1").result(timeout=20)
    assert "unavailable" in same and 1.5 < same["seconds"] < 10, same

    assert holder.proc.poll() is None          # still holding all along
    assert holder.result(timeout=10) == {"held": True}
    site = config.load(site_path)
    assert len(open_store(site, B).members()) == 20
    assert [m.key for m in open_store(site, A).members()] == ["holder@example.com"]


def test_concurrent_read_modify_write_equals_serial(site_path, workers, tmp_path):
    site = config.load(site_path)
    store = open_store(site, A)
    store.add_member("target@example.com")
    procs, rounds = 4, 40
    go = str(tmp_path / "go")
    batch = [spawn(workers, "bump", site_path, A, go, str(rounds), f"p{n}") for n in range(procs)]
    start_all(batch, go)
    for w in batch:
        assert w.result(timeout=60) == {"done": rounds}

    member = store.get_member("target@example.com")
    assert member.bounce_score == procs * rounds == member.last_bounce_at
    events = store.events("target@example.com")
    assert len(events) == procs * rounds
    assert sorted(e.detail for e in events) == sorted(f"p{n}:{i}" for n in range(procs) for i in range(rounds))


def test_two_processes_confirming_one_token_exactly_one_wins(site_path, workers, tmp_path):
    store = open_store(config.load(site_path), A)
    tokens = [store.add_pending("subscription", {"address": f"u{i}@example.com"}, 3600).token for i in range(30)]
    go = str(tmp_path / "go")
    racers = [spawn(workers, "confirm", site_path, A, go, *tokens) for _ in range(2)]
    start_all(racers, go)
    first, second = (w.result(timeout=60) for w in racers)
    for token in tokens:
        assert sorted([first[token], second[token]]) == ["unknown", "won"], token
    assert store.pending() == []


def _in_new_thread(fn, *args):
    """``fn(*args)`` on a new thread, as libmilter runs each SMTP session; its result."""
    out = []
    thread = threading.Thread(target=lambda: out.append(fn(*args)))
    thread.start()
    thread.join(30)
    assert out, "the thread failed (its exception is printed above)"
    return out[0]


@pytest.mark.parametrize("read", [lambda fn, *args: fn(*args), _in_new_thread], ids=["one thread", "new threads"])
def test_read_cache_sees_every_commit_of_another_process(site_path, workers, read):
    # get_member/peek_pending answer from a cache guarded by PRAGMA data_version (listgate.store.sqlite);
    # from new threads, every read leases the same pooled connection and its cache
    store = open_store(config.load(site_path), A)
    member, peek = store.get_member, store.peek_pending

    def elsewhere(*ops):
        return spawn(workers, "ops", site_path, A, *ops).result(timeout=30)["done"]

    for _ in range(2):                                  # the second read is a cache hit
        assert read(member, "late@example.com") is None
    elsewhere("add:late@example.com")
    assert read(member, "late@example.com").key == "late@example.com"
    assert read(member, "late@example.com") is not None
    elsewhere("remove:late@example.com")
    assert read(member, "late@example.com") is None
    [token] = elsewhere("probe:late@example.com")
    assert read(peek, token).payload == {"member": "late@example.com"}
    elsewhere(f"confirm:{token}")
    assert read(peek, token) is None
    assert store._open_count == 1


@pytest.mark.parametrize("header", ["read", "unreadable"])
def test_read_cache_asks_sqlite_only_when_the_wal_index_header_moved(site_path, workers, tmp_path, header,
                                                                      monkeypatch):
    # lookups outside a read_batch compare the WAL-index header first (listgate.store.sqlite._WalIndex)
    # and run PRAGMA data_version only when it changed; without a readable header, at every lookup
    store = open_store(config.load(site_path), A)
    [slot] = store._idle
    if header == "unreadable":      # put back at teardown (monkeypatch), before the store is closed
        monkeypatch.setattr(slot, "wal_index", _WalIndex(str(tmp_path / "no-such-shm")))     # never mapped
        assert slot.wal_index.header() is None
    pragmas = []
    slot.conn.set_trace_callback(lambda sql: pragmas.append(sql) if "data_version" in sql else None)

    def elsewhere(*ops):
        return spawn(workers, "ops", site_path, A, *ops).result(timeout=30)["done"]

    lookups = 0
    for cycle in range(3):
        address = f"late{cycle}@example.com"
        for _ in range(3):
            assert store.get_member(address) is None
        elsewhere(f"add:{address}")
        assert store.get_member(address).key == address
        if cycle:                                  # a TRUNCATE checkpoint: the next commit starts the WAL over
            assert elsewhere("checkpoint") == ["checkpointed"]
            assert store.get_member(address) is not None
            lookups += 1
        elsewhere(f"remove:{address}")
        assert store.get_member(address) is None
        lookups += 5
    if header == "read":
        # the first lookup, then one per commit seen (at most: a checkpoint rewrites the header too)
        assert 1 + 2 * 3 <= len(pragmas) <= 1 + 2 * 3 + 2
    else:
        assert len(pragmas) == lookups


def test_remember_owner_holds_across_processes(site_path, workers):
    # a runner that crashed after remember() and the one that re-processes the same qfile
    def run(*ops):
        return spawn(workers, "ops", site_path, A, *ops).result(timeout=30)["done"]

    assert run("remember:<m1@x>:q1") == ["fresh"]
    assert run("remember:<m1@x>:q1", "remember:<m1@x>:q2", "remember:<m1@x>:") == ["fresh", "duplicate",
                                                                                    "duplicate"]
    store = open_store(config.load(site_path), A)
    assert store.remember("accepted", "<m1@x>", 3600, owner="q1") is True
    assert store.remember("accepted", "<m1@x>", 3600, owner="q3") is False


def test_writer_killed_inside_transaction_leaves_nothing_behind(site_path, workers):
    store = open_store(config.load(site_path), A)
    store.add_member("kept@example.com")
    victim = spawn(workers, "crash_mid", site_path, A)
    victim.expect("mid")
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait(timeout=10)

    assert [m.key for m in store.members()] == ["kept@example.com"]
    assert store.evidence("doomed0@example.com") == []
    store.add_member("after@example.com")      # the dead writer's lock is gone
    assert len(store.members()) == 2
    _assert_integrity(store.path)


def test_writer_killed_at_a_random_moment_leaves_a_consistent_store(site_path, workers):
    victim = spawn(workers, "crash_loop", site_path, A)
    victim.expect("running")
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait(timeout=10)

    store = open_store(config.load(site_path), A)
    members = store.members()
    # Each transaction wrote a member, an event and evidence: all three or none survive.
    assert len(members) >= 20
    assert {e.address for e in store.events()} == {m.key for m in members}
    assert all(len(store.evidence(m.key)) == 1 for m in members)
    store.add_member("after@example.com")
    _assert_integrity(store.path)


def _assert_integrity(path: str) -> None:
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert os.path.getsize(path) > 0
