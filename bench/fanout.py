"""Fan-out throughput through Postfix against smtp-source, same Postfix, same run.

    python bench/fanout.py [--members N] [--rounds R] [--size BYTES]

A private Postfix (tests/harness/postfix.py, built from the INSTALL snippets)
relays everything to Postfix's own ``smtp-sink`` on loopback. Two ways to push
N single-recipient deliveries through its re-injection smtpd:

* listgate: one post from a member is queued in ``in``; the runner applies
  the posting policy, decorates it, computes N deliveries, and hands them over
  one SMTP transaction per member with a signed VERP envelope sender,
  recording progress durably (fsync'd qfile rewrite) after each;
* baseline: ``smtp-source -d -N -m N`` sends N messages of the same size,
  one recipient each, over one connection (what Postfix's own load tool does).

Each timing runs until Postfix's queue is empty again (everything delivered to
the sink), so both include Postfix's own work. Printed: deliveries/s for each
and the ratio listgate/baseline (target >= 0.5). The median of ``--rounds``
rounds is reported. Needs root and Postfix (as the tests' harness).
"""
from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))
sys.path.insert(0, os.path.join(os.path.dirname(_HERE), "tests"))

import argparse  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from harness import PostfixInstance, available, free_port  # noqa: E402

from listgate import config, instance  # noqa: E402
from listgate.queue import Switchboard  # noqa: E402
from listgate.runner.loop import Runner  # noqa: E402
from listgate.store import close_all, open_store  # noqa: E402

SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
LIST = "demo@lists.example.org"
QUEUE_TIMEOUT = 120.0


def wait_listening(proc: subprocess.Popen, port: int, timeout: float = 10.0) -> None:
    """Return once ``port`` accepts connections; raise if ``proc`` died or time ran out."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"smtp-sink exited: {proc.stderr.read().decode(errors='replace')}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("smtp-sink is not listening")


def post(size: int) -> bytes:
    head = (b"From: m0@members.test\r\nTo: demo@lists.example.org\r\nSubject: bench\r\n"
            b"Message-ID: <bench-%d@members.test>\r\n\r\n" % time.monotonic_ns())
    line = b"x" * 70 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def time_listgate(site, pf: PostfixInstance, size: int) -> float:
    Switchboard.for_site(site, "in").enqueue(post(size), {"list": LIST, "role": "post",
                                                          "envelope_sender": "m0@members.test"})
    runner = Runner(site)
    t0 = time.perf_counter()
    try:
        runner.run_once(with_tasks=False)
    finally:
        runner.close()
    pf.wait_queue_empty(timeout=QUEUE_TIMEOUT, flush=False)
    return time.perf_counter() - t0


def time_smtp_source(pf: PostfixInstance, n: int, size: int) -> float:
    t0 = time.perf_counter()
    subprocess.run([SMTP_SOURCE, "-d", "-N", "-m", str(n), "-l", str(size), "-f", "bench@lists.example.org",
                    "-t", "member@members.test", f"127.0.0.1:{pf.reinject_port}"],
                   check=True, stdout=subprocess.DEVNULL, timeout=600)
    pf.wait_queue_empty(timeout=QUEUE_TIMEOUT, flush=False)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", type=int, default=2000, help="message size in bytes")
    args = ap.parse_args()
    if not available():
        print("fanout bench: needs root and Postfix; skipped")
        return 0
    work = tempfile.mkdtemp(prefix="listgate-bench-fanout-")
    sink_port = free_port()
    # smtp-sink refuses to run as root without -u
    sink = subprocess.Popen([SMTP_SINK, "-u", "postfix", f"127.0.0.1:{sink_port}", "256"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_listening(sink, sink_port)
        with PostfixInstance(sink_port=sink_port) as pf:
            path = instance.init(os.path.join(work, "inst"), reinject_port=pf.reinject_port,
                                 policy_socket=f"inet:{free_port()}@127.0.0.1")
            site = config.load(path)
            store = open_store(site, LIST)
            with store.transaction():
                for i in range(args.members):
                    store.add_member(f"m{i}@members.test")
            lg, base = [], []
            for _ in range(args.rounds):
                lg.append(args.members / time_listgate(site, pf, args.size))
                base.append(args.members / time_smtp_source(pf, args.members, args.size))
            close_all()
    finally:
        sink.terminate()
        sink.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    a, b = statistics.median(lg), statistics.median(base)
    print(f"fan-out through Postfix: {args.members} deliveries, {args.size} bytes, median of {args.rounds}")
    print(f"{'sender':<34}{'deliveries/s':>14}")
    print(f"{'listgate runner (signed VERP)':<34}{a:>14.1f}")
    print(f"{'smtp-source (1 rcpt/message)':<34}{b:>14.1f}")
    print(f"{'ratio listgate/smtp-source':<34}{a / b:>14.2f}   (target >= 0.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
