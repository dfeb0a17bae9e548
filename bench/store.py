"""Benchmark the SQLite list store against raw sqlite3 with the same durability settings.

Run: ``python bench/store.py [N]``. Prints operations per second and the
ratio to a baseline measured in the same run: a bare ``sqlite3`` connection
(WAL, synchronous=FULL) doing one committed INSERT (writes) or one indexed
SELECT (reads) per operation. A ratio near 1 means the store adds little
beyond SQLite's own fsync cost.
"""
from __future__ import annotations

import os
import sqlite3
import sys
import tempfile
import threading
import time

from listgate import config, instance
from listgate.store import BounceEvent, close_all, open_store
from listgate.store.mailman import ImportedMember, import_members

LIST = "demo@lists.example.org"


ROUNDS = 3  # best of: fsync timing on a shared machine is noisy


def timed(n: int, fn) -> float:
    """Best operations per second of ``fn(i)`` over ROUNDS rounds of n calls (i unique across rounds)."""
    best = 0.0
    for r in range(ROUNDS):
        start = time.perf_counter()
        for i in range(r * n, (r + 1) * n):
            fn(i)
        best = max(best, n / (time.perf_counter() - start))
    return best


def in_new_thread(fn):
    """``fn(i)`` run by a new thread per call, as libmilter runs each SMTP session."""
    def call(i):
        t = threading.Thread(target=fn, args=(i,))
        t.start()
        t.join()
    return call


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def baselines(directory: str, n: int) -> tuple[float, float, float]:
    conn = sqlite3.connect(os.path.join(directory, "raw.db"), isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v REAL)")

    def write(i):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t VALUES (?, ?)", (f"k{i}", float(i)))
        conn.execute("COMMIT")

    writes = timed(n, write)
    def read(i):
        conn.execute("SELECT k, v FROM t WHERE k = ?", (f"k{i % n}",)).fetchall()

    reads = timed(n * 10, read)
    thread_reads = timed(n, in_new_thread(read))
    conn.close()
    return writes, reads, thread_reads


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    with tempfile.TemporaryDirectory() as tmp:
        site = config.load(instance.init(os.path.join(tmp, "inst")))
        store = open_store(site, LIST)
        base_write, base_read, base_thread_read = baselines(tmp, n)
        for i in range(n):
            store.add_member(f"m{i}@example.com")

        def score(i):
            with store.transaction():
                m = store.get_member(f"m{i % n}@example.com")
                m.bounce_score += 1
                store.save_member(m)
                store.add_event(BounceEvent(at=float(i), address=m.key, bounce_class="hard", action="scored"))

        tokens = [store.add_pending("probe", {"member": f"m{i}@example.com"}, 3600).token for i in range(n * ROUNDS)]
        rows = [
            ("add_event (1 txn each)", "write",
             timed(n, lambda i: store.add_event(BounceEvent(at=float(i), address=f"m{i % n}@example.com",
                                                            bounce_class="soft")))),
            ("score update: get+save+event in 1 txn", "write", timed(n, score)),
            ("confirm_pending", "write", timed(n, lambda i: store.confirm_pending(tokens[i]))),
            ("remember (Message-ID)", "write", timed(n, lambda i: store.remember("message-id", f"<{i}@x>", 3600))),
            ("get_member", "read", timed(n * 10, lambda i: store.get_member(f"m{i % n}@example.com"))),
        ]
        fds_before = open_fds()
        rows.append(("get_member, 1 new thread per call", "thread",
                     timed(n, in_new_thread(lambda i: store.get_member(f"m{i % n}@example.com")))))
        thread_fds = open_fds() - fds_before
        members = [ImportedMember(address=f"import{i}@example.com") for i in range(n * 10)]
        start = time.perf_counter()
        import_members(store, members)
        rows.append(("import_members (1 txn, per member)", "write", len(members) / (time.perf_counter() - start)))
        close_all()

    print(f"{'operation':<40} {'ops/s':>10} {'baseline ops/s':>15} {'ratio':>7}")
    print(f"{'raw sqlite3 INSERT+COMMIT (baseline)':<40} {base_write:>10.0f} {base_write:>15.0f} {1:>7.2f}")
    print(f"{'raw sqlite3 SELECT by key (baseline)':<40} {base_read:>10.0f} {base_read:>15.0f} {1:>7.2f}")
    print(f"{'raw SELECT, 1 new thread per call (base)':<40} {base_thread_read:>10.0f} "
          f"{base_thread_read:>15.0f} {1:>7.2f}")
    bases = {"write": base_write, "read": base_read, "thread": base_thread_read}
    for name, kind, ops in rows:
        base = bases[kind]
        print(f"{name:<40} {ops:>10.0f} {base:>15.0f} {ops / base:>7.2f}")
    print(f"file descriptors left open by the store after {n * ROUNDS} short-lived threads: {thread_fds}")


if __name__ == "__main__":
    main()
