"""How fast the test harness is: Postfix instance start/stop, and delivery
throughput into the aiosmtpd sink against Postfix's own smtp-sink.

    python bench/harness.py [--messages 500] [--rounds 3] [--quick]

One private Postfix (tests/harness) relays ``--messages`` messages injected
with smtp-source (4 sessions) to (a) ``SmtpSink`` and (b) ``smtp-sink``, same
Postfix, same run, alternating; the best round of each is reported with the
ratio a/b. Benches whose figure should not be bounded by the sink's speed use
smtp-sink. Needs root and Postfix.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time

import _mta  # noqa: E402  (puts tests/ on sys.path)
from harness import PostfixInstance, SmtpSink, available, free_port  # noqa: E402


def inject(pf: PostfixInstance, n: int) -> None:
    subprocess.run(["smtp-source", "-s", "4", "-m", str(n), "-l", "1024", "-f", "bench@senders.test",
                    "-t", "member@members.test", f"127.0.0.1:{pf.smtpd_port}"], check=True, timeout=600)


def wait_sent(pf: PostfixInstance, since: int, n: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(pf.maillog, "rb") as fh:
            fh.seek(since)
            if len(re.findall(rb"status=sent", fh.read())) >= n:
                return
        time.sleep(0.05)
    raise TimeoutError("deliveries did not complete")


def round_trip(pf: PostfixInstance, relay_port: int, n: int) -> float:
    pf.set(relayhost=f"[127.0.0.1]:{relay_port}")
    pf.wait_queue_empty(timeout=120)
    since = pf.log_offset()
    t0 = time.perf_counter()
    inject(pf, n)
    wait_sent(pf, since, n)
    return n / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    _mta.common_args(ap)
    args = ap.parse_args()
    if args.quick:
        args.messages, args.rounds = 100, 1
    if not available():
        print("needs root and Postfix", file=sys.stderr)
        return 2

    starts, stops = [], []
    for _ in range(args.rounds):
        pf = PostfixInstance()
        t0 = time.perf_counter()
        pf.start()
        starts.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        pf.close()
        stops.append(time.perf_counter() - t0)

    ours, theirs = [], []
    sink_port = free_port()
    smtp_sink = subprocess.Popen(["smtp-sink", "-u", "nobody", f"127.0.0.1:{sink_port}", "256"])
    try:
        with SmtpSink() as sink, PostfixInstance(sink_port=sink.port) as pf:
            round_trip(pf, sink.port, 20)                       # warm-up: processes started
            for _ in range(args.rounds):
                ours.append(round_trip(pf, sink.port, args.messages))
                theirs.append(round_trip(pf, sink_port, args.messages))
            assert len(sink.messages_for("member@members.test")) == 20 + args.rounds * args.messages
    finally:
        smtp_sink.terminate()
        smtp_sink.wait(10)

    print("### Test harness (bench/harness.py)\n")
    print(f"{args.messages} messages x {args.rounds} rounds, best round; load average {_mta.loadavg()} at the end.\n")
    print("| measure | value |")
    print("|---|---|")
    print(f"| PostfixInstance start (postfix check + 220 banners), s | {min(starts):.2f} |")
    print(f"| PostfixInstance stop + cleanup, s | {min(stops):.2f} |")
    print(f"| Postfix → SmtpSink (aiosmtpd), msg/s | {max(ours):.0f} |")
    print(f"| Postfix → smtp-sink, msg/s | {max(theirs):.0f} |")
    print(f"| ratio SmtpSink / smtp-sink | {max(ours) / max(theirs):.2f} |\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
