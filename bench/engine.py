"""Bounce engine throughput against the floor any engine pays, measured in the same run.

Floor: classify the bounce (``listgate.bounce.classify``) and record one
event in the list's store in its own transaction (SQLite, ``synchronous=FULL``):
every bounce costs at least that. listgate's ``handle_bounce`` adds VERP
decoding, member lookup, the scoring rules, evidence, and (for some) a probe
written durably to the virgin queue. The ratio is engine bounces/s over the
floor's.

Cases, each over ``--members`` members (one bounce per member, so each is scored):

* ``verp``: a DSN to the member's signed VERP address;
* ``plain``: the same DSN to ``L-bounces@D`` (attributed by the DSN);
* ``non-member``: a DSN naming a stranger (the case-insensitive fallback scans
  the members: its cost grows with the list).

Bounces are ``SPACING`` clock seconds apart (the domain-incident rule scans
the events of its window, so the bounce rate matters, not the list size).

    python bench/engine.py [--members N] [--rounds R]
"""
from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))
sys.path.insert(0, os.path.join(os.path.dirname(_HERE), "tests"))

import argparse  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from listgate import clock, config, instance, routing, verp  # noqa: E402
from listgate.bounce.classify import classify  # noqa: E402
from listgate.app.bounces import BounceEngine  # noqa: E402
from listgate.store import BounceEvent, open_store  # noqa: E402
from listgate.store import close_all  # noqa: E402

from engine_helpers import dsn  # noqa: E402

DOMAIN = "lists.example.org"
# Clock seconds between two bounces: 10 s is a heavy bounce rate (360 an hour
# inside the default 1 h domain-incident window, which each bounce scans).
SPACING = 10.0


def fresh(members: int):
    directory = tempfile.mkdtemp(prefix="lg-bench-engine-")
    site = config.load(instance.init(os.path.join(directory, "i"), policy_socket="inet:1@127.0.0.1"))
    lc = site.get_list("demo")
    store = open_store(site, f"demo@{DOMAIN}")
    with store.transaction():
        for i in range(members):
            store.add_member(f"member{i}@example{i}.com")
    return directory, site, lc, store


def floor(site, store, msgs) -> float:
    start = time.perf_counter()
    for addr, rcpt, msg in msgs:
        result = classify(msg, envelope_recipient=rcpt)
        f = result.failures[0]
        store.add_event(BounceEvent(at=clock.now(), address=f.address, bounce_class=f.bounce_class,
                                    status=f.status, attribution=f.attribution, action="floor"))
        clock.advance(SPACING)
    return len(msgs) / (time.perf_counter() - start)


def engine_rate(site, lc, msgs) -> float:
    engine = BounceEngine(site)
    start = time.perf_counter()
    for addr, rcpt, msg in msgs:
        decision = routing.decide_rcpt(site, rcpt, sender="")
        engine.handle_bounce(lc, msg, decision.address, verp_result=decision.verp, envelope_sender="")
        clock.advance(SPACING)
    return len(msgs) / (time.perf_counter() - start)


def cases(site, lc, members: int) -> dict[str, list]:
    out: dict[str, list] = {"verp": [], "plain": [], "non-member": []}
    for i in range(members):
        addr = f"member{i}@example{i}.com"
        msg = dsn(addr)
        out["verp"].append((addr, verp.member_bounce_address(site, lc, addr), msg))
        out["plain"].append((addr, f"demo-bounces@{DOMAIN}", msg))
        stranger = f"stranger{i}@elsewhere.example"
        out["non-member"].append((stranger, f"demo-bounces@{DOMAIN}", dsn(stranger)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    rows = []
    for case in ("verp", "plain", "non-member"):
        floors, engines = [], []
        for _ in range(args.rounds):
            for which in ("floor", "engine"):
                directory, site, lc, store = fresh(args.members)
                try:
                    clock.freeze(1_800_014_400.0)
                    msgs = cases(site, lc, args.members)[case]
                    if which == "floor":
                        floors.append(floor(site, store, msgs))
                    else:
                        engines.append(engine_rate(site, lc, msgs))
                finally:
                    clock.reset()
                    close_all()
                    shutil.rmtree(directory, ignore_errors=True)
        f, e = statistics.median(floors), statistics.median(engines)
        rows.append((case, f, e, e / f))
    print(f"bounce engine, {args.members} members, median of {args.rounds} rounds")
    print(f"{'case':<12} {'floor/s':>10} {'engine/s':>10} {'ratio':>7}")
    for case, f, e, r in rows:
        print(f"{case:<12} {f:>10.0f} {e:>10.0f} {r:>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
