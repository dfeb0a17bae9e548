"""Scale: absolute figures for a big list (bulk add, RCPT decision latency, daemons' memory, fan-out time).

    python bench/scale.py [--members 10000,100000] [--store-members 1000000] [--delivery discard|sink] [--quick]

For each size in ``--members`` (the whole stack) and ``--store-members``
(the store alone: bulk add and decision latency), on a fresh instance made
with ``listgate init`` (list ``demo``, ``non_member_action: reject``):

1. **bulk add**: ``listgate members import demo@... FILE`` of that many
   addresses, wall time (the CLI process included);
2. **RCPT decision** through a real ``listgate policy`` daemon, by a client
   speaking Postfix's policy protocol over its socket (one connection,
   request, answer, next request, as one smtpd does): ``--requests`` member
   posts from members picked at random over the whole list, then as many
   signed VERP bounces (null sender, ``demo-bounces+...`` of random members);
   p50 and p99 in µs, and the very first decision after start (the store
   opened). Checked: members get ``DUNNO``, a non-member and a forged VERP
   get 550;
3. **resident memory** (``/proc/PID/status`` VmRSS, and the peak VmHWM) of
   each daemon: the policy daemon when ready and after its requests; then,
   with a private Postfix (``tests/harness``, INSTALL's snippets, no policy
   service): the ``listgate milter`` daemon when ready and after
   ``--requests`` non-member posts to the list, each refused at RCPT by the
   milter's member lookup; the ``listgate runner`` daemon when ready and
   after the fan-out below (and its peak);
4. **fan-out**: one member's post through Postfix and the milter; from the
   250 at end of DATA to the N-th delivery Postfix logs as ``status=sent``:
   the runner (``runner.poll_interval: 0.05s``) hands it over in one SMTP
   transaction per member, signed VERP, through the re-injection smtpd.
   ``--delivery discard`` (default): Postfix delivers to its ``discard``
   transport; ``sink``: it relays to Postfix's ``smtp-sink`` on loopback
   (slower: Postfix's own SMTP client then counts as well).

The printed markdown has one row per size and the growth between sizes
(figure at the larger size / figure at the smaller). Every size's run is
bounded (``--timeout`` for the fan-out). Needs root and Postfix for the
``--members`` sizes; ``--store-members`` needs neither.
"""
from __future__ import annotations

import argparse
import random
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import _mta
from _mta import LIST, BenchPostfix, Daemon, LogCounter, SmtpSink, free_port, member, percentile

from listgate import config, verp


def request(recipient: str, sender: str) -> bytes:
    """A policy request as Postfix's smtpd sends it at RCPT (SMTPD_POLICY_README)."""
    return (f"request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n"
            f"client_address=192.0.2.10\nclient_name=mx.example.net\nhelo_name=mx.example.net\n"
            f"sender={sender}\nrecipient={recipient}\nrecipient_count=0\nqueue_id=\n"
            f"instance=1a2b.5f00.1\nsize=0\n\n").encode()


def ask(s: socket.socket, req: bytes) -> str:
    s.sendall(req)
    data = s.recv(4096)
    while not data.endswith(b"\n\n"):
        more = s.recv(4096)
        if not more:
            raise ConnectionError("the policy server closed the connection")
        data += more
    return data.decode().strip()


def timed(s: socket.socket, reqs: list[bytes], want: str) -> list[float]:
    """Latency (µs) of each request; every answer must be ``action=WANT``."""
    out = []
    perf = time.perf_counter
    for req in reqs:
        t0 = perf()
        answer = ask(s, req)
        out.append((perf() - t0) * 1e6)
        if answer != f"action={want}":
            raise RuntimeError(f"policy answered {answer!r}, expected action={want}")
    return out


def policy_figures(site_path: str, port: int, n: int, requests: int) -> dict:
    """Decision latency and memory of a ``listgate policy`` daemon for a list of ``n`` members."""
    site = config.load(site_path)
    lc = site.get_list("demo")
    rng = random.Random(n)
    picks = [rng.randrange(n) for _ in range(requests)]
    posts = [request(LIST, member(i)) for i in picks]
    bounces = [request(verp.member_bounce_address(site, lc, member(i)), "") for i in picks]
    forged = request(verp.member_bounce_address(site, lc, member(0)).replace(f"{member(0).split('@')[0]}=",
                                                                               "intruder=", 1), "")
    with Daemon(site_path, "policy") as d:
        rss_ready = _mta.memory_mib(d.pid)[0]
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            first = timed(s, posts[:1], "DUNNO")[0]
            lat_post = timed(s, posts, "DUNNO")
            lat_verp = timed(s, bounces, "DUNNO")
            for req, what in ((request(LIST, "stranger@elsewhere.test"), "non-member post"), (forged, "forged VERP")):
                answer = ask(s, req)
                if not answer.startswith("action=550"):
                    raise RuntimeError(f"policy answered {answer!r} to a {what}, expected 550")
        rss_after, peak = _mta.memory_mib(d.pid)
    return {"first": first, "post50": percentile(lat_post, 0.5), "post99": percentile(lat_post, 0.99),
            "verp50": percentile(lat_verp, 0.5), "verp99": percentile(lat_verp, 0.99),
            "policy_rss": (rss_ready, rss_after, peak)}


def new_instance(directory: Path, policy_port: int, *, milter_socket: str = "unix:milter.sock",
                 reinject_port: int = 9) -> str:
    return _mta.init_instance(directory, milter_socket=milter_socket, policy_socket=f"inet:{policy_port}@127.0.0.1",
                              reinject_port=reinject_port, poll_interval="0.05s", non_member_action="reject")


def store_level(n: int, args, tmp: Path) -> dict:
    port = free_port()
    site = new_instance(tmp / f"store-{n}", port)
    row = {"n": n, "import": _mta.import_members(site, (member(i) for i in range(n)), tmp)}
    row.update(policy_figures(site, port, n, args.requests))
    shutil.rmtree(tmp / f"store-{n}", ignore_errors=True)
    return row


def full_stack(n: int, args, tmp: Path) -> dict:
    row = store_level(n, args, tmp)
    port = free_port()
    with SmtpSink() as sink:
        # one SMTP session refuses all the non-member posts: no error limit
        extra = {"smtpd_hard_error_limit": "1000000", "smtpd_soft_error_limit": "1000000"}
        if args.delivery == "discard":
            extra["default_transport"] = "discard:bench"
        pf = BenchPostfix(sink_port=sink.port, extra=extra)
        try:
            sock = _mta.postfix_socket_dir(pf.workdir) / "milter.sock"
            pf.milter = f"unix:{sock}"
            site = new_instance(tmp / f"stack-{n}", port, milter_socket=pf.milter, reinject_port=pf.reinject_port)
            _mta.import_members(site, (member(i) for i in range(n)), tmp)
            with Daemon(site, "milter", log=tmp / "milter.log") as milter, \
                    Daemon(site, "runner", log=tmp / "runner.log") as runner:
                pf.start()
                milter_ready, runner_ready = _mta.memory_mib(milter.pid)[0], _mta.memory_mib(runner.pid)[0]
                with pf.smtp() as c:
                    for i in range(args.requests):
                        c.mail(f"stranger{i}@elsewhere.test")
                        code = c.rcpt(LIST)[0]
                        if code < 500:
                            raise RuntimeError(f"a non-member post got {code} at RCPT, expected a refusal")
                        c.rset()
                milter_after = _mta.memory_mib(milter.pid)
                sent = LogCounter(pf, rb"status=sent")
                msg = (f"From: {member(0)}\r\nTo: {LIST}\r\nSubject: scale\r\n"
                       f"Message-ID: <scale-{n}-{time.time_ns()}@members.test>\r\n\r\n").encode()
                msg += (b"x" * 70 + b"\r\n") * 25
                with pf.smtp() as c:
                    c.sendmail(member(0), [LIST], msg)
                t0 = time.perf_counter()
                row["fanout"] = sent.wait(n, timeout=args.timeout) - t0
                runner_after = _mta.memory_mib(runner.pid)
            row["milter_rss"] = (milter_ready, *milter_after)
            row["runner_rss"] = (runner_ready, *runner_after)
        finally:
            pf.close()
            shutil.rmtree(tmp / f"stack-{n}", ignore_errors=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", default="10000,100000", help="list sizes for the whole stack (default 10000,100000)")
    ap.add_argument("--store-members", default="1000000",
                    help="list sizes for the store-level figures only: bulk add, decision latency (default 1000000)")
    ap.add_argument("--requests", type=int, default=2000, help="policy requests of each kind (default 2000)")
    ap.add_argument("--delivery", choices=("discard", "sink"), default="discard",
                    help="where Postfix delivers the fan-out (default discard)")
    ap.add_argument("--timeout", type=float, default=900, help="bound on one fan-out, seconds (default 900)")
    # the store-level sizes alone need no Postfix: checked below, once the sizes are known
    args = _mta.parse(ap, {"members": "1000,10000", "store_members": "100000", "requests": 500}, postfix=False)
    sizes = [int(x) for x in args.members.split(",") if x]
    store_sizes = [int(x) for x in args.store_members.split(",") if x]
    if sizes and _mta.needs_postfix():
        print(f"scale bench: {_mta.needs_postfix()}", file=sys.stderr)
        return 2
    desc = _mta.machine()
    tmp = Path(tempfile.mkdtemp(prefix="lgbench-scale-"))
    rows = []
    t_start = time.perf_counter()
    try:
        for n in sizes:
            rows.append(full_stack(n, args, tmp))
        for n in store_sizes:
            rows.append(store_level(n, args, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows.sort(key=lambda r: r["n"])
    print("### Scale (bench/scale.py)\n")
    print(f"Machine: {desc} (at the start); load average {_mta.loadavg()} at the end, "
          f"{time.perf_counter() - t_start:.0f} s in all. {args.requests} policy requests of each kind, one "
          f"connection; fan-out delivered to Postfix's {args.delivery} "
          f"{'transport' if args.delivery == 'discard' else '(smtp-sink)'}.\n")
    print("| members | bulk add, s | member post p50 / p99, µs | signed VERP p50 / p99, µs | first decision, µs | "
          "policy RSS ready / after, MiB | milter RSS ready / after, MiB | runner RSS ready / after / peak, MiB | "
          "fan-out of one post, s (deliveries/s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mil = " / ".join(f"{x:.0f}" for x in r["milter_rss"][:2]) if "milter_rss" in r else "(store only)"
        run = " / ".join(f"{x:.0f}" for x in r["runner_rss"]) if "runner_rss" in r else ""
        fan = f"{r['fanout']:.1f} ({r['n'] / r['fanout']:.0f})" if "fanout" in r else ""
        pol = " / ".join(f"{x:.0f}" for x in r["policy_rss"][:2])
        print(f"| {r['n']:,} | {r['import']:.1f} | {r['post50']:.0f} / {r['post99']:.0f} | "
              f"{r['verp50']:.0f} / {r['verp99']:.0f} | {r['first']:.0f} | {pol} | {mil} | {run} | {fan} |")
    if len(rows) > 1:
        print("\nGrowth (figure at the larger size / figure at the smaller):\n")
        print("| from → to | bulk add | member post p50 | p99 | signed VERP p50 | p99 | policy RSS after | "
              "fan-out time |")
        print("|---|---|---|---|---|---|---|---|")
        for a, b in zip(rows, rows[1:]):
            def g(key, i=None):
                x, y = a.get(key), b.get(key)
                if x is None or y is None:
                    return ""
                if i is not None:
                    x, y = x[i], y[i]
                return f"{y / x:.2f}"
            print(f"| {a['n']:,} → {b['n']:,} (×{b['n'] / a['n']:g}) | {g('import')} | {g('post50')} | "
                  f"{g('post99')} | {g('verp50')} | {g('verp99')} | {g('policy_rss', 1)} | {g('fanout')} |")
    print()
    for r in rows:
        _mta.summary(args, f"e. scale, {r['n']:,} members",
                     f"add {r['import']:.1f} s; RCPT p50/p99 {r['post50']:.0f}/{r['post99']:.0f} µs, "
                     f"VERP {r['verp50']:.0f}/{r['verp99']:.0f} µs"
                     + (f"; fan-out {r['fanout']:.0f} s" if "fanout" in r else ""), "absolute", None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
