"""Postfix throughput through listgate's milter, against a null milter and against no milter, same run.

    python bench/milters.py [--messages N] [--sessions S] [--rounds R] [--quick]

One private Postfix on loopback (``tests/harness``, main.cf from INSTALL's
snippet) with three smtpds that differ in ``smtpd_milters`` only:

* the public smtpd: a real ``listgate milter`` daemon (unix socket, INSTALL's
  per-milter settings);
* ``null``: a pymilter milter that negotiates what listgate's does for mail
  with no list recipient (CONNECT and MAIL without reply, RCPT answered,
  ACCEPT at DATA, only the DELRCPT action) and does nothing else, with the
  same per-milter settings. libmilter's thread per connection and its
  round trips are the floor of every pymilter milter;
* ``nomilter``: ``-o smtpd_milters=``.

No policy service. ``smtp-source`` sends ``N`` messages of 2000 bytes over
``S`` sessions to each, the order rotated every round, for ``R`` rounds.
Cases and targets (median of the rounds' ratios):

* **b. no list recipient** (``bob@members.test``): listgate's milter vs the
  null milter, >= 0.97;
* **c. list posts** (a member's post to ``demo@lists.example.org``):
  listgate's milter stores each post as a qfile (fsync'd) and Postfix
  discards the transaction; without a milter Postfix queues the message (to
  its ``discard`` transport, as INSTALL's ``transport_maps`` says). >= 0.5.

Other mail goes to Postfix's ``discard`` transport: the bench measures
acceptance, not delivery. CPU per message from ``/proc``, until Postfix's
queue has drained: of this Postfix and the milter together (other users of a
shared machine do not count), and of the milter process alone. At the end the bench
checks with ``listgate queue ls`` that every list post was stored.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _mta
from _mta import LIST, BenchPostfix, Daemon, median, smtp_source

MEMBER = "member@senders.test"
OTHER = "bob@members.test"
MILTER_OPTS = "connect_timeout=10s, command_timeout=30s, content_timeout=120s, default_action=tempfail, protocol=6"

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
os.umask(0o007)  # the socket directory is group postfix: Postfix's processes connect
Milter.runmilter("null", "unix:" + sys.argv[1], 240)
'''


class NullMilter:
    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> "NullMilter":
        self.proc = subprocess.Popen([sys.executable, "-c", NULL_MILTER, str(self.path)])
        deadline = time.monotonic() + 20
        while not self.path.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError("the null milter did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.proc.kill()
        self.proc.wait(10)


def stored_posts(site: str) -> int:
    """qfiles in listgate's ``in`` queue (``listgate queue ls in --json``)."""
    return len(json.loads(_mta.listgate(site, "queue", "ls", "in", "--json"))["in"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _mta.load_args(ap, rounds=5)
    args = _mta.parse(ap, {"messages": 200, "rounds": 3})
    tmp = Path(tempfile.mkdtemp(prefix="lgbench-milter-"))
    pf = None
    try:
        # the instance lives under the Postfix workdir: Postfix's processes reach its unix socket
        pf = BenchPostfix(extra={"default_transport": "discard:bench"}, services={
            "nomilter": {"smtpd_milters": ""},
            "null": {"smtpd_milters": "PLACEHOLDER"},
        })
        sockdir = _mta.postfix_socket_dir(pf.workdir)
        null_sock = sockdir / "null.sock"
        pf.services["null"]["smtpd_milters"] = f"{{ unix:{null_sock}, {MILTER_OPTS} }}"
        pf.milter = f"unix:{sockdir / 'milter.sock'}"
        site = _mta.init_instance(tmp / "inst", milter_socket=pf.milter, policy_socket="inet:9@127.0.0.1",
                                  reinject_port=pf.reinject_port)
        _mta.listgate(site, "members", "add", LIST, MEMBER)
        with Daemon(site, "milter", log=tmp / "milter.log") as daemon, NullMilter(null_sock) as null:
            pf.start()
            ports = {"listgate": pf.smtpd_port, "null": pf.ports["null"], "none": pf.ports["nomilter"]}
            for port in ports.values():  # warm-up: smtpd processes started, the milter's store opened
                smtp_source(port, OTHER, 40, args.sessions)
                smtp_source(port, LIST, 10, 2, sender=MEMBER)
            pids = {"listgate": [daemon.pid], "null": [null.proc.pid]}

            def side(name: str, rcpt: str, sender: str):
                return lambda: _mta.throughput(pf, ports[name], rcpt, args.messages, args.sessions,
                                               pids.get(name, []), sender=sender)

            other = _mta.alternate(args.rounds, {n: side(n, OTHER, "someone@senders.test") for n in ports})
            posts = _mta.alternate(args.rounds, {n: side(n, LIST, MEMBER) for n in ("listgate", "none")})
            rss = _mta.memory_mib(daemon.pid)
            stored = stored_posts(site)
    finally:
        if pf is not None:
            pf.close()
        shutil.rmtree(tmp, ignore_errors=True)
    expected = 10 + args.rounds * args.messages
    if stored != expected:
        raise SystemExit(f"listgate stored {stored} list posts, expected {expected}")

    def med(runs, side, key="rate"):
        return median([r[key] for r in runs[side]])

    def ratio(runs, a, b):
        return median([x["rate"] / y["rate"] for x, y in zip(runs[a], runs[b])])

    rb, rc = ratio(other, "listgate", "null"), ratio(posts, "listgate", "none")

    def cpu_ratio(runs, a, b):
        return median([y["cpu"] / x["cpu"] for x, y in zip(runs[a], runs[b])])

    print("### Milter (bench/milters.py)\n")
    print(f"{args.messages} messages x {args.rounds} rounds, {args.sessions} smtp-source sessions, 2000 bytes, "
          f"medians; load average {_mta.loadavg()} at the end.\n")
    print("| mail | smtpd_milters | msg/s | CPU µs/msg, Postfix + milter | CPU µs/msg, the milter alone |")
    print("|---|---|---|---|---|")
    for runs, mail, sides in ((other, "no list recipient", ("none", "null", "listgate")),
                              (posts, "list post", ("none", "listgate"))):
        for s in sides:
            name = {"none": "none", "null": "null pymilter milter", "listgate": "listgate"}[s]
            dcpu = f"{med(runs, s, 'cpu_daemon'):.0f}" if s != "none" else ""
            print(f"| {mail} | {name} | {med(runs, s):.0f} | {med(runs, s, 'cpu'):.0f} | {dcpu} |")
    print(f"\n- b. no list recipient, listgate / null milter: **{rb:.2f}** (target >= 0.97); "
          f"listgate / no milter: {ratio(other, 'listgate', 'none'):.2f}, null milter / no milter: "
          f"{ratio(other, 'null', 'none'):.2f}; CPU per message null/listgate "
          f"{cpu_ratio(other, 'listgate', 'null'):.2f}")
    print(f"- c. list posts, listgate / no milter: **{rc:.2f}** (target >= 0.5); CPU per message none/listgate "
          f"{cpu_ratio(posts, 'listgate', 'none'):.2f}; {stored} posts stored, as many as sent")
    print(f"- listgate milter RSS after the run: {rss[0]:.0f} MiB (peak {rss[1]:.0f} MiB)\n")
    _mta.summary(args, "b. Postfix + listgate milter vs + null milter, no list recipient", f"{rb:.2f}", ">= 0.97",
                 rb >= 0.97, f"{med(other, 'listgate'):.0f} vs {med(other, 'null'):.0f} msg/s; "
                 f"CPU/msg ratio {cpu_ratio(other, 'listgate', 'null'):.2f}")
    _mta.summary(args, "c. list posts, Postfix + listgate milter vs Postfix alone", f"{rc:.2f}", ">= 0.5",
                 rc >= 0.5, f"{med(posts, 'listgate'):.0f} vs {med(posts, 'none'):.0f} msg/s; "
                 f"CPU/msg ratio {cpu_ratio(posts, 'listgate', 'none'):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
