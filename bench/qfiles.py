"""Switchboard throughput against the durable-write floor, measured in the same run.

The floor is a plain loop doing only what any durable queue must do per
message: write a file of the same size under a temporary name, fsync it,
rename it, fsync the directory. listgate's cycle is enqueue (that, plus
serialising the metadata) + dequeue (rename to .held, read, parse) + finish
(unlink). The ratio is listgate's messages/s over the floor's; target >= 0.9.

    python bench/qfiles.py [--count N] [--size BYTES] [--dir DIR]

Floor and listgate run alternately in chunks of 20 messages (or a whole
batch) on the same file system, so load on a shared disk hits both alike;
the ratio is the median of the paired chunks' time ratios.
"""
from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
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


class Floor:
    """The plain durable-write loop, run in chunks into one directory."""

    def __init__(self, directory: str, data: bytes, unlink: bool = False):
        os.makedirs(directory)
        self.dir, self.data, self.n, self.unlink = directory, data, 0, unlink
        self.dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)

    def run(self, count: int) -> float:
        start = time.perf_counter()
        for _ in range(count):
            self.n += 1
            tmp = os.path.join(self.dir, f".{self.n}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, self.data)
            os.fsync(fd)
            os.close(fd)
            os.rename(tmp, os.path.join(self.dir, f"{self.n}.qf"))
            os.fsync(self.dfd)
            if self.unlink:
                os.unlink(os.path.join(self.dir, f"{self.n}.qf"))
        return time.perf_counter() - start


class Cycle:
    """enqueue ``batch`` messages, then dequeue+finish them all, in chunks of ``batch``."""

    def __init__(self, directory: str, msg: bytes, batch: int):
        self.sb, self.msg, self.batch = Switchboard(directory, "in"), msg, batch

    def run(self, count: int) -> float:
        sb, msg = self.sb, self.msg
        start = time.perf_counter()
        for _ in range(count // self.batch):
            for _ in range(self.batch):
                sb.enqueue(msg, META)
            for _ in range(self.batch):
                sb.finish(sb.dequeue())
        elapsed = time.perf_counter() - start
        assert sb.dequeue() is None
        return elapsed


def paired(floor, other, chunk: int, count: int) -> tuple[float, float, float]:
    """Alternate ``chunk``-message runs of both until ``count``: (floor msg/s, other msg/s, median ratio)."""
    times = []
    for _ in range(max(1, count // chunk)):
        times.append((floor.run(chunk), other.run(chunk)))
    done = chunk * len(times)
    return (done / sum(f for f, _ in times), done / sum(o for _, o in times),
            statistics.median(f / o for f, o in times))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=2000, help="messages per case and side (default 2000)")
    ap.add_argument("--size", type=int, default=4096, help="message size in bytes (default 4096)")
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir in the current directory)")
    args = ap.parse_args(argv)

    msg = message(args.size)
    data = qfile.dumps({**META, "arrival": 1800000000.0, "attempts": 0}, msg)  # the floor writes as many bytes
    base = tempfile.mkdtemp(prefix="bench-queue-", dir=args.dir or os.getcwd())
    # a runner keeping up, one lagging by a batch, and a long backlog: beyond the
    # recycling pool (64 files) every finish frees blocks, which the floor never does
    backlog = min(500, args.count)
    cases = [("cycle of 1 (enqueue, dequeue, finish)", 1), ("batches of 50", 50),
             (f"backlog of {backlog}, then drain", backlog)]
    rows = []
    try:
        for label, batch in cases:
            floor = Floor(os.path.join(base, f"floor-{batch}"), data)
            cycle = Cycle(os.path.join(base, f"cycle-{batch}"), msg, batch)
            rows.append((label, *paired(floor, cycle, max(batch, 20), args.count)))
        # reference: the floor when every file is also deleted, as a queue without
        # recycling would do (what finish costs when blocks are freed)
        rows.append(("(reference: floor + unlink each file)",
                     *paired(Floor(os.path.join(base, "floor-ref"), data),
                             Floor(os.path.join(base, "unlink"), data, unlink=True), 20, args.count)))
    finally:
        shutil.rmtree(base, ignore_errors=True)

    print(f"queue: {args.count} messages of {args.size} bytes per side, floor and listgate alternating "
          f"in chunks, on the file system of {os.path.abspath(args.dir or os.getcwd())}")
    print("ratio: median over paired chunks of floor time / listgate time (robust to bursts on a shared disk)")
    print(f"{'case':<40} {'floor msg/s':>12} {'listgate msg/s':>15} {'ratio':>7}  target >= 0.9")
    for label, f_rate, s_rate, ratio in rows:
        print(f"{label:<40} {f_rate:>12.0f} {s_rate:>15.0f} {ratio:>7.3f}  {'' if label.startswith('(') else 'ok' if ratio >= 0.9 else 'missed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
