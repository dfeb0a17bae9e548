"""``listgate status [--json | --check]``: the daemons, the queues and the stores at a glance.

Daemons: each one the site config calls for (``milter``, ``policy``,
``runner``, and ``lmtp``, ``web``, ``metrics`` when configured), from its
record in ``STATE_DIR/run`` (:mod:`listgate.daemons`): running or not, pid,
since when, its socket and whether that accepts a connection now (and, for the
policy server, the milter and LMTP, whether the daemon answers: :func:`answers`); ``serve``
when it runs them. Runner slices: the process holding each slice lock
(``listgate.queue.lock``). Queues: qfiles waiting and in progress, the oldest
one's age for ``retry`` (and ``bad``). Stores: each list's store answers a
read through the store contract (SQLite files not made yet are ``absent``:
made on first use); list files with errors are named. Site incidents: each
list's open ones (:mod:`listgate.app.site_incidents`: scope, since, reason,
paused until). Reading creates nothing (no queue folder, no store, no run
directory).

Exit status: 0 all well; 1 something needs an admin (a daemon down, a store
unavailable, ``bad`` not empty, a slice without a runner, a list file with errors,
a site incident open).

``--json`` prints one object with these stable keys::

    {"daemons": {NAME: {"running": bool, "pid": int|null, "since": float|null,
                        "socket": str|null, "accepting": bool|null}},      # NAME: serve (when it runs),
                                                                            # milter, policy, runner, lmtp, web, metrics
     "slices": [{"slice": "I/N", "pid": int|null, "host": str, "since": float|null, "live": bool}],
     "queues": {QUEUE: {"waiting": int, "in_progress": int, "oldest": str|null, "oldest_age": float|null}},
     "stores": {"NAME@DOMAIN": {"state": "ok"|"absent"|"unavailable", "error": str|null}},
     "lists_not_served": {"NAME@DOMAIN or FILE": [str, ...]},
     "incidents": {"NAME@DOMAIN": [{"scope": "*"|DOMAIN, "since": float, "last_failure": float,
                                    "reason": str, "paused": bool, "paused_until": float}]},
     "problems": [str, ...]}

(times are POSIX seconds, ages seconds; ``accepting`` is null for a daemon
without a socket, the runner).

``--check`` follows the Nagios plugin conventions (monitoring-plugins.org
guidelines): one line ``LISTGATE OK|WARNING|CRITICAL|UNKNOWN - summary | perfdata``
and exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN. CRITICAL: a daemon down or
not accepting, a store unavailable, a slice without a runner, a site
incident of scope all (every recipient of a list paused), or a threshold's
critical level reached; WARNING: a list file with errors, a site incident of one
domain, or a warning level reached. Thresholds: ``--retry-age`` (oldest qfile in ``retry``,
default 1h,1d), ``--bad`` (default 1,10), ``--shunt`` (default 1,10), each
``WARN,CRIT``.
"""
from __future__ import annotations

import os
import sys

from .. import clock, daemons
from ..config import parse_duration, parse_socket
from ..queue import QUEUES, QueueError, Switchboard, id_arrival
from ..queue.lock import holders
from ..serve import listening
from ..app import site_incidents
from ..store import StoreUnavailable, open_store, store_path
from .common import load_site, print_json
from .queue import _utc

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATE_NAMES = ("OK", "WARNING", "CRITICAL", "UNKNOWN")


def register(sub) -> None:
    p = sub.add_parser("status", help="daemons (up, pid, socket), runner slices, queue sizes, stores",
                       description="Exit 0 when all is well, 1 when something needs an admin. --check: "
                                   "Nagios plugin output and exit status (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN).")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="machine-readable output (keys in listgate status's docstring)")
    out.add_argument("--check", action="store_true", help="Nagios/Icinga plugin: one status line with perfdata")
    p.add_argument("--retry-age", default="1h,1d", metavar="WARN,CRIT",
                   help="--check: age of the oldest qfile in retry (default %(default)s)")
    p.add_argument("--bad", default="1,10", metavar="WARN,CRIT",
                   help="--check: qfiles in bad (default %(default)s)")
    p.add_argument("--shunt", default="1,10", metavar="WARN,CRIT",
                   help="--check: qfiles in shunt (default %(default)s)")
    p.set_defaults(func=cmd_status)


def expected_daemons(site) -> list[str]:
    """The daemons ``listgate serve`` runs for ``site`` (the split units run the first three)."""
    return (["milter", "policy", "runner"] + (["lmtp"] if site.conf.lmtp.socket else [])
            + (["web"] if site.conf.web.base_url else []) + (["metrics"] if site.conf.metrics.listen else []))


def daemon_socket(site, name: str) -> str | None:
    """The socket daemon ``name`` listens on (``inet:PORT@HOST`` for the metrics endpoint), or None."""
    conf = site.conf
    spec = {"milter": conf.milter.socket, "policy": conf.policy.socket, "lmtp": conf.lmtp.socket,
            "web": conf.web.listen}.get(name)
    if name == "metrics" and conf.metrics.listen:
        _, (host, port) = parse_socket("inet:" + conf.metrics.listen)
        spec = f"inet:{port}@{host}"
    return spec


ANSWER_TIMEOUT = 2.0     # seconds a daemon has to answer its protocol's opening (status)
# What each daemon is asked after the connect, and what its answer starts with. A stopped or hung
# process still gets the kernel to accept the connection (the listen backlog): only an answer
# shows that it serves.
_POLICY_PING = b"request=smtpd_access_policy\nprotocol_state=RCPT\nrecipient=\n\n"   # SMTPD_POLICY_README
# libmilter option negotiation (SMFIC_OPTNEG): version 6, every action allowed and every protocol
# step offered (as an MTA does), so no milter refuses the negotiation for want of one
_MILTER_OPTNEG = (b"\x00\x00\x00\x0dO" + (6).to_bytes(4, "big") + (0x1FF).to_bytes(4, "big")
                  + (0x1FFFFF).to_bytes(4, "big"))
_HELLO = {"policy": (_POLICY_PING, b"action="), "milter": (_MILTER_OPTNEG, None), "lmtp": (b"", b"220")}


def answers(site, name: str, spec: str) -> bool:
    """Whether daemon ``name`` on socket ``spec`` accepts a connection and, for the policy
    server, the milter and the LMTP server, answers its protocol's opening within
    :data:`ANSWER_TIMEOUT` (a policy request; libmilter's option negotiation, whose reply is
    an ``O`` packet; the LMTP greeting, RFC 2033 section 4.1)."""
    import socket
    hello = _HELLO.get(name)
    if hello is None:
        return listening(site, spec)
    send, expect = hello
    try:
        kind, where = parse_socket(spec)
    except ValueError:
        return listening(site, spec)        # what serve's readiness check says of such a spec
    family, addr = ((socket.AF_UNIX, site.resolve(where)) if kind == "unix"
                    else (socket.AF_INET6 if ":" in where[0] else socket.AF_INET, where))
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(ANSWER_TIMEOUT)
            s.connect(addr)
            if send:
                s.sendall(send)
            got = s.recv(512)
    except OSError:         # refused, reset, or no answer in time
        return False
    if name == "milter":
        return len(got) >= 5 and got[4:5] == b"O"
    return got.startswith(expect)


def _daemons(site, found_slices) -> dict:
    recs = daemons.records(site)
    out = {}
    serve = recs.get("serve")
    if serve is not None and serve.live:
        out["serve"] = {"running": True, "pid": serve.pid, "since": serve.data.get("started"),
                        "socket": None, "accepting": None}
    for name in expected_daemons(site):
        live = [r for n, r in recs.items() if daemons.kind(n) == name and r.live]
        rec = live[0] if live else None
        spec = daemon_socket(site, name)
        accepting = answers(site, name, spec) if spec else None
        running = rec is not None or bool(accepting)
        if name == "runner" and not running:
            running = any(h.live for h in found_slices)
        out[name] = {"running": running, "pid": rec.pid if rec else None,
                     "since": rec.data.get("started") if rec else None, "socket": spec, "accepting": accepting}
    return out


def _slices(found) -> list[dict]:
    slices = [{"slice": f"{h.slice}/{h.slices}", "pid": h.pid, "host": h.host, "since": h.since, "live": h.live}
              for h in found]
    # the slices of a slicing in use that nobody has ever locked: nobody serves them either
    known = {(h.slice, h.slices) for h in found}
    for n in sorted({h.slices for h in found if h.live}):
        slices += [{"slice": f"{i}/{n}", "pid": None, "host": "", "since": None, "live": False}
                   for i in range(n) if (i, n) not in known]
    slices.sort(key=lambda s: tuple(reversed([int(x) for x in s["slice"].split("/")])))
    return slices


def _queues(site) -> dict:
    now = clock.now()
    queues = {}
    for name in QUEUES:
        q = {"waiting": 0, "in_progress": 0, "oldest": None, "oldest_age": None}
        queues[name] = q
        if not os.path.isdir(os.path.join(site.queue_dir, name)):   # a status makes no folder
            continue
        sb = Switchboard.for_site(site, name)
        waiting, held = sb.ids(), sb.held_ids()
        q["waiting"], q["in_progress"] = len(waiting), len(held)
        ids = sorted(waiting + held, key=lambda i: id_arrival(i) or now)
        if ids:
            q["oldest"] = ids[0]
            arrival = id_arrival(ids[0])
            q["oldest_age"] = round(max(0.0, now - arrival), 3) if arrival is not None else None
    return queues


def _stores(site) -> dict:
    out = {}
    for key in sorted(site.lists):
        if not site.conf.store.url and not os.path.exists(store_path(site, key)):
            out[key] = {"state": "absent", "error": None}     # made on first use; reading makes none
            continue
        try:
            open_store(site, key).get_member("listgate-status@invalid.invalid")
            out[key] = {"state": "ok", "error": None}
        except StoreUnavailable as exc:
            out[key] = {"state": "unavailable", "error": str(exc)}
    return out


def _incidents(site, stores: dict) -> dict:
    out = {}
    for key, state in stores.items():
        if state["state"] != "ok":
            continue
        try:
            found = site_incidents.open_incidents(open_store(site, key), site.lists[key])
        except StoreUnavailable:
            continue
        if found:
            out[key] = [{"scope": i.scope, "since": i.opened_at, "last_failure": i.last_failure_at,
                         "reason": i.reason, "paused": i.paused, "paused_until": i.resume_at}
                        for _, i in sorted(found.items())]
    return out


def _incident_problem(key: str, incident: dict) -> str:
    what = "all recipients" if incident["scope"] == site_incidents.ALL else f"recipients at {incident['scope']}"
    return f"site incident on {key}: {what} paused"


def gather(site) -> dict:
    """Everything ``listgate status`` reports (the ``--json`` object)."""
    found = holders(site.queue_dir)
    slices = _slices(found)
    data = {"daemons": _daemons(site, found), "slices": slices, "queues": _queues(site), "stores": _stores(site)}
    owners = {f: k for k, f in site.broken_lists.items()}
    data["lists_not_served"] = {owners.get(f, f): list(errs) for f, errs in site.list_errors.items()}
    data["incidents"] = _incidents(site, data["stores"])
    problems = []
    for name, d in data["daemons"].items():
        if not d["running"]:
            problems.append(f"{name} not running")
        elif d["accepting"] is False:
            problems.append(f"{name} not accepting on {d['socket']}")
    problems += [f"slice {s['slice']} has no runner" for s in slices if not s["live"] and _in_use(s, slices)]
    problems += [f"store of {k} unavailable" for k, s in data["stores"].items() if s["state"] == "unavailable"]
    # a live edit gone wrong and a daemon started with the broken file differ (daemons.broken_list_effect)
    problems += [daemons.broken_list_effect(site, owners[f], f) if f in owners
                 else f"list file {f} ignored (no valid name and domain in it)" for f in site.list_errors]
    problems += [_incident_problem(k, i) for k, found in data["incidents"].items() for i in found]
    if data["queues"]["bad"]["waiting"]:
        problems.append(f"{data['queues']['bad']['waiting']} qfile(s) in bad")
    data["problems"] = problems
    return data


def _in_use(s, slices) -> bool:
    n = s["slice"].split("/")[1]
    return any(o["live"] and o["slice"].split("/")[1] == n for o in slices)


def cmd_status(args) -> int:
    if args.check:
        return _check(args)
    site = load_site(args)
    data = gather(site)
    status = 1 if data["problems"] else 0
    if args.json:
        print_json(data)
        return status
    for name, d in data["daemons"].items():
        state = f"up, pid {d['pid']}" if d["running"] and d["pid"] else "up" if d["running"] else "DOWN"
        if d["since"]:
            state += f", since {_utc(d['since'])} UTC"
        if d["socket"]:
            state += f"; {d['socket']} " + ("accepts connections" if d["accepting"] else "NOT ACCEPTING")
        print(f"{name:<8}{state}")
    if not data["slices"]:
        print("runners: none has ever run on this queue directory")
    for s in data["slices"]:
        if s["live"]:
            print(f"slice {s['slice']}: runner pid {s['pid']} on {s['host']}, since {_utc(s['since'])} UTC")
        elif s["pid"] is None:
            print(f"slice {s['slice']}: no runner")
        else:
            print(f"slice {s['slice']}: no runner (last holder pid {s['pid']} on {s['host']}, gone)")
    for name, q in data["queues"].items():
        line = f"{name:<8}{q['waiting']:>6} waiting{q['in_progress']:>6} in progress"
        if name in ("retry", "bad", "shunt") and q["oldest"]:
            line += f"   oldest {q['oldest']} ({_age(q['oldest_age'])} old)"
        if name == "bad" and q["waiting"]:
            line += " (see: listgate queue ls bad; listgate queue requeue)"
        print(line)
    for key, s in data["stores"].items():
        note = s["error"] or ("made on first use" if s["state"] == "absent" else "")
        print(f"store {key}: {s['state']}" + (f" ({note})" if note else ""))
    for problem in data["problems"]:
        if problem.startswith("list "):
            print(f"{problem} (listgate check)")
    for key, found in data["incidents"].items():
        for i in found:
            state = f"paused until {_utc(i['paused_until'])} UTC" if i["paused"] else "trying one delivery"
            print(f"incident {key} scope {i['scope']}: since {_utc(i['since'])} UTC, {state}: {i['reason']}"
                  f" (listgate bounces show {key}; clear-incident)")
    return status


def _age(seconds) -> str:
    if seconds is None:
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _pair(text: str, what: str, duration: bool = False) -> tuple[float, float]:
    """``"WARN,CRIT"`` → two numbers (durations like 1h with ``duration``); ValueError names ``what``."""
    parts = text.split(",")
    if len(parts) != 2:
        raise ValueError(f"--{what} wants WARN,CRIT, not {text!r}")
    try:
        return tuple(parse_duration(p.strip()) if duration else float(p) for p in parts)  # type: ignore[return-value]
    except ValueError:
        raise ValueError(f"--{what} wants WARN,CRIT{' durations like 1h' if duration else ' numbers'}, "
                         f"not {text!r}") from None


def _check(args) -> int:
    """``--check``: the Nagios plugin line and exit status."""
    try:
        limits = {"retry_age": _pair(args.retry_age, "retry-age", duration=True),
                  "bad": _pair(args.bad, "bad"), "shunt": _pair(args.shunt, "shunt")}
        try:
            site = load_site(args)
        except SystemExit:
            print("LISTGATE UNKNOWN - the site configuration does not load (listgate check)")
            return UNKNOWN
        data = gather(site)
    except (ValueError, OSError, QueueError) as exc:
        print(f"LISTGATE UNKNOWN - {exc}")
        return UNKNOWN
    state, reasons = OK, []

    def worse(level: int, reason: str) -> None:
        nonlocal state
        state = max(state, level)
        reasons.append(reason)

    for problem in data["problems"]:
        if problem.startswith("list ") or (problem.startswith("site incident ")
                                           and not problem.endswith(": all recipients paused")):
            worse(WARNING, problem)
        elif not problem.endswith("in bad"):     # bad: by its thresholds below
            worse(CRITICAL, problem)
    queues = data["queues"]
    measured = {"retry_age": queues["retry"]["oldest_age"] or 0.0,
                "bad": queues["bad"]["waiting"] + queues["bad"]["in_progress"],
                "shunt": queues["shunt"]["waiting"] + queues["shunt"]["in_progress"]}
    for name, value in measured.items():
        warn, crit = limits[name]
        shown = _age(value) if name == "retry_age" else f"{value:g}"
        if value >= crit:
            worse(CRITICAL, f"{name.replace('_', ' ')} {shown}")
        elif value >= warn:
            worse(WARNING, f"{name.replace('_', ' ')} {shown}")
    up = sum(1 for d in data["daemons"].values() if d["running"])
    summary = "; ".join(reasons) if reasons else f"{up} daemon(s) up, queues normal"
    perf = [f"{name}={q['waiting'] + q['in_progress']};;;0" for name, q in queues.items()
            if name not in ("bad", "shunt")]
    perf += [f"retry_age={measured['retry_age']:g}s;{limits['retry_age'][0]:g};{limits['retry_age'][1]:g};0",
             f"bad={measured['bad']};{limits['bad'][0]:g};{limits['bad'][1]:g};0",
             f"shunt={measured['shunt']};{limits['shunt'][0]:g};{limits['shunt'][1]:g};0",
             f"daemons_up={up};;;0;{len(data['daemons'])}",
             f"incidents={sum(len(found) for found in data['incidents'].values())};;;0"]
    print(f"LISTGATE {STATE_NAMES[state]} - {summary} | {' '.join(perf)}")
    sys.stdout.flush()
    return state
