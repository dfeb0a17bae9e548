"""Postfix throughput with the listgate milter against the same Postfix without it, same run.

    python bench/milter.py [--messages N] [--sessions S] [--rounds R]

One private Postfix on loopback (``tests/harness``, configured from INSTALL's
snippets): its public smtpd has ``smtpd_milters`` pointing at a real
``listgate milter`` daemon (unix socket); the re-injection smtpd from
``master.cf.listgate`` is the same Postfix without a milter. ``smtp-source``
(Postfix's load generator) sends ``N`` messages over ``S`` parallel sessions
to each, alternately, for ``R`` rounds; the median rate is reported.

Cases:

* **no list recipient** (mail to ``bob@members.test``): the milter sees
  connect, MAIL, RCPT and answers ACCEPT at DATA. Target ratio >= 0.9.
* **list post** (a member's post to ``demo@lists.example.org``): the milter
  routes the RCPT (member lookup in the list's SQLite store), collects the
  message, writes and fsyncs a qfile plus the duplicate record, and Postfix
  discards the transaction. Without the milter Postfix queues the message.
  Target ratio >= 0.75.

Delivery is to Postfix's ``discard`` transport in both setups (the bench
measures acceptance, not a sink). The Postfix queue is drained between runs.
"""
from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
# the script's own directory comes first on sys.path, and this file's name would
# shadow pymilter's C extension ``milter``: take it off
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))

import argparse  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from harness import PostfixInstance, available  # noqa: E402
from milter_helpers import Daemon, postfix_socket_dir  # noqa: E402

from listgate import config, instance  # noqa: E402
from listgate.queue import Switchboard  # noqa: E402
from listgate.store import open_store  # noqa: E402

DOMAIN = "lists.example.org"
SENDER = "member@senders.test"
SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
CASES = (("no list recipient", "bob@members.test", 0.9), ("list post", f"demo@{DOMAIN}", 0.75))


def send(port: int, rcpt: str, messages: int, sessions: int) -> float:
    """Messages per second for ``smtp-source`` sending ``messages`` to ``rcpt``."""
    argv = [SMTP_SOURCE, "-s", str(sessions), "-m", str(messages), "-l", "2000", "-f", SENDER, "-t", rcpt,
            "-M", "client.bench.test", f"127.0.0.1:{port}"]
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"smtp-source failed: {proc.stderr.strip()}")
    return messages / elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=500)
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--verbose", action="store_true", help="print every round's rates")
    args = ap.parse_args()
    if not available() or not os.path.exists(SMTP_SOURCE):
        print("needs root, Postfix and smtp-source", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="lgbench-milter-"))
    pf = PostfixInstance(extra={
        "default_transport": "discard:bench",
        # without the milter, list mail would sit in the deferred queue; discard it like other mail
        "transport_maps": f"inline:{{{DOMAIN}=discard:bench}}",
        "smtpd_client_connection_count_limit": "0",
        "smtpd_client_connection_rate_limit": "0",
        "smtpd_client_message_rate_limit": "0",
        "default_process_limit": "100",
    })
    try:
        sock = postfix_socket_dir(pf.workdir) / "milter.sock"
        site = config.load(instance.init(str(tmp / "inst"), domain=DOMAIN, milter_socket=f"unix:{sock}",
                                         policy_socket="inet:9@127.0.0.1", reinject_port=9))
        open_store(site, f"demo@{DOMAIN}").add_member(SENDER)
        pf.milter = f"unix:{sock}"
        with Daemon(site.path, str(sock), tmp / "milter.log", env={"PYTHONPATH": REPO}):
            pf.start()
            rows = []
            for name, rcpt, target in CASES:
                send(pf.smtpd_port, rcpt, 20, 2)     # warm-up: processes started, caches filled
                send(pf.reinject_port, rcpt, 20, 2)
                with_m, without = [], []
                for _ in range(args.rounds):
                    pf.wait_queue_empty(timeout=120)
                    without.append(send(pf.reinject_port, rcpt, args.messages, args.sessions))
                    pf.wait_queue_empty(timeout=120)
                    with_m.append(send(pf.smtpd_port, rcpt, args.messages, args.sessions))
                    if args.verbose:
                        print(f"  {name}: without {without[-1]:.1f}/s, with {with_m[-1]:.1f}/s", flush=True)
                a, b = statistics.median(with_m), statistics.median(without)
                rows.append((name, b, a, a / b, target))
            stored = len(Switchboard.for_site(site, "in").ids())
    finally:
        pf.close()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"Postfix + listgate milter vs Postfix alone ({args.messages} messages x {args.rounds} rounds, "
          f"{args.sessions} smtp-source sessions, median)")
    print(f"{'case':<20} {'without msg/s':>14} {'with msg/s':>11} {'ratio':>7} {'target':>7}")
    for name, b, a, ratio, target in rows:
        mark = "ok" if ratio >= target else "BELOW"
        print(f"{name:<20} {b:>14.1f} {a:>11.1f} {ratio:>7.2f} {'>=' + str(target):>7} {mark}")
    expected = 20 + args.rounds * args.messages
    print(f"qfiles stored for list posts: {stored} (expected {expected})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
