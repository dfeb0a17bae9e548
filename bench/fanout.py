"""Fan-out through Postfix: listgate's runner against smtp-source delivering the same messages, same run.

    python bench/fanout.py [--members N] [--rounds R] [--size BYTES] [--quick]

A private Postfix (``tests/harness``, INSTALL's snippets) relays everything
to Postfix's own ``smtp-sink`` on loopback. Two ways to push N
single-recipient deliveries through its re-injection smtpd
(``master.cf.listgate``):

* listgate: a member's post, handed to ``listgate inject`` (the Exim
  hand-off; the milter stores the same qfile), is taken by a running
  ``listgate runner`` daemon (``runner.poll_interval: 0.05s``), which applies
  the posting policy, decorates it and hands it over in one SMTP transaction
  per member with a signed VERP envelope sender, recording progress durably;
* baseline: ``smtp-source -s S -d -N -m N`` sends N messages of the same
  size, one recipient each, over S connections kept open (``--sessions``,
  default 4: the runner splits a post to more than 200 members into parts
  that its 4 delivery threads hand over in parallel, one connection each).

Each timing starts when the post is queued (``listgate inject`` has
returned) or when smtp-source starts, and ends when Postfix has logged the
N-th ``status=sent`` to the sink: both include Postfix's own work. The two
alternate for ``--rounds`` rounds; printed: deliveries/s of each (median),
the median of the rounds' ratios listgate/smtp-source (target >= 0.9), CPU
per delivery of this Postfix and of the runner (``/proc``), and the runner's
resident memory.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _mta
from _mta import LIST, BenchPostfix, Daemon, LogCounter, SmtpSink, median

TARGET = 0.9
SENT = rb"status=sent"


def post(size: int, n: int) -> bytes:
    """A member's post of about ``size`` bytes (a fresh Message-ID each time)."""
    head = (f"From: {_mta.member(0)}\r\nTo: {LIST}\r\nSubject: bench {n}\r\n"
            f"Message-ID: <bench-{time.time_ns()}-{n}@members.test>\r\n\r\n").encode()
    line = b"x" * 70 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def fan_out(pf, n: int, start, runner_pid: int) -> dict:
    """Run ``start()`` (it queues the deliveries and returns once they are handed
    on); from its return (``start_after``) or its call, until the n-th delivery is
    logged: deliveries/s, and CPU µs per delivery of this Postfix and of the runner."""
    sent = LogCounter(pf, SENT)
    c0, r0 = _mta.mta_cpu(pf), _mta.cpu_seconds(runner_pid)
    t0 = start()
    t1 = sent.wait(n, timeout=max(120, n / 10))
    return {"rate": n / (t1 - t0), "cpu_postfix": (_mta.mta_cpu(pf) - c0) / n * 1e6,
            "cpu_runner": (_mta.cpu_seconds(runner_pid) - r0) / n * 1e6}


def queue_post(site: str, size: int, rnd: int) -> float:
    """Hand a member's post to ``listgate inject``; the clock starts when it is queued."""
    _mta.listgate(site, "inject", "-r", LIST, "-f", _mta.member(0), stdin=post(size, rnd))
    return time.perf_counter()


def run_smtp_source(pf, n: int, size: int, sessions: int) -> float:
    """Start the clock, then ``smtp-source`` sends n one-recipient messages to the re-injection smtpd."""
    t0 = time.perf_counter()
    subprocess.run([_mta.SMTP_SOURCE, "-s", str(sessions), "-d", "-N", "-m", str(n), "-l", str(size),
                    "-f", f"bench@{_mta.DOMAIN}", "-t", "member@members.test", f"127.0.0.1:{pf.reinject_port}"],
                   check=True, stdout=subprocess.DEVNULL, timeout=900)
    return t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", type=int, default=2000, help="list members = deliveries per round (default 2000)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported (default 3)")
    ap.add_argument("--size", type=int, default=2000, help="message size in bytes (default 2000)")
    ap.add_argument("--sessions", type=int, default=4, help="smtp-source's parallel connections (default 4)")
    args = _mta.parse(ap, {"members": 300, "rounds": 2})
    tmp = Path(tempfile.mkdtemp(prefix="lgbench-fanout-"))
    try:
        with SmtpSink() as sink, BenchPostfix(sink_port=sink.port) as pf:
            site = _mta.init_instance(tmp / "inst", milter_socket="unix:milter.sock",
                                      policy_socket=f"inet:{_mta.free_port()}@127.0.0.1",
                                      reinject_port=pf.reinject_port, poll_interval="0.05s")
            _mta.import_members(site, (_mta.member(i) for i in range(args.members)), tmp)
            with Daemon(site, "runner", log=tmp / "runner.log") as runner:
                rss0 = _mta.memory_mib(runner.pid)[0]
                n = args.members
                fan_out(pf, n, lambda: queue_post(site, args.size, -1), runner.pid)  # warm-up: Postfix's processes
                runs = _mta.alternate(args.rounds, {
                    "listgate": lambda: fan_out(pf, n, lambda: queue_post(site, args.size, 0), runner.pid),
                    "smtp-source": lambda: fan_out(pf, n, lambda: run_smtp_source(pf, n, args.size, args.sessions),
                                                   runner.pid),
                }, before=lambda: _mta.drained(pf))
                rss = _mta.memory_mib(runner.pid)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    m = {side: {k: median([r[k] for r in rs]) for k in rs[0]} for side, rs in runs.items()}
    a, b = m["listgate"]["rate"], m["smtp-source"]["rate"]
    ratios = [x["rate"] / y["rate"] for x, y in zip(runs["listgate"], runs["smtp-source"])]
    ratio = median(ratios)
    print("### Fan-out (bench/fanout.py)\n")
    print(f"{args.members} deliveries of a {args.size}-byte post through the re-injection smtpd to smtp-sink, "
          f"median of {args.rounds} rounds; load average {_mta.loadavg()} at the end.\n")
    print("| sender | deliveries/s | CPU µs/delivery, Postfix | CPU µs/delivery, runner |")
    print("|---|---|---|---|")
    print(f"| listgate runner (one transaction per member, signed VERP, 4 delivery threads) | {a:.0f} | "
          f"{m['listgate']['cpu_postfix']:.0f} | {m['listgate']['cpu_runner']:.0f} |")
    print(f"| smtp-source (one recipient per message, {args.sessions} connections) | {b:.0f} | "
          f"{m['smtp-source']['cpu_postfix']:.0f} | (idle: {m['smtp-source']['cpu_runner']:.0f}) |")
    print(f"\nratio listgate/smtp-source: **{ratio:.2f}** (rounds: {', '.join(f'{r:.2f}' for r in ratios)}); "
          f"target >= {TARGET}: {'met' if ratio >= TARGET else 'NOT met'}. Runner RSS: {rss0:.0f} MiB idle, "
          f"{rss[0]:.0f} MiB after (peak {rss[1]:.0f} MiB).\n")
    _mta.summary(args, "d. fan-out through Postfix, listgate runner vs smtp-source", f"{ratio:.2f}", f">= {TARGET}",
                 ratio >= TARGET, f"{a:.0f} vs {b:.0f} deliveries/s, {args.members} members")
    return 0


if __name__ == "__main__":
    sys.exit(main())
