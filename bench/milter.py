"""Postfix throughput with the listgate milter against the same Postfix without it, same run.

    python bench/milter.py [--messages N] [--sessions S] [--rounds R] [--preallocate N]

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
  message, writes and fsyncs a qfile (over a slot file written in advance:
  ``milter.preallocate_qfiles``, 512 by default, covers a round of 500), and
  Postfix discards the transaction. Without the milter Postfix queues the
  message. Target ratio >= 0.75. Each round is a burst that the pool
  absorbs: before it, the bench waits until the milter's refill (which works
  in pauses between bursts; in production the runner also returns finished
  posts to the pool) has brought the pool back to full. ``--preallocate 0``
  shows the cost without a pool (every post creates a file).
* **reference: null milter** (same mail as the first case): a pymilter
  milter that negotiates what listgate's does and does nothing else, in
  place of listgate's, same Postfix, same run. Its ratio is the ceiling of
  any pymilter milter for the first case on this machine.

CPU per message is read from ``/proc``: the whole machine's busy time, and
the milter process's own.

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
REFERENCE = "no list rcpt, null milter"

# The reference milter: pymilter negotiating what listgate's milter negotiates
# for mail with no list recipient (CONNECT and MAIL without reply, RCPT
# answered, ACCEPT at DATA, only DELRCPT as an action) and doing nothing else.
# What it costs is the price of any pymilter milter here, listgate's logic aside.
NULL_MILTER = r'''
import os, sys, Milter

class Null(Milter.Base):
    def __init__(self):
        pass

    @Milter.noreply
    def connect(self, hostname, family, hostaddr):
        return Milter.CONTINUE

    @Milter.noreply
    def envfrom(self, mailfrom, *params):
        return Milter.CONTINUE

    def envrcpt(self, to, *params):
        return Milter.CONTINUE

    def data(self):
        return Milter.ACCEPT

    def negotiate(self, opts):
        rc = super().negotiate(opts)
        opts[0] = self._actions & Milter.DELRCPT
        return rc

Milter.factory = Null
Milter.set_flags(Milter.DELRCPT)
os.umask(0)  # a bench socket in a private directory: let Postfix's user connect
Milter.runmilter("null", "unix:" + sys.argv[1], 240)
'''


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time used so far (user + system, seconds): by process ``pid``, or by the
    whole machine (every core's busy time) when ``pid`` is None."""
    hz = os.sysconf("SC_CLK_TCK")
    if pid is None:
        with open("/proc/stat") as fh:
            f = [int(x) for x in fh.readline().split()[1:]]
        return (sum(f) - f[3] - f[4]) / hz  # all but idle and iowait
    with open(f"/proc/{pid}/stat") as fh:
        f = fh.read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / hz


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


def wait_pool(pool: Path, want: int, timeout: float = 60.0) -> None:
    """Wait until the milter's refill has brought ``pool`` back to ``want`` slot files
    (it writes them in pauses between bursts, as between these rounds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if sum(1 for n in os.listdir(pool) if not n.startswith(".")) >= want:
                return
        except FileNotFoundError:
            pass
        time.sleep(0.1)
    print(f"  (pool {pool} not refilled to {want} within {timeout:.0f}s)", flush=True)


def measure(pf, port: int, rcpt: str, args, pid: int | None, pool: tuple[Path, int] | None = None) -> dict:
    """Rounds of ``smtp-source`` to the smtpd without milter and to ``port``,
    alternately; medians of rate and CPU per message (machine, milter ``pid``).
    ``pool``: (directory, slot files) to wait for before each round with the milter."""
    send(port, rcpt, 20, 2)     # warm-up: processes started, caches filled
    send(pf.reinject_port, rcpt, 20, 2)
    runs: dict[str, list[float]] = {k: [] for k in ("without", "with", "cpu_base", "cpu_all", "cpu_milter")}
    for _ in range(args.rounds):
        pf.wait_queue_empty(timeout=120)
        c0 = cpu_seconds()
        runs["without"].append(send(pf.reinject_port, rcpt, args.messages, args.sessions))
        runs["cpu_base"].append((cpu_seconds() - c0) / args.messages * 1e6)
        pf.wait_queue_empty(timeout=120)
        if pool is not None:
            wait_pool(*pool)
        c0, m0 = cpu_seconds(), cpu_seconds(pid)
        runs["with"].append(send(port, rcpt, args.messages, args.sessions))
        runs["cpu_milter"].append((cpu_seconds(pid) - m0) / args.messages * 1e6)
        runs["cpu_all"].append((cpu_seconds() - c0) / args.messages * 1e6)
        if args.verbose:
            print(f"  {rcpt}: without {runs['without'][-1]:.1f}/s ({runs['cpu_base'][-1]:.0f} us CPU/msg), "
                  f"with {runs['with'][-1]:.1f}/s ({runs['cpu_all'][-1]:.0f} us CPU/msg, milter "
                  f"{runs['cpu_milter'][-1]:.0f})", flush=True)
    out = {k: statistics.median(v) for k, v in runs.items()}
    out["ratio"] = out["with"] / out["without"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=500)
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--preallocate", type=int, default=None,
                    help="milter.preallocate_qfiles for the instance (default: the shipped default)")
    ap.add_argument("--no-reference", action="store_true", help="skip the null-milter reference case")
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
    null = None
    rows = []
    try:
        sockdir = postfix_socket_dir(pf.workdir)
        sock = sockdir / "milter.sock"
        site_path = instance.init(str(tmp / "inst"), domain=DOMAIN, milter_socket=f"unix:{sock}",
                                  policy_socket="inet:9@127.0.0.1", reinject_port=9)
        if args.preallocate is not None:
            text = Path(site_path).read_text()
            Path(site_path).write_text(text.replace("milter:\n", f"milter:\n  preallocate_qfiles: {args.preallocate}\n", 1))
        site = config.load(site_path)
        preallocated = site.conf.milter.preallocate_qfiles
        open_store(site, f"demo@{DOMAIN}").add_member(SENDER)
        pf.milter = f"unix:{sock}"
        with Daemon(site.path, str(sock), tmp / "milter.log", env={"PYTHONPATH": REPO}) as daemon:
            pf.start()
            pool = (Path(site.queue_dir) / "in" / ".recycle", preallocated)
            for name, rcpt, target in CASES:
                rows.append((name, target, measure(pf, pf.smtpd_port, rcpt, args, daemon.proc.pid, pool)))
            stored = len(Switchboard.for_site(site, "in").ids())
            if not args.no_reference:
                null_sock = sockdir / "null.sock"
                null = subprocess.Popen([sys.executable, "-c", NULL_MILTER, str(null_sock)], cwd=str(tmp))
                deadline = time.monotonic() + 20
                while not null_sock.exists() and time.monotonic() < deadline:
                    time.sleep(0.05)
                # listgate's milter keeps running until every smtpd started before the
                # reload has exited (postfix reload lets them finish their client first)
                pf.set(smtpd_milters=f"{{ unix:{null_sock}, default_action=tempfail, protocol=6 }}")
                time.sleep(3)
                rows.append((REFERENCE, None, measure(pf, pf.smtpd_port, CASES[0][1], args, null.pid)))
    finally:
        if null is not None:
            null.kill()
            null.wait()
        pf.close()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"Postfix + milter vs Postfix alone ({args.messages} messages x {args.rounds} rounds, "
          f"{args.sessions} smtp-source sessions, median; milter.preallocate_qfiles={preallocated})")
    print(f"{'case':<26} {'without msg/s':>14} {'with msg/s':>11} {'ratio':>7} {'target':>7}")
    for name, target, m in rows:
        mark = "" if target is None else ("ok" if m["ratio"] >= target else "BELOW")
        print(f"{name:<26} {m['without']:>14.1f} {m['with']:>11.1f} {m['ratio']:>7.2f} "
              f"{'>=' + str(target) if target else '':>7} {mark}")
    print("CPU per message (machine busy time / milter process alone, microseconds, median):")
    for name, _, m in rows:
        print(f"  {name:<26} without milter {m['cpu_base']:>6.0f}   with milter {m['cpu_all']:>6.0f}   "
              f"milter process {m['cpu_milter']:>6.0f}")
    expected = 20 + args.rounds * args.messages
    print(f"qfiles stored for list posts: {stored} (expected {expected})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
