"""Run every benchmark in bench/ and print one markdown report for BENCHMARKS.md.

    python bench/run.py [--quick] [--only NAME[,NAME...]]

Each bench runs in its own process (one failing does not hide the others;
the exit status is 1 if any failed) and prints its own markdown section;
this script prints the machine's description, the summary table against the
targets (from the benches' ``--summary`` rows), then every section, and how
long it all took. ``--quick`` passes ``--quick`` to each (short counts: a
check that the benches work, not figures to publish). A full run takes
about 10 minutes on a 2-core machine, most of it bench/scale.py (10,000 and
100,000 members through the whole stack, 1,000,000 in the store) and bench/pg.py
(100,000 members on SQLite and on PostgreSQL); ``--quick``
about 2 minutes.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _mta  # noqa: E402

# the MTA-level benches in the order of the summary table, then the harness's own figures
ORDER = ("policy", "milters", "lmtp", "fanout", "scale", "pg", "harness")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="pass --quick to every bench (a short validation run)")
    ap.add_argument("--only", help="comma-separated bench names (default: all of " + ", ".join(ORDER) + ")")
    args = ap.parse_args()
    names = [n for n in ORDER if not args.only or n in args.only.split(",")]
    machine = _mta.machine()
    t0 = time.perf_counter()
    sections, failed, times = [], [], {}
    with tempfile.NamedTemporaryFile("r", suffix=".jsonl", prefix="lgbench-summary-") as summary:
        for name in names:
            print(f"running bench/{name}.py ...", file=sys.stderr, flush=True)
            argv = [sys.executable, os.path.join(HERE, f"{name}.py"), "--summary", summary.name]
            if args.quick:
                argv.append("--quick")
            start = time.perf_counter()
            r = subprocess.run(argv, stdout=subprocess.PIPE, text=True)
            times[name] = time.perf_counter() - start
            sections.append(r.stdout)
            if r.returncode != 0:
                failed.append(name)
                sections.append(f"**bench/{name}.py failed with exit status {r.returncode}** (its stderr above)\n")
        rows = [json.loads(line) for line in summary.read().splitlines() if line.strip()]
    total = time.perf_counter() - t0
    print(f"Machine: {machine} (at the start). "
          f"`python3 bench/run.py{' --quick' if args.quick else ''}`, {total / 60:.1f} min "
          f"({', '.join(f'{n} {t:.0f} s' for n, t in times.items())}); load average {_mta.loadavg()} at the end.\n")
    print("| figure | value | target | met | |")
    print("|---|---|---|---|---|")
    for row in rows:
        met = {True: "yes", False: "**no**", None: ""}[row["met"]]
        print(f"| {row['figure']} | {row['value']} | {row['target']} | {met} | {row['note']} |")
    print()
    for text in sections:
        print(text)
    if failed:
        print("failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
