"""Helpers for the queue tests: deterministic awkward messages, and child processes to kill.

Run as a script, it is the child of the crash-safety tests::

    python queue_helpers.py writer QUEUE_DIR SEED      enqueue forever; print "ID N" after each enqueue returns
    python queue_helpers.py consumer QUEUE_DIR [plain] dequeue (+ update unless plain) + finish forever;
                                                       print "ID" just before each finish
"""
from __future__ import annotations

import os
import random
import sys
import time


def queue_files(qdir: str) -> list[str]:
    """The names in a queue directory, sorted."""
    return sorted(os.listdir(qdir))


def make_message(seed: int, n: int) -> bytes:
    """Message ``n`` of writer ``seed``: CRLF and bare-LF lines, 8-bit bytes, NUL, the
    qfile separator and magic inside the body, sizes from a few bytes to ~200 KB."""
    rng = random.Random(seed * 1_000_003 + n)
    size = rng.choice((0, 10, 300, 4000, 70_000, 200_000))
    head = (f"From: writer{seed}@example.org\r\nSubject: message {n} \xe9\r\n"
            f"X-N: {n}\r\n\r\n").encode("latin-1")
    tricky = b"\n--- message ---\nlistgate-qfile 1\n{\"x\": 1}\r\n\x00\xff\xfe\r"
    return head + tricky + rng.randbytes(size)


def _writer(queue_dir: str, seed: int) -> None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from listgate.queue import Switchboard
    sb = Switchboard(queue_dir, "in")
    n = 0
    out = sys.stdout
    while True:
        qid = sb.enqueue(make_message(seed, n), {"seed": seed, "n": n, "list": "demo@example.org"})
        out.write(f"{qid} {n}\n")
        out.flush()
        n += 1


def _consumer(queue_dir: str, touch: bool) -> None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from listgate.queue import Switchboard
    sb = Switchboard(queue_dir, "in")
    out = sys.stdout
    while True:
        qf = sb.dequeue()
        if qf is None:
            time.sleep(0.001)
            continue
        if touch:
            # a little work between taking and finishing, so kills land in both states
            sb.update(qf, {**qf.meta, "touched": True})
        # announced before finish: a kill between finish and a later print would make a
        # finished qfile look lost; one announced but not finished is simply still queued
        out.write(f"{qf.id}\n")
        out.flush()
        sb.finish(qf)


def _progress(queue_dir: str, written_only: bool = False) -> None:
    """Fan-out progress: dequeue the one qfile, record its deliveries done one by one
    (every fourth as refused), printing each index once it is durable (``written_only``:
    once it is written, before its fdatasync, as the runner's commit gate does)."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from listgate.queue import Switchboard
    sb = Switchboard(queue_dir, "out")
    qf = sb.dequeue()
    out = sys.stdout
    for i in range(len(qf.meta["deliveries"])):
        if i in qf.meta.get("done", ()):
            continue
        sb.record_done(qf, [i], {str(i): f"550 5.1.1 no {i}"} if i % 4 == 0 else None, sync=not written_only)
        out.write(f"{i}\n")
        out.flush()
        sb.sync_done(qf)
    out.write("all\n")
    out.flush()
    time.sleep(60)


if __name__ == "__main__":
    if sys.argv[1] == "writer":
        _writer(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1] == "consumer":
        _consumer(sys.argv[2], sys.argv[3:] != ["plain"])
    elif sys.argv[1] == "progress":
        _progress(sys.argv[2], sys.argv[3:] == ["written-only"])
    else:
        sys.exit(f"unknown role {sys.argv[1]!r}")
