"""``listgate status [--json]``: who serves each queue slice, and what the queues hold.

One line per runner slice lock (``listgate.queue.lock``): the process holding
it, or that nobody does (the pid of the last holder is then history); then
the number of qfiles per queue (waiting, in progress) and the oldest one of
``bad``. Exit status 0; 1 (for monitoring) when ``bad`` holds something or a
slice has no live runner.
"""
from __future__ import annotations

import os

from ..queue import QUEUES, Switchboard
from ..queue.lock import holders
from .common import load_site, print_json
from .queue import _utc


def register(sub) -> None:
    p = sub.add_parser("status", help="runner slices (which process holds each) and queue sizes")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)


def cmd_status(args) -> int:
    site = load_site(args)
    found = holders(site.queue_dir)
    slices = [{"slice": f"{h.slice}/{h.slices}", "pid": h.pid, "host": h.host, "since": h.since, "live": h.live}
              for h in found]
    # the slices of a slicing in use that nobody has ever locked: nobody serves them either
    known = {(h.slice, h.slices) for h in found}
    for n in sorted({h.slices for h in found if h.live}):
        slices += [{"slice": f"{i}/{n}", "pid": None, "host": "", "since": None, "live": False}
                   for i in range(n) if (i, n) not in known]
    slices.sort(key=lambda s: tuple(reversed([int(x) for x in s["slice"].split("/")])))
    queues = {}
    for name in QUEUES:
        if not os.path.isdir(os.path.join(site.queue_dir, name)):   # a status makes no folder
            queues[name] = {"waiting": 0, "in_progress": 0, "oldest": None}
            continue
        sb = Switchboard.for_site(site, name)
        waiting = sb.ids()
        queues[name] = {"waiting": len(waiting), "in_progress": len(sb.held_ids()),
                        "oldest": waiting[0] if waiting else None}
    in_use = {s["slice"].split("/")[1] for s in slices if s["live"]}
    served = len(in_use) == 1 and all(s["live"] for s in slices if s["slice"].split("/")[1] in in_use)
    status = 0 if served and not queues["bad"]["waiting"] else 1
    if args.json:
        print_json({"slices": slices, "queues": queues})
        return status
    if not slices:
        print("runners: none has ever run on this queue directory")
    for s in slices:
        if s["live"]:
            print(f"slice {s['slice']}: runner pid {s['pid']} on {s['host']}, since {_utc(s['since'])} UTC")
        elif s["pid"] is None:
            print(f"slice {s['slice']}: no runner")
        else:
            print(f"slice {s['slice']}: no runner (last holder pid {s['pid']} on {s['host']}, gone)")
    for name, q in queues.items():
        line = f"{name:<8}{q['waiting']:>6} waiting{q['in_progress']:>6} in progress"
        if name == "bad" and q["waiting"]:
            line += f"   oldest {q['oldest']} (see: listgate queue ls bad; listgate queue requeue)"
        print(line)
    return status
