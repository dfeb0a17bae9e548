"""Policy server throughput and latency against a minimal asyncio DUNNO server, same run.

    python bench/policy.py [--requests N] [--rounds R]

Both servers run as separate processes on loopback; clients are separate
processes too (one persistent connection, then 8 at once), each sending one
request and waiting for its answer (what Postfix's smtpd does). The listgate
server is the real ``listgate policy`` daemon on a fresh instance with a
members-only list of 1000 members; requests cycle through a realistic mix:
member post (store lookup), non-member post (store lookup + 550), signed VERP
bounce (HMAC check), live probe token (store lookup), unknown list address
(550) and a foreign domain (DUNNO). The baseline answers ``action=DUNNO`` to
everything without looking at the request.

The mix repeats, so after the first cycle every lookup is a hit in the
store's read cache (one ``PRAGMA data_version`` per batch of requests still
runs) and every signed VERP is in the verified-signature memo: the figures
are those of a warm server, as for a list's busy hours (the same posters and
the same bounce addresses again), not of a stream of never-seen addresses.

A second scenario sends only the requests that need neither the store nor
an HMAC (unknown list address, foreign domain): the server's own overhead.

Printed: decisions/s and p50/p99 latency per server, and the ratios
listgate/baseline (rate) and baseline/listgate (latency): 1.0 means as fast
as a server that does nothing. Target: rate ratio >= 0.7. The median of
``--rounds`` rounds is reported. Also the server's own CPU time per request
(Linux ``/proc``), which the other processes on a shared machine disturb
less than the rates: compare ratios from one run, of several runs.
"""
from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import argparse  # noqa: E402
import multiprocessing as mp  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from listgate import config, instance, verp  # noqa: E402
from listgate.store import close_all, open_store  # noqa: E402

DOMAIN = "lists.example.org"

MINIMAL_SERVER = r'''
import asyncio, sys

class P(asyncio.Protocol):
    def connection_made(self, t):
        self.t, self.buf = t, b""
    def data_received(self, data):
        self.buf += data
        n = self.buf.count(b"\n\n")
        if n:
            self.buf = self.buf[self.buf.rindex(b"\n\n") + 2:]
            self.t.write(b"action=DUNNO\n\n" * n)

async def main(port):
    srv = await asyncio.get_running_loop().create_server(P, "127.0.0.1", port, backlog=1024)
    print("ready", flush=True)
    await srv.serve_forever()

asyncio.run(main(int(sys.argv[1])))
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(recipient: str, sender: str, client: str = "192.0.2.10") -> bytes:
    return (f"request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n"
            f"client_address={client}\nclient_name=mx.example.net\nhelo_name=mx.example.net\n"
            f"sender={sender}\nrecipient={recipient}\nrecipient_count=0\nqueue_id=\n"
            f"instance=1a2b.5f00.1\nsize=0\n\n").encode()


def make_instance(directory: str) -> tuple[str, list[bytes]]:
    path = instance.init(directory, policy_socket=f"inet:{free_port()}@127.0.0.1", reinject_port=free_port())
    list_file = os.path.join(directory, "lists.d", "demo.yaml")
    with open(list_file, encoding="utf-8") as fh:
        text = fh.read().replace("non_member_action: hold", "non_member_action: reject")
    with open(list_file, "w", encoding="utf-8") as fh:
        fh.write(text)
    site = config.load(path)
    lc = site.get_list("demo")
    store = open_store(site, f"demo@{DOMAIN}")
    with store.transaction():
        for i in range(1000):
            store.add_member(f"member{i}@example.com")
    probe = store.add_pending("probe", {"member": "member1@example.com"}, 86400)
    mix = [
        request(f"demo@{DOMAIN}", "member7@example.com"),
        request(f"demo@{DOMAIN}", "stranger@example.net"),
        request(verp.member_bounce_address(site, lc, "member3@example.com"), ""),
        request(verp.probe_bounce_address(lc, probe.token), ""),
        request(f"nolist@{DOMAIN}", "someone@example.net"),
        request("user@elsewhere.example.com", "someone@example.net"),
    ]
    close_all()
    return path, mix


def start_listgate(site_path: str, port: int) -> subprocess.Popen:
    notify_path = os.path.join(os.path.dirname(site_path), "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(notify_path)
        notify.settimeout(30)
        proc = subprocess.Popen([sys.executable, "-m", "listgate", "-c", site_path, "policy",
                                 "--socket", f"inet:{port}@127.0.0.1"],
                                env={**os.environ, "NOTIFY_SOCKET": notify_path},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if b"READY=1" not in notify.recv(1000).split(b"\n"):
            raise RuntimeError("listgate policy did not report ready")
    return proc


def start_minimal(port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", MINIMAL_SERVER, str(port)], stdout=subprocess.PIPE)
    if proc.stdout.readline().strip() != b"ready":
        raise RuntimeError("minimal server did not start")
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def client(port: int, mix: list[bytes], count: int, start, out) -> None:
    """One persistent connection, ``count`` request/answer round trips; sends latencies (s)."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for req in mix * 20:                     # warm-up (caches, store connection)
            s.sendall(req)
            _read_answer(s)
        start.wait()
        lat = []
        perf = time.perf_counter
        for i in range(count):
            req = mix[i % len(mix)]
            t0 = perf()
            s.sendall(req)
            _read_answer(s)
            lat.append(perf() - t0)
    out.put(lat)


def _read_answer(s: socket.socket) -> bytes:
    data = s.recv(4096)
    while not data.endswith(b"\n\n"):
        more = s.recv(4096)
        if not more:
            raise ConnectionError("server closed")
        data += more
    return data


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (Linux /proc; NaN elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(port: int, mix: list[bytes], conns: int, per_conn: int, server_pid: int) -> tuple[float, float, float, float]:
    """(decisions/s, p50 µs, p99 µs, server CPU µs per request) for ``conns`` concurrent connections."""
    start = mp.Barrier(conns + 1)
    out = mp.Queue()
    procs = [mp.Process(target=client, args=(port, mix, per_conn, start, out)) for _ in range(conns)]
    for p in procs:
        p.start()
    start.wait()
    cpu0 = cpu_seconds(server_pid)
    t0 = time.perf_counter()
    lats = []
    for _ in procs:
        lats.extend(out.get(timeout=300))
    wall = time.perf_counter() - t0
    cpu = cpu_seconds(server_pid) - cpu0
    for p in procs:
        p.join(30)
    lats.sort()
    return (len(lats) / wall, lats[len(lats) // 2] * 1e6, lats[int(len(lats) * 0.99)] * 1e6,
            cpu / len(lats) * 1e6)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # a round of 6000 takes ~0.1 s per server: 3 of them moved the 8-connection ratio by +-0.06 between runs
    ap.add_argument("--requests", type=int, default=12000, help="requests per scenario (default 12000)")
    ap.add_argument("--rounds", type=int, default=7, help="rounds; the median is reported (default 7)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="listgate-bench-policy-") as tmp:
        site_path, mix = make_instance(os.path.join(tmp, "instance"))
        # the part of the mix that needs no store read and no HMAC: the server's own overhead
        mixes = {"full mix": mix, "no store": mix[4:]}
        lg_port, min_port = free_port(), free_port()
        lg = start_listgate(site_path, lg_port)
        mini = start_minimal(min_port)
        try:
            rows = []
            for mix_name, requests in mixes.items():
                for conns in (1, 8):
                    per_conn = max(1, args.requests // conns)
                    results = {"listgate": [], "minimal": []}
                    for _ in range(args.rounds):
                        # alternate so both see the same machine state
                        results["minimal"].append(run(min_port, requests, conns, per_conn, mini.pid))
                        results["listgate"].append(run(lg_port, requests, conns, per_conn, lg.pid))
                    med = {k: tuple(statistics.median(r[i] for r in v) for i in range(4)) for k, v in results.items()}
                    rows.append((mix_name, conns, med["listgate"], med["minimal"]))
        finally:
            stop(lg)
            stop(mini)
    print(f"policy server, {args.requests} requests per scenario, median of {args.rounds} rounds, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end")
    head = (f"{'requests':<8} | {'conns':>5} | {'server':<8} | {'decisions/s':>11} | {'p50 µs':>8} | {'p99 µs':>8} | "
            f"{'cpu µs/req':>10}")
    print(head)
    print("-" * len(head))
    for mix_name, conns, lgr, mnr in rows:
        lead = f"{mix_name:<8} | {conns:>5}"
        print(f"{lead} | {'listgate':<8} | {lgr[0]:>11.0f} | {lgr[1]:>8.0f} | {lgr[2]:>8.0f} | {lgr[3]:>10.1f}")
        print(f"{lead} | {'minimal':<8} | {mnr[0]:>11.0f} | {mnr[1]:>8.0f} | {mnr[2]:>8.0f} | {mnr[3]:>10.1f}")
        print(f"{lead} | {'ratio':<8} | {lgr[0] / mnr[0]:>11.2f} | {mnr[1] / lgr[1]:>8.2f} | {mnr[2] / lgr[2]:>8.2f} | "
              f"{mnr[3] / lgr[3]:>10.2f}")
    print("ratio: rate listgate/minimal, latency and CPU per request minimal/listgate "
          "(1.0 = as fast as doing nothing; target >= 0.7)")
    print("full mix: member post, non-member post, signed VERP, probe token, unknown list, foreign domain;")
    print("no store: unknown list (550) and foreign domain only")
    return 0


if __name__ == "__main__":
    sys.exit(main())
