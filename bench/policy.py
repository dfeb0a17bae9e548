"""Postfix throughput with listgate's policy service against the same Postfix without it, same run.

    python bench/policy.py [--messages N] [--sessions S] [--rounds R] [--quick]

One private Postfix on loopback (``tests/harness``, main.cf from INSTALL's
snippet): its public smtpd asks a real ``listgate policy`` daemon about every
recipient (``smtpd_recipient_restrictions = check_policy_service { inet:...,
timeout=10s, default_action=DUNNO }``), no milter. A second smtpd of the same
Postfix is the same service with ``-o smtpd_recipient_restrictions=`` (no
policy check), and two more ask bench/null_policy.py instead, the floor of a
Python asyncio policy server (it answers DUNNO to everything without reading
what it is asked): with asyncio streams, and with an ``asyncio.Protocol`` as
listgate's server. ``smtp-source`` (Postfix's load generator) sends ``N``
messages of 2000 bytes over ``S`` parallel sessions to each, alternately, for
``R`` rounds; mail has no list recipient (``bob@members.test``), the mail an
MTA running listgate mostly sees. Postfix delivers it to its ``discard``
transport. Reported: the median rate of each, the median of the rounds'
ratios (target >= 0.97), and CPU per message from ``/proc`` until Postfix's
queue has drained: of this Postfix and the policy daemon together (other
users of a shared machine do not count: on a CPU-bound machine its ratio
without/with is what the throughput ratio tends to), and of the daemon alone
(steadier than msg/s on a shared machine: one policy request per message).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import _mta
from _mta import BenchPostfix, Daemon, free_port, median, smtp_source

RCPT = "bob@members.test"
NULL_POLICY = Path(__file__).with_name("null_policy.py")
TARGET = 0.97


def wired(pf) -> None:
    """The public smtpd asks listgate (an unknown list address is refused at RCPT), the other does not."""
    for port, refused in ((pf.smtpd_port, True), (pf.ports["nopolicy"], False)):
        with pf.smtp(port) as c:
            c.mail("someone@senders.test")
            code = c.rcpt(f"nolist@{_mta.DOMAIN}")[0]
            c.rset()
        if (code >= 500) != refused:
            raise RuntimeError(f"smtpd on {port} answered {code} for an unknown list address")


def null_policy(port: int, *options: str) -> subprocess.Popen:
    """bench/null_policy.py on ``127.0.0.1:port``, once it listens."""
    proc = subprocess.Popen([sys.executable, str(NULL_POLICY), str(port), *options], stdout=subprocess.PIPE)
    if proc.stdout.readline().strip() != b"ready":
        proc.kill()
        raise RuntimeError("bench/null_policy.py did not start")
    return proc


def measure(args, tmp: Path, prepare=None) -> tuple[dict[str, list], float]:
    """The alternating run in ``tmp``: (each side's figures per round, the policy daemon's RSS
    in MiB after it). Sides: ``without``, ``with`` (listgate), ``null`` and ``null_protocol``
    (bench/null_policy.py with streams, with a protocol).
    ``prepare(site_path)``: called once the instance is made (e.g. to put its store on
    PostgreSQL, bench/pg.py)."""
    policy_port = free_port()
    nulls = {"null": (free_port(), ()), "null_protocol": (free_port(), ("--protocol",))}
    services = {"nopolicy": {"smtpd_recipient_restrictions": ""}}
    for name, (port, _) in nulls.items():
        services[name] = {"smtpd_recipient_restrictions":
                          f"check_policy_service {{ inet:127.0.0.1:{port}, timeout=10s, default_action=DUNNO }}"}
    pf = BenchPostfix(policy=f"inet:{policy_port}@127.0.0.1", extra={"default_transport": "discard:bench"},
                      services=services)
    procs = {}
    try:
        for name, (port, options) in nulls.items():
            procs[name] = null_policy(port, *options)
        site = _mta.init_instance(tmp / "inst", milter_socket="unix:milter.sock",
                                  policy_socket=f"inet:{policy_port}@127.0.0.1", reinject_port=pf.reinject_port)
        if prepare is not None:
            prepare(site)
        with Daemon(site, "policy", log=tmp / "policy.log") as daemon:
            pf.start()
            wired(pf)
            for port in (pf.smtpd_port, *pf.ports.values()):  # warm-up: smtpd processes started
                smtp_source(port, RCPT, 40, args.sessions)
            sides = {
                "without": lambda: _mta.throughput(pf, pf.ports["nopolicy"], RCPT, args.messages, args.sessions),
                "with": lambda: _mta.throughput(pf, pf.smtpd_port, RCPT, args.messages, args.sessions, [daemon.pid]),
            }
            for name in nulls:
                sides[name] = (lambda name=name: _mta.throughput(pf, pf.ports[name], RCPT, args.messages,
                                                                 args.sessions, [procs[name].pid]))
            return _mta.alternate(args.rounds, sides), _mta.memory_mib(daemon.pid)[0]
    finally:
        pf.close()
        for proc in procs.values():
            proc.kill()
            proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _mta.load_args(ap, rounds=7)
    args = _mta.parse(ap, {"messages": 200, "rounds": 3})
    tmp = Path(tempfile.mkdtemp(prefix="lgbench-policy-"))
    try:
        runs, rss = measure(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ratios = [w["rate"] / wo["rate"] for w, wo in zip(runs["with"], runs["without"])]
    m = {side: {k: median([r[k] for r in rs]) for k in rs[0]} for side, rs in runs.items()}
    ratio = median(ratios)
    print("### Policy service: mail with no list recipient (bench/policy.py)\n")
    print(f"{args.messages} messages x {args.rounds} rounds, {args.sessions} smtp-source sessions, 2000 bytes, "
          f"medians; load average {_mta.loadavg()} at the end.\n")
    print("| smtpd | msg/s | CPU µs/msg, Postfix + policy daemon | CPU µs/msg, policy daemon | msg/s ratio to without "
          "| CPU/msg ratio without/this |")
    print("|---|---|---|---|---|---|")
    rows = (("without policy service", "without"),
            ("`check_policy_service`, bench/null_policy.py (asyncio streams, DUNNO to all)", "null"),
            ("`check_policy_service`, bench/null_policy.py --protocol (asyncio.Protocol, DUNNO to all)",
             "null_protocol"),
            ("`check_policy_service`, listgate", "with"))
    for label, side in rows:
        if side == "without":
            print(f"| {label} | {m[side]['rate']:.0f} | {m[side]['cpu']:.0f} | | | |")
            continue
        rate_ratio = median([r["rate"] / wo["rate"] for r, wo in zip(runs[side], runs["without"])])
        cpu_ratio = median([wo["cpu"] / r["cpu"] for r, wo in zip(runs[side], runs["without"])])
        print(f"| {label} | {m[side]['rate']:.0f} | {m[side]['cpu']:.0f} | {m[side]['cpu_daemon']:.0f} | "
              f"{rate_ratio:.2f} | {cpu_ratio:.2f} |")
    met = ratio >= TARGET
    cpu_ratio = median([wo["cpu"] / w["cpu"] for w, wo in zip(runs["with"], runs["without"])])
    print(f"\nratio with/without (median of the rounds' ratios): **{ratio:.2f}** "
          f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)}); target >= {TARGET}: {'met' if met else 'NOT met'}. "
          f"CPU per message without/with: {cpu_ratio:.2f}. Policy daemon RSS after the run: {rss:.0f} MiB.\n")
    _mta.summary(args, "a. Postfix + policy service vs Postfix alone, no list recipient", f"{ratio:.2f}",
                 f">= {TARGET}", met,
                 f"{m['with']['rate']:.0f} vs {m['without']['rate']:.0f} msg/s; CPU/msg ratio {cpu_ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
