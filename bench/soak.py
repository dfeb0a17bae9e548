"""Soak: the running stack under mixed load; each daemon's RSS and descriptors must plateau.

    python bench/soak.py [--messages 10000] [--connections 4] [--members 3]

The whole stack of the tests (tests/harness/stack.py: a private Postfix from
INSTALL's snippets, ``listgate serve`` with milter, policy server and runner,
an SMTP sink). ``--connections`` SMTP sessions send ``--messages`` messages to
Postfix's public smtpd, a mix of 40 % mail for other domains (the milter and
policy server look and pass), 40 % posts to the list (fanned out to the
members) and 20 % DSNs to the list's bounce address naming a member.

For the milter, the policy server and the runner, VmRSS (/proc/PID/status)
and open descriptors (/proc/PID/fd) are sampled: after a warm-up of 5 % of
the messages, every 10 % during the run, and after everything was delivered
and the stack was idle for a while. Exit status 1 when a daemon restarted, or
its RSS after the run exceeds the warm-up's by more than ``--rss-growth``
(default 50 %), or its descriptors by more than ``--fd-slack`` (default 5).
Needs root and Postfix.
"""
from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))
sys.path.insert(0, os.path.join(os.path.dirname(_HERE), "tests"))

import argparse  # noqa: E402
import smtplib  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

from harness import available  # noqa: E402
from harness.stack import Stack  # noqa: E402

DAEMONS = ("milter", "policy", "runner")
LIST = "demo@lists.example.org"
BOUNCES = "demo-bounces@lists.example.org"


def sample(st: Stack) -> dict[str, tuple[int, int, int]]:
    """``{daemon: (pid, rss_kib, fds)}``."""
    found = {}
    for name in DAEMONS:
        pid = st.child_pid(name)
        if pid is None:
            continue
        try:
            with open(f"/proc/{pid}/status", encoding="ascii") as fh:
                rss = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        except (OSError, StopIteration):
            continue
        found[name] = (pid, rss, fds)
    return found


def message(i: int, members: list[str]) -> tuple[str, list[str], bytes]:
    kind = i % 5
    mid = f"<soak-{i}-{time.monotonic_ns()}@soak.test>"
    if kind in (0, 1):   # not list mail
        return (f"s{i % 50}@senders.test", [f"r{i % 50}@elsewhere.test"],
                f"From: s@senders.test\r\nTo: r@elsewhere.test\r\nSubject: other {i}\r\nMessage-ID: {mid}\r\n\r\n"
                f"{'not list mail ' * 20}\r\n".encode())
    if kind in (2, 3):   # a post
        poster = members[i % len(members)]
        return (poster, [LIST], f"From: {poster}\r\nTo: {LIST}\r\nSubject: post {i}\r\nMessage-ID: {mid}\r\n\r\n"
                f"{'a post line ' * 20}\r\n".encode())
    member = members[i % len(members)]   # a DSN naming a member
    body = (f"From: MAILER-DAEMON@mx.members.test\r\nTo: {BOUNCES}\r\nSubject: Undelivered Mail\r\n"
            f"Message-ID: {mid}\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\r\n"
            "--B\r\nContent-Type: text/plain\r\n\r\nmailbox full\r\n"
            "--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.members.test\r\n\r\n"
            f"Final-Recipient: rfc822; {member}\r\nAction: delayed\r\nStatus: 4.2.2\r\n\r\n--B--\r\n")
    return "", [BOUNCES], body.encode()


def send_all(st: Stack, n: int, connections: int, members: list[str], progress) -> int:
    """Send messages 0..n-1 over ``connections`` sessions; returns how many were refused."""
    refused = [0]
    lock = threading.Lock()
    counter = iter(range(n))

    def worker():
        client = smtplib.SMTP("127.0.0.1", st.pf.smtpd_port, timeout=60)
        try:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                sender, rcpts, msg = message(i, members)
                try:
                    client.sendmail(sender, rcpts, msg)
                except smtplib.SMTPException:
                    with lock:
                        refused[0] += 1
                    client.rset()
                progress(i)
        finally:
            client.quit()

    threads = [threading.Thread(target=worker) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return refused[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=10000)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--rss-growth", type=float, default=0.5)
    ap.add_argument("--fd-slack", type=int, default=5)
    args = ap.parse_args()
    if not available():
        print("soak bench: needs root and Postfix; skipped")
        return 0
    members = [f"member{i}@members.test" for i in range(args.members)]
    samples: list[tuple[str, dict]] = []
    t0 = time.monotonic()
    with Stack(log_level="warning") as st:
        for m in members:
            st.listgate("members", "add", "demo", m)
        warm = max(1, args.messages // 20)
        step = max(1, args.messages // 10)
        marks = {warm - 1: "warm-up"} | {i - 1: f"{i} sent" for i in range(step, args.messages + 1, step)}

        def progress(i):
            if i in marks:
                samples.append((marks[i], sample(st)))

        refused = send_all(st, args.messages, args.connections, members, progress)
        sent_at = time.monotonic()
        st.settle(timeout=900)
        time.sleep(5)
        samples.append(("after, idle", sample(st)))
        lines = st.serve_text().count("child exited")
    print(f"soak: {args.messages} messages ({refused} refused) over {args.connections} sessions, "
          f"sent in {sent_at - t0:.0f} s, drained {time.monotonic() - sent_at:.0f} s later; "
          f"daemon restarts: {lines}")
    print(f"{'when':<14}" + "".join(f"{d + ' RSS KiB':>16}{'fds':>6}" for d in DAEMONS))
    for when, s in samples:
        print(f"{when:<14}" + "".join(f"{s.get(d, (0, 0, 0))[1]:>16}{s.get(d, (0, 0, 0))[2]:>6}" for d in DAEMONS))
    ok = lines == 0
    base, last = samples[0][1], samples[-1][1]
    for d in DAEMONS:
        if d not in base or d not in last or base[d][0] != last[d][0]:
            print(f"FAIL {d}: restarted or missing")
            ok = False
            continue
        if last[d][1] > base[d][1] * (1 + args.rss_growth):
            print(f"FAIL {d}: RSS {base[d][1]} -> {last[d][1]} KiB")
            ok = False
        if last[d][2] > base[d][2] + args.fd_slack:
            print(f"FAIL {d}: descriptors {base[d][2]} -> {last[d][2]}")
            ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
