"""The list store under several real processes: isolation, serialised updates, racing confirms, crashes."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing

import pytest

from listgate import config
from listgate.store import close_all, open_store, store_path

from conftest import free_port, make_site
from policy_helpers import closed_site, connect, rcpt_request, read_replies  # noqa: F401 - fixture
from store_helpers import Worker, add_second_list, start_all

D = "lists.example.org"
A = f"demo@{D}"
B = f"other@{D}"
REFUSED = "550 5.7.1 only members may post to this list"


@pytest.fixture
def site_path(request, tmp_path):
    """The instance's site file; parametrized indirectly with "postgres", its store is a fresh
    PostgreSQL database (the same busy timeout)."""
    site = make_site(tmp_path / "instance")
    add_second_list(site.path, busy_timeout="2s")
    if getattr(request, "param", "sqlite") == "postgres":
        from pg_helpers import use_postgres
        with open(site.path, encoding="utf-8") as fh:
            text = fh.read().replace("store:\n  busy_timeout: 2s\n", "")
        with open(site.path, "w", encoding="utf-8") as fh:
            fh.write(text)
        use_postgres(site.path, request.getfixturevalue("pg_server"), busy_timeout="2s")
    yield site.path
    close_all()


# the contract across processes holds on both backends
BOTH_BACKENDS = pytest.mark.parametrize("site_path", ["sqlite", "postgres"], indirect=True)


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


@BOTH_BACKENDS
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


@BOTH_BACKENDS
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


@BOTH_BACKENDS
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


@BOTH_BACKENDS
@pytest.mark.parametrize("read", [lambda fn, *args: fn(*args), _in_new_thread], ids=["one thread", "new threads"])
def test_reads_see_every_commit_of_another_process(site_path, workers, read):
    store = open_store(config.load(site_path), A)
    member, peek = store.get_member, store.peek_pending

    def elsewhere(*ops):
        return spawn(workers, "ops", site_path, A, *ops).result(timeout=30)["done"]

    for _ in range(2):
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
    elsewhere("add:again@example.com", "checkpoint", "remove:again@example.com", "add:third@example.com")
    assert read(member, "again@example.com") is None and read(member, "third@example.com") is not None


@BOTH_BACKENDS
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


@BOTH_BACKENDS
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
    _assert_integrity(store)


@BOTH_BACKENDS
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
    _assert_integrity(store)


def _assert_integrity(store) -> None:
    """SQLite's own check of the file (PostgreSQL's server rolled the dead client's transaction back)."""
    path = getattr(store, "path", None)
    if path is None:
        return
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert os.path.getsize(path) > 0


def test_a_running_policy_daemon_uses_a_store_file_put_back_with_mv(closed_site, tmp_path):
    # issue 20 item 4: while the file is corrupt the daemon answers 451 and stays up; once a good
    # file is moved back in place, the same process answers from it (no restart)
    member = rcpt_request(f"demo@{D}", sender="member@example.com")
    stranger = rcpt_request(f"demo@{D}", sender="stranger@example.net")
    path = store_path(closed_site, A)
    close_all()                                         # this process keeps no connection to the file
    good = str(tmp_path / "good.db")
    with closing(sqlite3.connect(path)) as src, closing(sqlite3.connect(good)) as dst:
        src.backup(dst)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"garbage, not SQLite" * 500)
    spec = f"inet:127.0.0.1:{free_port()}"
    daemon = subprocess.Popen([sys.executable, "-m", "listgate", "-c", closed_site.path, "policy", "--socket", spec],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        address = ("inet", ("127.0.0.1", int(spec.rpartition(":")[2])))
        _wait_listening(address, daemon)

        def ask(*requests: bytes) -> list[str]:
            with connect(address) as s:
                s.sendall(b"".join(requests))
                return read_replies(s, len(requests))

        assert ask(member, stranger) == ["DUNNO", REFUSED]
        os.rename(junk, path)                           # mv junk.db demo@....db
        for answer in ask(member, stranger) + ask(member):
            assert answer.startswith("451 4.3.0 "), answer
        assert daemon.poll() is None                    # stayed up
        os.rename(good, path)                           # mv good.db demo@....db
        assert ask(member, stranger) == ["DUNNO", REFUSED]
        assert daemon.poll() is None                    # the same process
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=20)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(timeout=10)
        daemon.stderr.close()


def _wait_listening(address, proc, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            connect(address, timeout=1.0).close()
            return
        except OSError:
            if proc.poll() is not None:
                raise AssertionError(f"the policy daemon exited: {proc.stderr.read().decode(errors='replace')}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the policy daemon did not listen within {timeout}s")
            time.sleep(0.05)
