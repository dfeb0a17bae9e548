"""The PostgreSQL store against SQLite, same run: RCPT decisions for a big list, and Postfix's throughput.

    python bench/pg.py [--members N] [--requests R] [--messages M] [--rounds K] [--quick]

A private PostgreSQL (Debian's ``postgresql`` binaries, ``initdb`` into a
temporary directory, a unix socket only, run as an unprivileged user: the
tests' :class:`pg_helpers.PostgresServer`), stopped and removed at the end.
Two fresh ``listgate init`` instances with the same list of ``--members``
members (100,000; 20,000 with ``--quick``), imported with ``listgate members
import``: one on SQLite (the default), one on a database of its own on the
PostgreSQL server (``listgate store init``'s schema; pool ``{min: 0, max: 4}``).

1. **RCPT decision**: for each, a real ``listgate policy`` daemon answers
   ``--requests`` member posts from random members, then as many signed VERP
   bounces (null sender), one connection, one request at a time, as one
   smtpd asks (bench/scale.py's client): p50 and p99 in µs, and the first
   decision after start; and the PostgreSQL server's CPU per decision.
2. **Postfix throughput**, one private Postfix with four smtpds that differ
   in ``smtpd_milters`` and ``smtpd_recipient_restrictions`` only, each
   instance's ``listgate milter`` and ``listgate policy`` running:

   * list posts (a member's post to the list, INSTALL's stack: the policy
     service at RCPT, the milter storing the post as a qfile) through the
     SQLite instance's daemons against the PostgreSQL instance's;
   * mail with no list recipient (``bob@members.test``, to Postfix's
     ``discard`` transport): ``check_policy_service`` of the PostgreSQL
     instance, no milter, against no policy service and no milter (target
     >= 0.97). Such mail never reaches the store (the policy server answers
     from the list addresses in its configuration): the bench counts the
     scans of the database's tables meanwhile (``pg_stat_user_tables``),
     which must be none.

   ``smtp-source`` sends ``--messages`` of 2000 bytes over ``--sessions``
   to each side, alternately, ``--rounds`` rounds: medians of rates and of
   the rounds' ratios, and CPU µs per message from ``/proc`` until Postfix's
   queue has drained, of this Postfix and the instance's daemons (other
   users of a shared machine do not count), of the daemons alone, and of the
   PostgreSQL server. At the end it checks that every post was stored.

Needs root, Postfix and PostgreSQL's server binaries (``scripts/install-deps``).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import _mta
from _mta import LIST, BenchPostfix, Daemon, cpu_seconds, free_port, median, member, smtp_source
from milters import MILTER_OPTS, stored_posts
from policy import RCPT, TARGET
from scale import new_instance, policy_figures

from pg_helpers import PostgresServer, binaries, use_postgres

BACKENDS = ("sqlite", "postgresql")
SENDER = member(7)                      # a member of the list: its posts are accepted
STATS_QUIET = 11                        # s


def server_cpu(server: PostgresServer) -> float:
    """CPU seconds used so far by the PostgreSQL server: the postmaster, its live children,
    and the children it has reaped."""
    hz = os.sysconf("SC_CLK_TCK")
    with open(os.path.join(server.data, "postmaster.pid")) as fh:
        master = int(fh.readline())
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                f = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == master:
            total += sum(int(x) for x in f[11:15])
        elif int(f[1]) == master:
            total += int(f[11]) + int(f[12])
    return total / hz


def table_reads(server: PostgresServer, dbname: str) -> int:
    """Scans of ``dbname``'s tables by queries so far (``pg_stat_user_tables``: sequential and index
    scans; autovacuum's work is not counted). A backend flushes its statistics up to 10 s after
    it went idle (PostgreSQL 15's PGSTAT_IDLE_INTERVAL): ask after :data:`STATS_QUIET` s of quiet."""
    with server.superuser(dbname) as conn:
        return conn.execute("SELECT coalesce(sum(seq_scan + coalesce(idx_scan, 0)), 0) FROM pg_stat_user_tables"
                            ).fetchone()[0]


def instance(backend: str, args, tmp: Path, sockdir: Path, reinject_port: int, server: PostgresServer) -> dict:
    """A ``listgate init`` instance on ``backend`` with ``args.members`` members: import time and RCPT decisions."""
    port = free_port()
    site = new_instance(tmp / backend, port, milter_socket=f"unix:{sockdir / backend}.sock",
                        reinject_port=reinject_port)
    row = {"backend": backend, "site": site, "port": port, "db": None}
    if backend == "postgresql":
        row["db"] = use_postgres(site, server).rsplit("/", 1)[1]
    row["import"] = _mta.import_members(site, (member(i) for i in range(args.members)), tmp)
    s0 = server_cpu(server)
    row.update(policy_figures(site, port, args.members, args.requests))
    # policy_figures asks 2 x requests + 3 decisions
    row["cpu_pg"] = (server_cpu(server) - s0) / (2 * args.requests + 3) * 1e6
    return row


def postfix_runs(args, pf: BenchPostfix, rows: dict, server: PostgresServer) -> tuple[dict, dict, int]:
    """The alternating runs: (list posts per backend, no list recipient with/without, scans of
    the PostgreSQL instance's tables during the latter)."""
    sq, pg = rows["sqlite"], rows["postgresql"]
    with Daemon(sq["site"], "milter", log=Path(sq["site"]).parent / "milter.log") as sq_milter, \
            Daemon(sq["site"], "policy", log=Path(sq["site"]).parent / "policy.log") as sq_policy, \
            Daemon(pg["site"], "milter", log=Path(pg["site"]).parent / "milter.log") as pg_milter, \
            Daemon(pg["site"], "policy", log=Path(pg["site"]).parent / "policy.log") as pg_policy:
        pf.start()
        ports = {"sqlite": pf.smtpd_port, "postgresql": pf.ports["pg"], "with": pf.ports["pgpolicy"],
                 "without": pf.ports["plain"]}
        pids = {"sqlite": [sq_milter.pid, sq_policy.pid], "postgresql": [pg_milter.pid, pg_policy.pid],
                "with": [pg_policy.pid], "without": []}
        for name, port in ports.items():       # warm-up: smtpd processes started, stores and pools opened
            smtp_source(port, RCPT, 40, args.sessions)
            if name in BACKENDS:
                smtp_source(port, LIST, 10, 2, sender=SENDER)

        def side(name: str, rcpt: str, sender: str = "someone@senders.test"):
            def run() -> dict:
                d0 = sum(cpu_seconds(p) for p in pids[name])
                s0 = server_cpu(server)
                row = _mta.throughput(pf, ports[name], rcpt, args.messages, args.sessions, pids[name], sender=sender)
                row["cpu_daemons"] = (sum(cpu_seconds(p) for p in pids[name]) - d0) / args.messages * 1e6
                row["cpu_pg"] = (server_cpu(server) - s0) / args.messages * 1e6
                return row
            return run

        posts = _mta.alternate(args.rounds, {b: side(b, LIST, SENDER) for b in BACKENDS})
        time.sleep(STATS_QUIET)
        before = table_reads(server, pg["db"])
        other = _mta.alternate(args.rounds, {s: side(s, RCPT) for s in ("with", "without")})
        time.sleep(STATS_QUIET)
        seen = table_reads(server, pg["db"]) - before
    expected = 10 + args.rounds * args.messages
    for b in BACKENDS:
        stored = stored_posts(rows[b]["site"])
        if stored != expected:
            raise SystemExit(f"listgate on {b} stored {stored} list posts, expected {expected}")
    return posts, other, seen


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", type=int, default=100_000, help="list size (default 100000; --quick: 20000)")
    ap.add_argument("--requests", type=int, default=2000, help="policy requests of each kind (default 2000)")
    _mta.load_args(ap, rounds=5)
    args = _mta.parse(ap, {"members": 20_000, "requests": 500, "messages": 200, "rounds": 3})
    bindir = binaries()
    if bindir is None:
        print("PostgreSQL server binaries missing (/usr/lib/postgresql/*/bin): scripts/install-deps", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="lgbench-pg-"))
    server = PostgresServer(bindir)
    load0 = _mta.loadavg()
    t0 = time.perf_counter()
    pf = None
    try:
        server.start()
        pf = BenchPostfix(extra={"default_transport": "discard:bench"}, services={
            "pg": {"smtpd_milters": "PLACEHOLDER", "smtpd_recipient_restrictions": "PLACEHOLDER"},
            "pgpolicy": {"smtpd_milters": "", "smtpd_recipient_restrictions": "PLACEHOLDER"},
            "plain": {"smtpd_milters": "", "smtpd_recipient_restrictions": ""},
        })
        sockdir = _mta.postfix_socket_dir(pf.workdir)     # Postfix's processes reach the milters' sockets here
        rows = {b: instance(b, args, tmp, sockdir, pf.reinject_port, server) for b in BACKENDS}
        pf.milter = f"unix:{sockdir / 'sqlite.sock'}"
        pf.policy = f"inet:127.0.0.1:{rows['sqlite']['port']}"
        pg_policy = f"check_policy_service {{ inet:127.0.0.1:{rows['postgresql']['port']}, timeout=10s, default_action=DUNNO }}"
        pf.services["pg"].update(smtpd_milters=f"{{ unix:{sockdir / 'postgresql.sock'}, {MILTER_OPTS} }}",
                                 smtpd_recipient_restrictions=pg_policy)
        pf.services["pgpolicy"]["smtpd_recipient_restrictions"] = pg_policy
        posts, other, seen = postfix_runs(args, pf, rows, server)
    finally:
        if pf is not None:
            pf.close()
        server.destroy()
        shutil.rmtree(tmp, ignore_errors=True)
    report(args, bindir, rows, posts, other, seen, load0, time.perf_counter() - t0)
    return 0


def report(args, bindir: str, rows: dict, posts: dict, other: dict, seen: int, load0: str, took: float) -> None:
    def med(runs, s, key="rate"):
        return median([r[key] for r in runs[s]])

    def ratio(runs, a, b):
        return median([x["rate"] / y["rate"] for x, y in zip(runs[a], runs[b])])

    def cpu_ratio(runs, a, b):
        return median([(y["cpu"] + y["cpu_pg"]) / (x["cpu"] + x["cpu_pg"]) for x, y in zip(runs[a], runs[b])])

    version = Path(bindir).parent.name
    print("### PostgreSQL store against SQLite (bench/pg.py)\n")
    print(f"{args.members:,} members, {args.requests} requests of each kind, PostgreSQL {version} on a unix socket "
          f"(fsync off, as in the tests), {took:.0f} s; shared machine: load average {load0} at the start, "
          f"{_mta.loadavg()} at the end.\n")
    print("| store | members import s | first decision µs | member post p50 / p99 µs | signed VERP bounce p50 / p99 µs "
          "| PostgreSQL server CPU µs/decision |")
    print("|---|---|---|---|---|---|")
    for b in BACKENDS:
        r = rows[b]
        print(f"| {b} | {r['import']:.1f} | {r['first']:.0f} | {r['post50']:.0f} / {r['post99']:.0f} | "
              f"{r['verp50']:.0f} / {r['verp99']:.0f} | {r['cpu_pg']:.0f} |")
    print(f"\nPostfix, {args.messages} messages x {args.rounds} rounds, {args.sessions} smtp-source sessions, "
          "2000 bytes, medians:\n")
    print("| mail | smtpd | msg/s | CPU µs/msg, Postfix + listgate | of which listgate's daemons | PostgreSQL server |")
    print("|---|---|---|---|---|---|")
    names = {"sqlite": "policy + milter on SQLite", "postgresql": "policy + milter on PostgreSQL",
             "with": "policy service on PostgreSQL, no milter", "without": "no policy service, no milter"}
    for runs, mail in ((posts, "list post"), (other, "no list recipient")):
        for s in runs:
            print(f"| {mail} | {names[s]} | {med(runs, s):.0f} | {med(runs, s, 'cpu'):.0f} | "
                  f"{med(runs, s, 'cpu_daemons'):.0f} | {med(runs, s, 'cpu_pg'):.0f} |")
    rp, ro = ratio(posts, "postgresql", "sqlite"), ratio(other, "with", "without")
    rounds = ", ".join(f"{w['rate'] / wo['rate']:.2f}" for w, wo in zip(other["with"], other["without"]))
    print(f"\n- list posts, PostgreSQL / SQLite: **{rp:.2f}**; CPU per message (with the server's) SQLite/PostgreSQL "
          f"{cpu_ratio(posts, 'postgresql', 'sqlite'):.2f}")
    print(f"- no list recipient, policy service on PostgreSQL / none: **{ro:.2f}** (rounds: {rounds}); target >= "
          f"{TARGET}: {'met' if ro >= TARGET else 'NOT met'}; CPU per message without/with "
          f"{cpu_ratio(other, 'with', 'without'):.2f}; scans of the store's tables meanwhile: {seen}\n")
    pg = rows["postgresql"]
    _mta.summary(args, "g. RCPT decision p99, member post, PostgreSQL store", f"{pg['post99']:.0f} µs", "", None,
                 f"{args.members:,} members; SQLite {rows['sqlite']['post99']:.0f} µs")
    _mta.summary(args, "h. Postfix + policy service on PostgreSQL vs Postfix alone, no list recipient",
                 f"{ro:.2f}", f">= {TARGET}", ro >= TARGET,
                 f"{med(other, 'with'):.0f} vs {med(other, 'without'):.0f} msg/s; "
                 f"CPU/msg ratio {cpu_ratio(other, 'with', 'without'):.2f}; {seen} store table scans")
    _mta.summary(args, "i. list posts, store on PostgreSQL vs SQLite", f"{rp:.2f}", "", None,
                 f"{med(posts, 'postgresql'):.0f} vs {med(posts, 'sqlite'):.0f} msg/s")


if __name__ == "__main__":
    sys.exit(main())
