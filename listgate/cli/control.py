"""``listgate reload`` and ``listgate stop``: signal the running ``listgate serve`` (installs without systemd).

The running serve is found by its record in ``STATE_DIR/run``
(:mod:`listgate.daemons`); a record whose pid is gone, or is no longer a
listgate process, is not signalled. ``reload`` sends SIGHUP and waits until
serve has applied it (its record counts reloads), then prints what serve did:
children restarted because a restart-only setting changed, started or stopped
(:mod:`listgate.serve`). ``stop`` sends SIGTERM and waits until serve and its
children are gone (each finishes what it has in hand).

Exit status: 0 done (``stop``: also when serve was not running); 1 serve did
not answer within ``--timeout``, or the reload was refused (site file with
errors); 7 (``reload``: LSB's "program is not running") no serve runs.
"""
from __future__ import annotations

import os
import signal
import time

from .. import daemons
from .common import load_site

NOT_RUNNING = 7


def register(sub) -> None:
    p = sub.add_parser("reload", help="make the running listgate serve apply changed restart-only settings (SIGHUP)",
                       description="Sends SIGHUP to the running listgate serve and waits for it: children whose "
                                   "restart-only settings (sockets, logging, reinject, metrics) changed are "
                                   "restarted. Other settings need no reload. Exit 7 when serve is not running.")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for serve (default %(default)s)")
    p.set_defaults(func=cmd_reload)
    p = sub.add_parser("stop", help="stop the running listgate serve and its children (SIGTERM) and wait")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for serve (default %(default)s)")
    p.set_defaults(func=cmd_stop)


def _serve(site):
    rec = daemons.read_record(site, "serve")
    return rec if rec is not None and rec.live else None


def cmd_reload(args) -> int:
    site = load_site(args)
    rec = _serve(site)
    if rec is None:
        print("listgate: listgate serve is not running (no live record in "
              f"{daemons.run_dir(site)}); the split units: systemctl restart listgate-NAME")
        return NOT_RUNNING
    before = rec.data.get("reloads", 0)
    os.kill(rec.pid, signal.SIGHUP)
    end = time.monotonic() + args.timeout
    while time.monotonic() < end:
        now = daemons.read_record(site, "serve")
        if now is None or now.pid != rec.pid:
            print(f"listgate: serve (pid {rec.pid}) went away during the reload")
            return 1
        if now.data.get("reloads", 0) != before:
            result = now.data.get("reload_result") or "done"
            print(f"reloaded serve (pid {rec.pid}): {result}")
            return 1 if result.startswith("refused") else 0
        time.sleep(0.1)
    print(f"listgate: serve (pid {rec.pid}) did not finish the reload within {args.timeout:g}s")
    return 1


def cmd_stop(args) -> int:
    site = load_site(args)
    rec = _serve(site)
    if rec is None:
        print("listgate serve is not running")
        return 0
    children = [p for p in (rec.data.get("children") or {}).values() if isinstance(p, int)]
    os.kill(rec.pid, signal.SIGTERM)
    end = time.monotonic() + args.timeout
    while time.monotonic() < end:
        if not any(daemons.live(pid) for pid in [rec.pid, *children]):
            print(f"stopped serve (pid {rec.pid}) and its children")
            return 0
        time.sleep(0.1)
    print(f"listgate: serve (pid {rec.pid}) still runs after {args.timeout:g}s")
    return 1
