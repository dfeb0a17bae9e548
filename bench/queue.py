"""Switchboard throughput against the durable-write floor, measured in the same run.

The floor is a plain loop doing only what any durable queue must do per
message: write a file of the same size under a temporary name, fsync it,
rename it, fsync the directory. listgate's cycle is enqueue (that, plus
serialising the metadata) + dequeue (rename to .held, read, parse) + finish
(unlink). The ratio is listgate's messages/s over the floor's; target >= 0.9.

    python bench/queue.py [--count N] [--rounds R] [--size BYTES] [--dir DIR]

Rounds alternate floor and listgate runs on the same file system and the
median of each is reported, so disk noise hits both alike.
"""
from __future__ import annotations

import os
import sys

# this file is named queue.py: its directory must not shadow the stdlib module
# ``queue`` (logging.handlers imports it)
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

import argparse  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from listgate.queue import Switchboard, qfile  # noqa: E402

META = {"list": "demo@lists.example.org", "role": "post", "envelope_sender": "someone@example.org",
        "recipients": ["demo@lists.example.org"], "mta_queue_id": "4ZkQ3x1yTnz9sJ",
        "client_address": "192.0.2.1"}


def message(size: int) -> bytes:
    head = b"From: someone@example.org\r\nTo: demo@lists.example.org\r\nSubject: bench\r\n\r\n"
    line = b"The quick brown fox jumps over the lazy dog \xe9\xe8 0123456789\r\n"
    return head + (line * (size // len(line) + 1))[:max(0, size - len(head))]


def floor_loop(directory: str, count: int, data: bytes) -> float:
    os.makedirs(directory)
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    start = time.perf_counter()
    for i in range(count):
        tmp = os.path.join(directory, f".{i}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        os.rename(tmp, os.path.join(directory, f"{i}.qf"))
        os.fsync(dfd)
    elapsed = time.perf_counter() - start
    os.close(dfd)
    return elapsed


def switchboard_cycle(directory: str, count: int, msg: bytes, batch: int) -> float:
    """enqueue ``batch`` messages, then dequeue+finish them all; until ``count`` are done."""
    sb = Switchboard(directory, "in")
    start = time.perf_counter()
    done = 0
    while done < count:
        n = min(batch, count - done)
        for _ in range(n):
            sb.enqueue(msg, META)
        for _ in range(n):
            qf = sb.dequeue()
            sb.finish(qf)
        done += n
    elapsed = time.perf_counter() - start
    assert sb.dequeue() is None
    return elapsed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=500, help="messages per run (default 500)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating runs of each (default 5)")
    ap.add_argument("--size", type=int, default=4096, help="message size in bytes (default 4096)")
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir in the current directory)")
    args = ap.parse_args(argv)

    msg = message(args.size)
    data = qfile.dumps({**META, "arrival": 1800000000.0, "attempts": 0}, msg)  # the floor writes as many bytes
    base = tempfile.mkdtemp(prefix="bench-queue-", dir=args.dir or os.getcwd())
    cases = [("cycle of 1 (enqueue, dequeue, finish)", 1), (f"backlog of {args.count} then drain", args.count)]
    rows = []
    try:
        for label, batch in cases:
            floor_t, sb_t = [], []
            for r in range(args.rounds):
                floor_t.append(floor_loop(os.path.join(base, f"floor-{batch}-{r}"), args.count, data))
                sb_t.append(switchboard_cycle(os.path.join(base, f"sb-{batch}-{r}"), args.count, msg, batch))
            f_rate = args.count / statistics.median(floor_t)
            s_rate = args.count / statistics.median(sb_t)
            rows.append((label, f_rate, s_rate, s_rate / f_rate))
    finally:
        shutil.rmtree(base, ignore_errors=True)

    print(f"queue: {args.count} messages of {args.size} bytes, median of {args.rounds} alternating rounds, "
          f"file system of {os.path.abspath(args.dir or os.getcwd())}")
    print(f"{'case':<42} {'floor msg/s':>12} {'listgate msg/s':>15} {'ratio':>7}  target")
    for label, f_rate, s_rate, ratio in rows:
        print(f"{label:<42} {f_rate:>12.0f} {s_rate:>15.0f} {ratio:>7.3f}  >= 0.9 {'ok' if ratio >= 0.9 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
