"""Postfix with listgate's policy service + LMTP server, against no listgate and against the milter, same run.

    python bench/lmtp.py [--messages N] [--sessions S] [--rounds R] [--bounces B] [--quick]

One private Postfix on loopback (``tests/harness``, main.cf from INSTALL's
``main.cf.listgate-lmtp``) with three smtpds:

* the public smtpd: policy + LMTP as INSTALL configures it: a real
  ``listgate policy`` at RCPT, the list domain delivered from Postfix's queue
  to a real ``listgate lmtp`` on a unix socket;
* ``none``: ``-o smtpd_recipient_restrictions=`` (no listgate at all for
  mail with no list recipient: no policy lookup, no milter);
* ``milter``: the same policy check plus a real ``listgate milter``
  (``-o smtpd_milters=``, INSTALL's per-milter settings): main.cf.listgate's
  front end, which stores list mail at end of message and lets Postfix
  discard the transaction.

``smtp-source`` sends ``N`` messages of 2000 bytes over ``S`` sessions, the
order of the sides rotated every round, for ``R`` rounds; medians. Cases:

* **no list recipient** (``bob@members.test``, Postfix's ``discard``
  transport): policy + LMTP / none, target >= 0.97; policy + milter / none
  beside it;
* **list posts** (a member's post to ``demo@lists.example.org``): LMTP /
  milter, each timed until the post is durable in listgate's ``in`` queue
  (the milter: at smtp-source's last QUIT; LMTP: when Postfix's queue is
  empty, every recipient answered 250 by the LMTP server);
* **bounces** (an RFC 3464 DSN, null sender, to ``demo-bounces@``, ``N/2``
  a round, each round's for a member of its own; the bounce engine records
  each one inline): per second
  through the milter and through LMTP as above, and through ``listgate
  inject`` (Exim's pipe transport: one process per message, run here
  directly, ``--bounces`` of them one after another, no MTA).

CPU per message from ``/proc``, until Postfix's queue has drained: of this
Postfix and listgate's daemons (policy, LMTP, milter) together. No runner:
the bench checks at the end that every post sent is a qfile in ``in``
(``listgate queue ls``) and every bounce sent a recorded bounce event of
the member (read from the list's store).
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
from harness.postfix import postfix_socket

MEMBER = "member@senders.test"
OTHER = "bob@members.test"
BOUNCES = f"demo-bounces@{_mta.DOMAIN}"
MILTER_OPTS = "connect_timeout=10s, command_timeout=30s, content_timeout=120s, default_action=tempfail, protocol=6"
# RFC 3464: a DSN for member {gone} (smtp-source -F sends the file as the message, CRLF added per line)
DSN = """From: MAILER-DAEMON@mx.members.test
To: {bounces}
Subject: Undelivered Mail Returned to Sender
Message-ID: <bench-dsn@mx.members.test>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="b1"

--b1
Content-Type: text/plain

Your message could not be delivered to {gone}.
--b1
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.members.test

Final-Recipient: rfc822; {gone}
Action: failed
Status: 5.1.1
Diagnostic-Code: smtp; 550 5.1.1 <{gone}>: user unknown

--b1--
"""


def until_durable(pf, port: int, rcpt: str, messages: int, sessions: int, pids, *, sender: str,
                  extra: tuple[str, ...] = ()) -> dict:
    """``smtp-source`` to ``port``, timed until Postfix's queue is empty (LMTP: every
    recipient delivered to listgate); msg/s over that time, and CPU µs per message
    of this Postfix and ``pids``."""
    c0 = _mta.mta_cpu(pf, pids)
    t0 = time.perf_counter()
    _smtp_source(port, rcpt, messages, sessions, sender, extra)
    _mta.drained(pf)
    elapsed = time.perf_counter() - t0
    return {"rate": messages / elapsed, "cpu": (_mta.mta_cpu(pf, pids) - c0) / messages * 1e6}


def _smtp_source(port: int, rcpt: str, messages: int, sessions: int, sender: str, extra=()) -> None:
    size = () if "-F" in extra else ("-l", "2000")  # -F: the file is the message
    argv = [_mta.SMTP_SOURCE, "-s", str(sessions), "-m", str(messages), *size, "-f", sender, "-t", rcpt,
            "-M", "client.bench.test", *extra, f"127.0.0.1:{port}"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"smtp-source failed: {proc.stderr.strip()}")


class Gone:
    """Members whose mail bounces, a fresh one for every run of bounces: a member's
    bounce events grow with each bounce (and so does the work on the next one),
    and a real member does not bounce hundreds of times a day."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.used: list[str] = []

    def dsn_file(self) -> Path:
        """The DSN for the next member, as a file for ``smtp-source -F``."""
        path = self.workdir / f"dsn{len(self.used)}.txt"
        path.write_text(self.dsn())
        return path

    def dsn(self) -> str:
        self.used.append(f"gone{len(self.used)}@members.test")
        return DSN.format(gone=self.used[-1], bounces=BOUNCES)


def inject_bounces(site: str, count: int, dsn: str) -> float:
    """``count`` runs of ``listgate inject`` (Exim's pipe), one after another; bounces per second."""
    msg = dsn.replace("\n", "\r\n").encode()
    t0 = time.perf_counter()
    for _ in range(count):
        _mta.listgate(site, "inject", "--sender=", "--recipient", BOUNCES, "--queue-id", "bench", stdin=msg)
    return count / (time.perf_counter() - t0)


def counts(site_path: str, members: list[str]) -> tuple[int, int]:
    """(qfiles in ``in``, bounce events of ``members``)."""
    in_queue = len(json.loads(_mta.listgate(site_path, "queue", "ls", "in", "--json"))["in"])
    from listgate import config
    from listgate.store import open_store
    store = open_store(config.load(site_path), LIST)
    return in_queue, sum(len(store.events(address=m, limit=10**7)) for m in members)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _mta.load_args(ap, rounds=5)
    ap.add_argument("--bounces", type=int, default=20,
                    help="listgate inject runs a round, for the pipe's figure (default 20)")
    args = _mta.parse(ap, {"messages": 100, "rounds": 2, "bounces": 10})
    tmp = Path(tempfile.mkdtemp(prefix="lgbench-lmtp-"))
    gone = Gone(tmp)
    bounce_messages = args.messages // 2
    pf = None
    try:
        pf = BenchPostfix(extra={"default_transport": "discard:bench"}, services={
            "none": {"smtpd_recipient_restrictions": ""},
            "milter": {"smtpd_milters": "PLACEHOLDER",
                       # main.cf.listgate's macros (the LMTP snippet has none)
                       "milter_mail_macros": "i {auth_type} {auth_authen} {auth_author} {mail_addr} {mail_host} "
                                             "{mail_mailer} {client_addr}",
                       "milter_rcpt_macros": "i {rcpt_addr} {rcpt_host} {rcpt_mailer} {client_addr}"},
        })
        # the instance's sockets live under the Postfix workdir (INSTALL's layout: group postfix)
        sockdir = _mta.postfix_socket_dir(pf.workdir)
        policy = f"inet:{_mta.free_port()}@127.0.0.1"
        milter, lmtp = f"unix:{sockdir / 'milter.sock'}", f"unix:{sockdir / 'lmtp.sock'}"
        pf.services["milter"]["smtpd_milters"] = f"{{ {milter}, {MILTER_OPTS} }}"
        pf.policy, pf.lmtp = postfix_socket(policy), postfix_socket(lmtp)
        site = _mta.init_instance(tmp / "inst", milter_socket=milter, policy_socket=policy,
                                  reinject_port=pf.reinject_port)
        with open(site, "a", encoding="utf-8") as fh:
            fh.write(f"lmtp:\n  socket: {lmtp}\n")
        _mta.listgate(site, "members", "add", LIST, MEMBER)
        _mta.import_members(site, [f"gone{i}@members.test" for i in range(2 + 3 * args.rounds)], tmp)
        with Daemon(site, "policy", log=tmp / "policy.log") as pol, \
                Daemon(site, "lmtp", log=tmp / "lmtp.log") as lm, \
                Daemon(site, "milter", log=tmp / "milter.log") as mil:
            pf.start()
            ports = {"lmtp": pf.smtpd_port, "none": pf.ports["none"], "milter": pf.ports["milter"]}
            pids = {"lmtp": [pol.pid, lm.pid], "none": [], "milter": [pol.pid, mil.pid]}
            for port in ports.values():  # warm-up: smtpd processes started, the stores opened
                smtp_source(port, OTHER, 40, args.sessions)
            for name in ("lmtp", "milter"):
                until_durable(pf, ports[name], LIST, 10, 2, [], sender=MEMBER)
                until_durable(pf, ports[name], BOUNCES, 10, 2, [], sender="", extra=("-F", str(gone.dsn_file())))

            def other(name):
                return lambda: _mta.throughput(pf, ports[name], OTHER, args.messages, args.sessions, pids[name])

            def post(name):
                return lambda: until_durable(pf, ports[name], LIST, args.messages, args.sessions, pids[name],
                                             sender=MEMBER)

            def bounce(name):
                return lambda: until_durable(pf, ports[name], BOUNCES, bounce_messages, args.sessions, pids[name],
                                             sender="", extra=("-F", str(gone.dsn_file())))

            plain = _mta.alternate(args.rounds, {n: other(n) for n in ("lmtp", "none", "milter")})
            posts = _mta.alternate(args.rounds, {n: post(n) for n in ("lmtp", "milter")})
            bounces = _mta.alternate(args.rounds, {n: bounce(n) for n in ("lmtp", "milter")})
            piped = [inject_bounces(site, args.bounces, gone.dsn()) for _ in range(args.rounds)]
            rss = _mta.memory_mib(lm.pid)
            stored, events = counts(site, gone.used)
    finally:
        if pf is not None:
            pf.close()
        shutil.rmtree(tmp, ignore_errors=True)
    sent_posts = 2 * (10 + args.rounds * args.messages)
    sent_bounces = 2 * (10 + args.rounds * bounce_messages) + args.rounds * args.bounces
    if stored != sent_posts or events != sent_bounces:
        raise SystemExit(f"listgate stored {stored} posts and {events} bounce events, "
                         f"expected {sent_posts} and {sent_bounces}")

    def med(runs, side, key="rate"):
        return median([r[key] for r in runs[side]])

    def ratio(runs, a, b):
        return median([x["rate"] / y["rate"] for x, y in zip(runs[a], runs[b])])

    ra, rp, rb = ratio(plain, "lmtp", "none"), ratio(posts, "lmtp", "milter"), ratio(bounces, "lmtp", "milter")
    print("### LMTP front end (bench/lmtp.py)\n")
    print(f"{args.messages} messages x {args.rounds} rounds, {args.sessions} smtp-source sessions, 2000 bytes "
          f"(bounces: {bounce_messages} a round of a 0.6 KB DSN, each round for a member of its own), medians; "
          f"load average {_mta.loadavg()} at the end.\n")
    print("| mail | front end | msg/s | CPU µs/msg, Postfix + listgate |")
    print("|---|---|---|---|")
    rows = ((plain, "no list recipient", (("none", "no listgate"), ("milter", "policy + milter"),
                                          ("lmtp", "policy + LMTP"))),
            (posts, "list post, until stored", (("milter", "policy + milter"), ("lmtp", "policy + LMTP"))),
            (bounces, "bounce, until recorded", (("milter", "policy + milter"), ("lmtp", "policy + LMTP"))))
    for runs, mail, sides in rows:
        for s, name in sides:
            print(f"| {mail} | {name} | {med(runs, s):.0f} | {med(runs, s, 'cpu'):.0f} |")
    print(f"| bounce, until recorded | `listgate inject` (Exim's pipe, one process each, serial) | "
          f"{median(piped):.1f} | |")
    each = ", ".join(f"{x['rate'] / y['rate']:.2f}" for x, y in zip(plain["lmtp"], plain["none"]))
    print(f"\n- no list recipient, policy + LMTP / no listgate: **{ra:.2f}** (target >= 0.97; rounds {each}); "
          f"policy + milter / no listgate: {ratio(plain, 'milter', 'none'):.2f}")
    print(f"- list posts until stored, LMTP / milter: **{rp:.2f}**; bounces until recorded, LMTP / milter: "
          f"**{rb:.2f}**; {stored} posts stored and {events} bounces recorded, as many as sent")
    print(f"- listgate lmtp RSS after the run: {rss[0]:.0f} MiB (peak {rss[1]:.0f} MiB)\n")
    _mta.summary(args, "d. Postfix + policy + LMTP vs Postfix alone, no list recipient", f"{ra:.2f}", ">= 0.97",
                 ra >= 0.97, f"{med(plain, 'lmtp'):.0f} vs {med(plain, 'none'):.0f} msg/s")
    _mta.summary(args, "e. list posts until stored, LMTP vs milter", f"{rp:.2f}", "", None,
                 f"{med(posts, 'lmtp'):.0f} vs {med(posts, 'milter'):.0f} msg/s")
    _mta.summary(args, "f. bounces/s: milter, LMTP, inject", f"{med(bounces, 'milter'):.0f}, "
                 f"{med(bounces, 'lmtp'):.0f}, {median(piped):.1f}", "", None, "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
