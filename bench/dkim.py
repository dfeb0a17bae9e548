"""Fan-out with DKIM signing on and off: deliveries per second through Postfix, same runner, same run.

    python bench/dkim.py [--members N] [--rounds R] [--size BYTES] [--per-member] [--quick]

A private Postfix (``tests/harness``) relays everything to Postfix's own
``smtp-sink`` on loopback, as in ``bench/fanout.py``. One instance, one
running ``listgate runner`` daemon, a 2048-bit RSA key made by dkimpy's
``dknewkey`` in ``dkim.keys``, and two lists with the same N members:
``plain@`` (``dkim_sign: false``) and ``signed@`` (``dkim_sign: true``;
RFC 6376 signature of the decorated post, ``app/signing.py``).

By default a post is signed once at intake and each member's copy differs
only in its envelope. ``--per-member`` sets ``web.base_url``: each copy then
gets its own ``List-Unsubscribe`` (RFC 8058), so the runner signs every copy
at hand-over, once per member (on both lists, the per-member fields are made;
only ``signed@`` signs).

Each timing starts when the post is queued (``listgate inject`` has returned)
and ends when Postfix has logged the N-th ``status=sent``. The lists
alternate for ``--rounds`` rounds; printed: deliveries/s (median), the median
of the rounds' ratios signed/unsigned, and CPU per delivery of the runner.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _mta
from _mta import DOMAIN, BenchPostfix, Daemon, LogCounter, SmtpSink, median

SENT = rb"status=sent"
LISTS = {"unsigned": f"plain@{DOMAIN}", "signed": f"signed@{DOMAIN}"}


def post(address: str, size: int, n: int) -> bytes:
    head = (f"From: {_mta.member(0)}\r\nTo: {address}\r\nSubject: bench {n}\r\n"
            f"Message-ID: <bench-{time.time_ns()}-{n}@members.test>\r\n\r\n").encode()
    line = b"x" * 70 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def make_key(directory: Path) -> str:
    """A new RSA key (dkimpy's ``dknewkey``, next to this Python); returns the PEM file."""
    tool = os.path.join(os.path.dirname(sys.executable), "dknewkey")
    subprocess.run([tool, "bench"], cwd=directory, check=True, capture_output=True)
    return str(directory / "bench.key")


def setup(directory: Path, reinject_port: int, keyfile: str, per_member: bool) -> str:
    """The instance: site DKIM key (signing off by default), lists plain@ and signed@."""
    site = _mta.init_instance(directory, milter_socket="unix:milter.sock",
                              policy_socket=f"inet:{_mta.free_port()}@127.0.0.1",
                              reinject_port=reinject_port, poll_interval="0.05s")

    def site_change(d):
        d["dkim"] = {"sign": False, "keys": [{"selector": "bench", "file": keyfile}]}
        if per_member:
            d.setdefault("web", {})["base_url"] = f"https://{DOMAIN}/lists"
    _mta._edit_yaml(Path(site), site_change)
    lists = directory / "lists.d"
    for side, address in LISTS.items():
        name = address.split("@")[0]
        text = (lists / "demo.yaml").read_text()
        (lists / f"{name}.yaml").write_text(text)
        _mta._edit_yaml(lists / f"{name}.yaml", lambda d, n=name, s=side: d.update(name=n, dkim_sign=(s == "signed")))
    return site


def fan_out(pf, site: str, address: str, n: int, size: int, rnd: int, runner_pid: int) -> dict:
    sent = LogCounter(pf, SENT)
    r0 = _mta.cpu_seconds(runner_pid)
    _mta.listgate(site, "inject", "-r", address, "-f", _mta.member(0), stdin=post(address, size, rnd))
    t0 = time.perf_counter()
    t1 = sent.wait(n, timeout=max(120, n / 10))
    return {"rate": n / (t1 - t0), "cpu_runner": (_mta.cpu_seconds(runner_pid) - r0) / n * 1e6}


def import_members(site: str, address: str, n: int, workdir: Path) -> None:
    path = workdir / "members.txt"
    path.write_text("".join(_mta.member(i) + "\n" for i in range(n)))
    _mta.listgate(site, "members", "import", address, str(path))
    path.unlink()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", type=int, default=2000, help="list members = deliveries per round (default 2000)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported (default 3)")
    ap.add_argument("--size", type=int, default=2000, help="message size in bytes (default 2000)")
    ap.add_argument("--per-member", action="store_true",
                    help="per-member List-Unsubscribe (web.base_url): every copy is signed at hand-over")
    args = _mta.parse(ap, {"members": 300, "rounds": 2})
    tmp = Path(tempfile.mkdtemp(prefix="lgbench-dkim-"))
    try:
        keyfile = make_key(tmp)
        with SmtpSink() as sink, BenchPostfix(sink_port=sink.port) as pf:
            site = setup(tmp / "inst", pf.reinject_port, keyfile, args.per_member)
            for address in LISTS.values():
                import_members(site, address, args.members, tmp)
            with Daemon(site, "runner", log=tmp / "runner.log") as runner:
                n = args.members
                fan_out(pf, site, LISTS["unsigned"], n, args.size, -1, runner.pid)   # warm-up
                runs = _mta.alternate(args.rounds, {
                    side: (lambda a=address: fan_out(pf, site, a, n, args.size, 0, runner.pid))
                    for side, address in LISTS.items()}, before=lambda: _mta.drained(pf))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    m = {side: {k: median([r[k] for r in rs]) for k in rs[0]} for side, rs in runs.items()}
    ratios = [s["rate"] / u["rate"] for s, u in zip(runs["signed"], runs["unsigned"])]
    ratio = median(ratios)
    mode = "every copy signed at hand-over (--per-member)" if args.per_member else "signed once per post"
    print("### DKIM signing and fan-out (bench/dkim.py)\n")
    print(f"{args.members} deliveries of a {args.size}-byte post, {mode}, median of {args.rounds} rounds; "
          f"load average {_mta.loadavg()} at the end.\n")
    print("| list | deliveries/s | CPU µs/delivery, runner |")
    print("|---|---|---|")
    for side in LISTS:
        print(f"| {side} ({LISTS[side]}) | {m[side]['rate']:.0f} | {m[side]['cpu_runner']:.0f} |")
    print(f"\nratio signed/unsigned: **{ratio:.2f}** (rounds: {', '.join(f'{r:.2f}' for r in ratios)}).\n")
    _mta.summary(args, f"DKIM signing cost in fan-out ({mode})", f"{ratio:.2f}", "-", None,
                 f"{m['signed']['rate']:.0f} vs {m['unsigned']['rate']:.0f} deliveries/s, {args.members} members")
    return 0


if __name__ == "__main__":
    sys.exit(main())
