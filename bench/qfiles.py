"""Switchboard throughput against the durable-write floor, measured in the same run.

The floor is a plain loop doing only what any durable queue must do per
message: create a file of the same size under a temporary name, write it,
fsync it, rename it, fsync the directory. listgate's cycle is enqueue (that,
plus serialising the metadata, into a pool slot file when one is free) +
dequeue (rename to .held, read, parse) + finish (back to the pool). The ratio
is listgate's messages/s over the floor's; target >= 0.9.

    python bench/qfiles.py [--count N] [--sizes BYTES,...] [--dir DIR] [--against REV]

Message sizes cycle through ``--sizes`` (default 1 to 16 KiB, mean 6 KiB): a
writer reusing files of one fixed size would hide what a size change costs.
Floor and listgate run alternately in chunks of 20 messages (or a whole
batch) on the same file system, so load on a shared disk hits both alike;
the ratio is the median of the paired chunks' time ratios. CPU is the
writing thread's user + system time per message (kernel work such as inode
allocation included); "other threads" is the CPU of the rest of the process
over the whole case (listgate's pool refill thread, at nice 19) per message.

The burst cases are the milter's side: enqueues only, while no runner
finishes anything (drained untimed between bursts), into a pool
pre-allocated with ``Switchboard(preallocate=N)``, or into no pool at all.

``--against REV`` measures before/after instead: the same cases with git
revision REV's ``listgate.queue`` (imported under another name) in place of
the floor, paired chunk by chunk in one process; ratio = REV's time / this
checkout's time (above 1: this checkout is faster). A REV without
``preallocate`` runs the burst cases with the pool it has.
"""
from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))

import argparse  # noqa: E402
import importlib  # noqa: E402
import inspect  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import listgate.queue  # noqa: E402
from listgate.queue import qfile  # noqa: E402

META = {"list": "demo@lists.example.org", "role": "post", "envelope_sender": "someone@example.org",
        "recipients": ["demo@lists.example.org"], "mta_queue_id": "4ZkQ3x1yTnz9sJ",
        "client_address": "192.0.2.1"}
SIZES = "1024,4096,2048,16384,8192,4096"


def message(size: int) -> bytes:
    head = b"From: someone@example.org\r\nTo: demo@lists.example.org\r\nSubject: bench\r\n\r\n"
    line = b"The quick brown fox jumps over the lazy dog \xe9\xe8 0123456789\r\n"
    return head + (line * (size // len(line) + 1))[:max(0, size - len(head))]


def _cpu() -> float:
    return time.thread_time()  # this thread only: the refill thread is counted apart


def _process_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)  # microseconds, where os.times() has clock ticks
    return r.ru_utime + r.ru_stime


class Floor:
    """The plain durable-write loop, run in chunks into one directory.

    ``slots``: instead of creating a file, overwrite one of two pre-allocated
    64 KiB files in place (the best a pool slot can do: same renames and syncs).
    """

    def __init__(self, directory: str, data: list[bytes], unlink: bool = False, slots: bool = False):
        os.makedirs(directory)
        self.dir, self.data, self.n, self.unlink, self.slots = directory, data, 0, unlink, slots
        self.dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        if slots:
            for i in range(2):
                fd = os.open(os.path.join(directory, f"slot{i}"), os.O_WRONLY | os.O_CREAT, 0o600)
                os.write(fd, bytes(64 * 1024))
                os.fsync(fd)
                os.close(fd)

    def run(self, count: int) -> tuple[float, float]:
        start, cpu = time.perf_counter(), _cpu()
        for _ in range(count):
            self.n += 1
            data = self.data[self.n % len(self.data)]
            tmp = os.path.join(self.dir, f".{self.n}.tmp")
            if self.slots:
                os.rename(os.path.join(self.dir, f"slot{self.n % 2}"), tmp)
                fd = os.open(tmp, os.O_WRONLY)
                os.write(fd, data)
                os.fdatasync(fd)
            else:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                os.write(fd, data)
                os.fsync(fd)
            os.close(fd)
            final = os.path.join(self.dir, f"slot{self.n % 2}" if self.slots else f"{self.n}.qf")
            os.rename(tmp, final)
            os.fsync(self.dfd)
            if self.unlink:
                os.unlink(final)
        return time.perf_counter() - start, _cpu() - cpu


class Cycle:
    """enqueue ``batch`` messages, then dequeue+finish them all, in chunks of ``batch``."""

    def __init__(self, queue, directory: str, msgs: list[bytes], batch: int):
        self.sb, self.msgs, self.batch, self.n = queue.Switchboard(directory, "in"), msgs, batch, 0

    def run(self, count: int) -> tuple[float, float]:
        sb, msgs = self.sb, self.msgs
        start, cpu = time.perf_counter(), _cpu()
        for _ in range(count // self.batch):
            for _ in range(self.batch):
                self.n += 1
                sb.enqueue(msgs[self.n % len(msgs)], META)
            for _ in range(self.batch):
                sb.finish(sb.dequeue())
        elapsed = time.perf_counter() - start, _cpu() - cpu
        assert sb.dequeue() is None
        return elapsed


class Burst:
    """enqueue ``count`` messages (timed), then dequeue+finish them untimed.

    ``preallocate``: the pool keeps that many slot files (made before the first
    burst); 0: the pool is emptied after each drain, so every enqueue creates a file.
    """

    def __init__(self, queue, directory: str, msgs: list[bytes], preallocate: int):
        if "preallocate" in inspect.signature(queue.Switchboard).parameters:
            self.sb = queue.Switchboard(directory, "in", preallocate=preallocate)
            self.sb.preallocate()
        else:  # an older listgate (--against): its own pool only
            self.sb = queue.Switchboard(directory, "in")
        self.msgs, self.n, self.preallocate = msgs, 0, preallocate

    def run(self, count: int) -> tuple[float, float]:
        sb, msgs = self.sb, self.msgs
        start, cpu = time.perf_counter(), _cpu()
        for _ in range(count):
            self.n += 1
            sb.enqueue(msgs[self.n % len(msgs)], META)
        elapsed = time.perf_counter() - start, _cpu() - cpu
        while (qf := sb.dequeue()) is not None:
            sb.finish(qf)
        if not self.preallocate:
            pool = os.path.join(sb.dir, ".recycle")
            for name in os.listdir(pool):
                os.unlink(os.path.join(pool, name))
        return elapsed


def paired(floor, other, chunk: int, count: int) -> tuple[float, ...]:
    """Alternate ``chunk``-message runs of both until ``count``: (floor msg/s, other msg/s,
    median time ratio, floor CPU us/msg, other CPU us/msg, other threads' CPU us/msg)."""
    runs = []
    others = _process_cpu() - time.thread_time()
    for _ in range(max(1, count // chunk)):
        runs.append((floor.run(chunk), other.run(chunk)))
    others = _process_cpu() - time.thread_time() - others
    done = chunk * len(runs)
    return (done / sum(f[0] for f, _ in runs), done / sum(o[0] for _, o in runs),
            statistics.median(f[0] / o[0] for f, o in runs),
            sum(f[1] for f, _ in runs) / done * 1e6, sum(o[1] for _, o in runs) / done * 1e6,
            others / done * 1e6)


def queue_at(rev: str, into: str):
    """``listgate.queue`` as of git revision ``rev``, imported as ``listgate_REV.queue``."""
    repo = os.path.dirname(_HERE)
    tar = subprocess.run(["git", "-C", repo, "archive", rev, "listgate"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", into], input=tar, check=True)
    name = "listgate_against"
    os.rename(os.path.join(into, "listgate"), os.path.join(into, name))
    sys.path.insert(0, into)
    return importlib.import_module(f"{name}.queue")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=2000, help="messages per case and side (default 2000)")
    ap.add_argument("--sizes", default=SIZES, help=f"message sizes in bytes, cycled (default {SIZES})")
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir in the current directory)")
    ap.add_argument("--against", metavar="REV", help="compare with git revision REV's listgate.queue, not the floor")
    args = ap.parse_args(argv)

    sizes = [int(s) for s in args.sizes.split(",")]
    msgs = [message(s) for s in sizes]
    # the floor writes as many bytes
    data = [qfile.dumps({**META, "arrival": 1800000000.0, "attempts": 0}, m) for m in msgs]
    base = tempfile.mkdtemp(prefix="bench-queue-", dir=args.dir or os.getcwd())
    this = listgate.queue
    # a runner keeping up, one lagging by a batch, and a long backlog: beyond the
    # pool (64 files) every finish frees a file, which the floor never does
    backlog = burst = min(500, args.count)
    cases = [("cycle of 1 (enqueue, dequeue, finish)", lambda q, d: Cycle(q, d, msgs, 1), 20),
             ("batches of 50", lambda q, d: Cycle(q, d, msgs, 50), 50),
             (f"backlog of {backlog}, then drain", lambda q, d: Cycle(q, d, msgs, backlog), backlog),
             (f"burst of {burst} enqueues, preallocate={burst}", lambda q, d: Burst(q, d, msgs, burst), burst),
             (f"burst of {burst} enqueues, no pool", lambda q, d: Burst(q, d, msgs, 0), burst)]
    rows = []
    try:
        if args.against:
            old = queue_at(args.against, tempfile.mkdtemp(prefix="rev-", dir=base))
        for i, (label, make, chunk) in enumerate(cases):
            side = make(old, os.path.join(base, f"old-{i}")) if args.against else \
                Floor(os.path.join(base, f"floor-{i}"), data)
            rows.append((label, *paired(side, make(this, os.path.join(base, f"case-{i}")), chunk, args.count)))
        if not args.against:
            # references: what the floor costs when every file is also deleted, as a queue
            # without recycling would do; and when it overwrites pre-allocated files instead
            rows.append(("(reference: floor + unlink each file)",
                         *paired(Floor(os.path.join(base, "floor-ref"), data),
                                 Floor(os.path.join(base, "unlink"), data, unlink=True), 20, args.count)))
            rows.append(("(reference: floor over 2 slot files)",
                         *paired(Floor(os.path.join(base, "floor-ref2"), data),
                                 Floor(os.path.join(base, "slots"), data, slots=True), 20, args.count)))
    finally:
        shutil.rmtree(base, ignore_errors=True)

    base_name = args.against or "floor"
    print(f"queue: {args.count} messages per case and side, sizes {args.sizes} bytes cycled, {base_name} and "
          f"listgate alternating in chunks, on the file system of {os.path.abspath(args.dir or os.getcwd())}")
    print(f"ratio: median over paired chunks of {base_name} time / listgate time (robust to bursts on a "
          "shared disk); CPU: user + system us per message")
    print(f"{'case':<40} {base_name[:12] + ' msg/s':>18} {'listgate msg/s':>15} {'ratio':>7} "
          f"{'CPU ' + base_name[:12]:>16} {'listgate':>9} {'other threads':>14}"
          f"{'' if args.against else '  target >= 0.9'}")
    for label, f_rate, s_rate, ratio, f_cpu, s_cpu, o_cpu in rows:
        mark = "" if label.startswith("(") or args.against else "ok" if ratio >= 0.9 else "missed"
        print(f"{label:<40} {f_rate:>18.0f} {s_rate:>15.0f} {ratio:>7.3f} {f_cpu:>16.0f} {s_cpu:>9.0f} "
              f"{max(o_cpu, 0.0):>14.0f}  {mark}")  # below 0: rusage vs thread_time granularity
    return 0


if __name__ == "__main__":
    sys.exit(main())
