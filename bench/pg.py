"""The PostgreSQL store against SQLite, same run: RCPT decisions for a big list, and Postfix's throughput.

    python bench/pg.py [--members N] [--requests R] [--messages M] [--rounds K] [--quick]

A private PostgreSQL (Debian's ``postgresql`` binaries, ``initdb`` into a
temporary directory, a unix socket only, run as an unprivileged user: the
tests' :class:`pg_helpers.PostgresServer`), stopped and removed at the end.

1. **RCPT decision**, for a list of ``--members`` members (100,000; 20,000
   with ``--quick``) imported with ``listgate members import``: two fresh
   ``listgate init`` instances, one on SQLite (the default), one on a
   database of its own on the PostgreSQL server (``listgate store init``'s
   schema; pool ``{min: 0, max: 4}``). For each, a real ``listgate policy``
   daemon answers ``--requests`` member posts from random members, then as
   many signed VERP bounces (null sender), one connection, one request at a
   time, as one smtpd asks (bench/scale.py's client): p50 and p99 in µs, and
   the first decision after start.
2. **Throughput of mail with no list recipient**: bench/policy.py's run with
   the policy daemon on the PostgreSQL instance: one private Postfix whose
   public smtpd asks ``listgate policy`` at RCPT, a second smtpd of the same
   Postfix without the policy check; ``smtp-source`` sends ``--messages`` to
   each, alternately, ``--rounds`` rounds; the median of the rounds' ratios
   with/without (target >= 0.97). Such mail never reaches the store: the
   policy server answers from the list addresses in its configuration.

Needs root, Postfix and PostgreSQL's server binaries (``scripts/install-deps``).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import _mta
from _mta import free_port, median, member
from policy import TARGET, measure
from scale import new_instance, policy_figures

from pg_helpers import PostgresServer, binaries, use_postgres


def decisions(backend: str, n: int, requests: int, tmp: Path, server: PostgresServer) -> dict:
    """Import time and RCPT decision latency (scale.policy_figures) for ``n`` members on ``backend``."""
    port = free_port()
    site = new_instance(tmp / backend, port)
    if backend == "postgresql":
        use_postgres(site, server)
    row = {"backend": backend, "import": _mta.import_members(site, (member(i) for i in range(n)), tmp)}
    row.update(policy_figures(site, port, n, requests))
    return row


def throughput(args, tmp: Path, server: PostgresServer) -> dict:
    """bench/policy.py's alternating run, the policy daemon on PostgreSQL."""
    runs, _ = measure(args, tmp, prepare=lambda site: use_postgres(site, server))
    ratios = [w["rate"] / wo["rate"] for w, wo in zip(runs["with"], runs["without"])]
    return {"ratios": ratios, "ratio": median(ratios),
            "with": median([r["rate"] for r in runs["with"]]), "without": median([r["rate"] for r in runs["without"]]),
            "daemon": median([r["cpu_daemon"] for r in runs["with"]]),
            "null": median([r["cpu_daemon"] for r in runs["null"]])}


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
    t0 = time.perf_counter()
    try:
        server.start()
        rows = [decisions(b, args.members, args.requests, tmp, server) for b in ("sqlite", "postgresql")]
        tp = throughput(args, tmp, server)
    finally:
        server.destroy()
        shutil.rmtree(tmp, ignore_errors=True)
    version = Path(bindir).parent.name
    print("### PostgreSQL store against SQLite (bench/pg.py)\n")
    print(f"{args.members:,} members, {args.requests} requests of each kind, PostgreSQL {version} on a unix socket "
          f"(fsync off, as in the tests), {time.perf_counter() - t0:.0f} s; load average {_mta.loadavg()} "
          "at the end.\n")
    print("| store | members import s | first decision µs | member post p50 / p99 µs | signed VERP bounce p50 / p99 µs |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['import']:.1f} | {r['first']:.0f} | {r['post50']:.0f} / {r['post99']:.0f} | "
              f"{r['verp50']:.0f} / {r['verp99']:.0f} |")
    met = tp["ratio"] >= TARGET
    print(f"\nPostfix, mail with no list recipient, {args.messages} messages x {args.rounds} rounds, "
          f"{args.sessions} sessions: {tp['with']:.0f} msg/s with the policy service on PostgreSQL, "
          f"{tp['without']:.0f} without; ratio (median of the rounds') **{tp['ratio']:.2f}** "
          f"(rounds: {', '.join(f'{x:.2f}' for x in tp['ratios'])}); target >= {TARGET}: "
          f"{'met' if met else 'NOT met'}. Policy daemon CPU per message: {tp['daemon']:.0f} µs "
          f"(bench/null_policy.py in the same run: {tp['null']:.0f} µs).\n")
    pg = rows[1]
    _mta.summary(args, "g. RCPT decision p99, member post, PostgreSQL store", f"{pg['post99']:.0f} µs", "", None,
                 f"{args.members:,} members; SQLite {rows[0]['post99']:.0f} µs")
    _mta.summary(args, "h. Postfix + policy service on PostgreSQL vs Postfix alone, no list recipient",
                 f"{tp['ratio']:.2f}", f">= {TARGET}", met, f"{tp['with']:.0f} vs {tp['without']:.0f} msg/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
