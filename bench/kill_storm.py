"""The runner SIGKILL storm of issue 20 at full size: 30 kills during the fan-out of 25 posts to 300 members.

    python bench/kill_storm.py [--kills 30] [--posts 25] [--members 300] [--seed 20] [--rounds 1]

A ``listgate init`` instance whose re-injection target is an SMTP sink (it
commits a delivery when it answers the final dot, as Postfix's smtpd does);
the posts are queued in ``in`` as the milter would; one real ``listgate
runner`` process is SIGKILLed after a random share of the expected deliveries
and started again at once, ``--kills`` times (``tests/harness/storm.py``).
Printed per round: kills, deliveries missing, duplicates, qfiles left in
``bad``. Exit status 1 if anything was missing or in ``bad`` or there were
more duplicates than kills (the promise: at most the one transaction in
flight at each kill is sent twice). Needs no root and no Postfix.
"""
from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))
sys.path.insert(0, os.path.join(os.path.dirname(_HERE), "tests"))

import argparse  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

from harness.storm import Storm  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=30)
    ap.add_argument("--posts", type=int, default=25)
    ap.add_argument("--members", type=int, default=300)
    ap.add_argument("--seed", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=1, help="rounds with seeds SEED, SEED+1, ...")
    args = ap.parse_args()
    ok = True
    for r in range(args.rounds):
        work = tempfile.mkdtemp(prefix="listgate-bench-storm-")
        try:
            with Storm(work, members=args.members, seed=args.seed + r) as storm:
                storm.queue_posts(args.posts)
                fig = storm.kill_storm(args.kills)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(f"seed {args.seed + r}: {fig.line()}", flush=True)
        ok = ok and fig.missing == 0 and fig.bad == 0 and fig.duplicates <= fig.kills
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
