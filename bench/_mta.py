"""Shared pieces of the MTA-level benches (not a bench: ``run.py`` skips ``_*`` files).

Everything here drives listgate through its public entry points only: the
``listgate`` command line (``init``, ``members import``, ``inject``, ``queue``)
and its daemons (``policy``, ``milter``, ``runner``), plus
:func:`listgate.config.load` and :func:`listgate.store.open_store`. Postfix is
the tests' private instance (``tests/harness``), built from INSTALL's snippets;
load comes from Postfix's own ``smtp-source``, deliveries go to Postfix's
``smtp-sink`` or its ``discard`` transport. Loopback only; every process a
bench starts is stopped by the bench.
"""
from __future__ import annotations

import json
import math
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for p in (str(REPO), str(REPO / "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)

from harness import PostfixInstance, available, free_port  # noqa: E402
from milter_helpers import postfix_socket_dir  # noqa: E402,F401  (INSTALL's socket directory)

DOMAIN = "lists.example.org"
LIST = f"demo@{DOMAIN}"
SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
LISTGATE = [sys.executable, "-m", "listgate"]


# -- the machine ---------------------------------------------------------------

def machine() -> str:
    """One line: CPUs, memory, the disk under /tmp, kernel, Postfix, Python, load average."""
    with open("/proc/meminfo") as fh:
        mem_kib = int(fh.readline().split()[1])
    model = ""
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    disk = _disk(tempfile.gettempdir())
    pf = subprocess.run(["postconf", "-d", "-h", "mail_version"], capture_output=True, text=True).stdout.strip()
    load = os.getloadavg()
    return (f"{os.cpu_count()} CPUs ({model or platform.machine()}), {mem_kib / 2**20:.0f} GiB RAM, {disk}, "
            f"Linux {platform.release()}, Postfix {pf or '?'}, Python {platform.python_version()}, "
            f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")


def _disk(path: str) -> str:
    """File system type, device and whether it is rotational, for ``path``."""
    dev = fstype = "?"
    best = ""
    with open("/proc/mounts") as fh:
        for line in fh:
            d, mnt, typ = line.split()[:3]
            if path.startswith(mnt) and len(mnt) >= len(best):
                best, dev, fstype = mnt, d, typ
    kind = "?"
    name = os.path.basename(dev)
    for cand in (name, re.sub(r"\d+$", "", name), re.sub(r"p\d+$", "", name)):
        try:
            rot = Path(f"/sys/block/{cand}/queue/rotational").read_text().strip()
            kind = "yes" if rot == "1" else "no"
            break
        except OSError:
            continue
    return f"{fstype} on {dev} (rotational per /sys/block: {kind})"


def loadavg() -> str:
    return "{:.1f}".format(os.getloadavg()[0])


# -- /proc -----------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """CPU time process ``pid`` has used so far (user + system, all threads), seconds."""
    with open(f"/proc/{pid}/stat") as fh:
        f = fh.read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def memory_mib(pid: int) -> tuple[float, float]:
    """(resident set now, its peak), MiB, from ``/proc/PID/status`` (VmRSS, VmHWM)."""
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line[:5]] = int(line.split()[1]) / 1024
    return out["VmRSS"], out["VmHWM"]


# -- statistics ------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def median(values: list[float]) -> float:
    return statistics.median(values)


# -- listgate through its command line -------------------------------------------

def listgate(site_path: str, *args: str, stdin: bytes | None = None, timeout: float = 900) -> str:
    """Run ``listgate -c SITE ARGS``; returns stdout, raises RuntimeError on a non-zero exit."""
    proc = subprocess.run([*LISTGATE, "-c", site_path, *args], input=stdin, capture_output=True,
                          timeout=timeout, cwd=str(REPO), env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        raise RuntimeError(f"listgate {' '.join(args)} exited {proc.returncode}: "
                           f"{proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout.decode(errors="replace")


def init_instance(directory: Path, *, milter_socket: str, policy_socket: str, reinject_port: int,
                  poll_interval: str | None = None, non_member_action: str | None = None) -> str:
    """``listgate init DIRECTORY`` with these sockets; returns the site file's path.

    ``poll_interval``: the runner's ``runner.poll_interval`` (a fan-out bench
    starts its clock when the post is queued: the poll is part of what it
    measures). ``non_member_action``: the list's, instead of ``hold``.
    """
    subprocess.run([*LISTGATE, "init", str(directory), "--domain", DOMAIN, "--milter-socket", milter_socket,
                    "--policy-socket", policy_socket, "--reinject-port", str(reinject_port)],
                   check=True, capture_output=True, cwd=str(REPO), env={**os.environ, "PYTHONPATH": str(REPO)})
    site_path = directory / "listgate.yaml"
    # the benches' member domains (*.test) exist only here: no DNS check of them, and no DNS
    # query leaves the machine (nameserver on loopback port 9, where nothing answers)
    _edit_yaml(site_path, lambda d: d.__setitem__("dns", {"check_domains": False, "nameservers": ["127.0.0.1"],
                                                         "port": 9, "timeout": "1s", "attempts": 1}))
    if poll_interval:
        _edit_yaml(site_path, lambda d: d.setdefault("runner", {}).__setitem__("poll_interval", poll_interval))
    if non_member_action:
        _edit_yaml(directory / "lists.d" / "demo.yaml", lambda d: d.__setitem__("non_member_action", non_member_action))
    return str(site_path)


def _edit_yaml(path: Path, change) -> None:
    """Rewrite a configuration file ``listgate init`` wrote, with ``change(data)`` applied (comments go)."""
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def import_members(site_path: str, addresses, workdir: Path) -> float:
    """Add ``addresses`` with ``listgate members import`` from a file; returns its wall time (s)."""
    path = workdir / "members.txt"
    with open(path, "w") as fh:
        for a in addresses:
            fh.write(a + "\n")
    t0 = time.perf_counter()
    listgate(site_path, "members", "import", LIST, str(path))
    elapsed = time.perf_counter() - t0
    path.unlink()
    return elapsed


def member(i: int) -> str:
    return f"m{i}@members.test"


class Daemon:
    """``listgate -c SITE COMMAND ARGS`` as a child process (context manager), ready
    when it tells ``NOTIFY_SOCKET`` ``READY=1`` (sd_notify, as under systemd)."""

    def __init__(self, site_path: str, command: str, *args: str, log: Path | None = None, timeout: float = 60):
        self.argv = [*LISTGATE, "-c", site_path, command, *args]
        self.log = log
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Daemon":
        notify_dir = tempfile.mkdtemp(prefix="lgbn")
        notify_path = os.path.join(notify_dir, "n")
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
                notify.bind(notify_path)
                notify.settimeout(1)
                self.proc = subprocess.Popen(self.argv, stdout=out, stderr=out, cwd=str(REPO),
                                             env={**os.environ, "PYTHONPATH": str(REPO), "NOTIFY_SOCKET": notify_path})
                deadline = time.monotonic() + self.timeout
                while True:
                    if self.proc.poll() is not None:
                        raise RuntimeError(f"{' '.join(self.argv[2:])} exited {self.proc.returncode}: "
                                           + self.log_tail())
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{' '.join(self.argv[2:])} not ready within {self.timeout}s")
                    try:
                        if b"READY=1" in notify.recv(1000).split(b"\n"):
                            return self
                    except socket.timeout:
                        continue
        except BaseException:
            self.stop()
            raise
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
            shutil.rmtree(notify_dir, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log else ""
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def __exit__(self, *exc) -> None:
        self.stop()


# -- Postfix ---------------------------------------------------------------------

class BenchPostfix(PostfixInstance):
    """The tests' private Postfix with more smtpd services, each the public smtpd
    with some parameters changed (``-o``): the baselines of one run share the
    Postfix, its queue and its processes with what they are compared to.

    ``services``: name -> {parameter: value}; each value goes through a main.cf
    parameter ``bench_NAME_PARAM`` (master.cf's ``-o`` takes no spaces), so it
    may be changed until ``start()``.
    After ``start()``, ``ports[name]`` is each service's port.
    """

    LOAD = {  # smtp-source opens sessions as fast as it can: no per-client limits
        "smtpd_client_connection_count_limit": "0",
        "smtpd_client_connection_rate_limit": "0",
        "smtpd_client_message_rate_limit": "0",
        "default_process_limit": "100",
    }

    def __init__(self, *, services: dict[str, dict[str, str]] | None = None, extra: dict | None = None, **kw):
        self.services = services or {}
        self.ports = {name: free_port() for name in self.services}
        super().__init__(extra={**self.LOAD, **(extra or {})}, **kw)

    def overrides(self) -> dict[str, str]:
        out = super().overrides()
        for name, params in self.services.items():
            out.update((f"bench_{name}_{k}", v) for k, v in params.items())
        return out

    def master_cf(self) -> str:
        lines = [super().master_cf(), ""]
        for name, params in self.services.items():
            lines.append(f"127.0.0.1:{self.ports[name]} inet n - n - - smtpd")
            lines.append(f"  -o syslog_name=postfix/{name}")
            lines.extend(f"  -o {k}=$bench_{name}_{k}" for k in params)
        return "\n".join(lines) + "\n"


def smtp_source(port: int, rcpt: str, messages: int, sessions: int, *, sender: str = "someone@senders.test",
                size: int = 2000, extra: tuple[str, ...] = ()) -> float:
    """``smtp-source`` sends ``messages`` of ``size`` bytes to ``rcpt`` over ``sessions``
    parallel sessions; returns messages per second (until its last QUIT)."""
    argv = [SMTP_SOURCE, "-s", str(sessions), "-m", str(messages), "-l", str(size), "-f", sender, "-t", rcpt,
            "-M", "client.bench.test", *extra, f"127.0.0.1:{port}"]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"smtp-source failed: {proc.stderr.strip()}")
    return messages / elapsed


class LogCounter:
    """Counts mail log lines matching ``regex`` written after it was made, reading
    only what was added since the last call."""

    def __init__(self, pf: PostfixInstance, regex: bytes):
        self.path = pf.maillog
        self.pattern = re.compile(regex)
        self.offset = pf.log_offset()
        self.count = 0
        self._tail = b""

    def update(self) -> int:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return self.count
        self.offset += len(data)
        data = self._tail + data
        cut = data.rfind(b"\n") + 1
        self._tail = data[cut:]
        self.count += len(self.pattern.findall(data[:cut]))
        return self.count

    def wait(self, n: int, timeout: float) -> float:
        """Wait until ``n`` lines counted; returns time.perf_counter() when seen. TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        while self.update() < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.count} of {n} log lines {self.pattern.pattern!r} within {timeout:.0f}s")
            time.sleep(0.02)
        return time.perf_counter()


class SmtpSink:
    """Postfix's ``smtp-sink`` on a free loopback port (context manager)."""

    def __enter__(self) -> "SmtpSink":
        self.port = free_port()
        # smtp-sink refuses to run as root without -u
        self.proc = subprocess.Popen([SMTP_SINK, "-u", "postfix", f"127.0.0.1:{self.port}", "256"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.__exit__()
                    raise RuntimeError("smtp-sink did not start")
                time.sleep(0.05)

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def needs_postfix() -> str | None:
    """Why the Postfix benches cannot run here, or None."""
    if not available():
        return "needs root and Postfix"
    if not (os.path.exists(SMTP_SOURCE) and os.path.exists(SMTP_SINK)):
        return "needs smtp-source and smtp-sink (Postfix's test programs)"
    return None


# -- the report ------------------------------------------------------------------

def summary(args, figure: str, value: float | str, target: str, met: bool | None, note: str = "") -> None:
    """Add one row to the summary table ``run.py`` prints (``--summary FILE``, JSON lines)."""
    if getattr(args, "summary", None):
        with open(args.summary, "a") as fh:
            fh.write(json.dumps({"figure": figure, "value": value, "target": target, "met": met,
                                 "note": note}) + "\n")


def common_args(ap) -> None:
    ap.add_argument("--quick", action="store_true", help="a short run (smaller counts) to validate the bench")
    ap.add_argument("--summary", metavar="FILE", help="append summary rows as JSON lines (bench/run.py)")


def load_args(ap, rounds: int) -> None:
    """The options of the benches that load Postfix with ``smtp-source``."""
    ap.add_argument("--messages", type=int, default=500, help="messages per round and side (default 500)")
    ap.add_argument("--sessions", type=int, default=4, help="parallel smtp-source sessions (default 4)")
    ap.add_argument("--rounds", type=int, default=rounds, help=f"rounds; medians are reported (default {rounds})")


def parse(ap, quick: dict, postfix: bool = True):
    """Parse the command line (with :func:`common_args`); ``--quick`` sets ``quick``'s
    values. Exits with status 2 when a Postfix bench cannot run here."""
    common_args(ap)
    args = ap.parse_args()
    if args.quick:
        vars(args).update(quick)
    why = needs_postfix() if postfix else None
    if why:
        print(f"{ap.prog}: {why}", file=sys.stderr)
        raise SystemExit(2)
    return args


def alternate(rounds: int, sides: dict, before=None) -> dict[str, list]:
    """Run each of ``sides`` (name -> callable returning a figure) once per round,
    the order rotated every round so that no side always goes first; ``before()``
    runs before each call (e.g. wait for an empty queue). Returns name -> figures."""
    names = list(sides)
    out: dict[str, list] = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            if before is not None:
                before()
            out[n].append(sides[n]())
    return out


def mta_cpu(pf, pids=()) -> float:
    """CPU seconds used so far by this Postfix instance and by processes ``pids``
    (listgate's daemons): every live process of the instance, plus what its
    master has collected from the children it reaped. Unlike the machine's
    busy time, other users of a shared machine do not count."""
    hz = os.sysconf("SC_CLK_TCK")
    master = pf.master_pid()
    total = 0
    for pid in set(pf._instance_pids()) | set(pids):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                f = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited: its master has its time now
        total += int(f[11]) + int(f[12]) + (int(f[13]) + int(f[14]) if pid == master else 0)
    return total / hz


def drained(pf, timeout: float = 120) -> None:
    """Wait until Postfix's queue directories hold no message (read directly: asking
    ``postqueue`` would add Postfix processes to what is measured)."""
    deadline = time.monotonic() + timeout
    while True:
        if not any(files for q in ("maildrop", "incoming", "active", "deferred")
                   for _, _, files in os.walk(pf.queue_dir / q)):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"Postfix queue not empty after {timeout:.0f}s")
        time.sleep(0.02)


def throughput(pf, port: int, rcpt: str, messages: int, sessions: int, pids=(),
               sender: str = "someone@senders.test") -> dict:
    """One ``smtp-source`` run to ``port``: msg/s until its last QUIT; CPU µs per
    message of this Postfix and ``pids`` (listgate's daemons) until the queue has
    drained; and of ``pids[0]`` alone."""
    c0, p0 = mta_cpu(pf, pids), (cpu_seconds(pids[0]) if pids else 0.0)
    rate = smtp_source(port, rcpt, messages, sessions, sender=sender)
    drained(pf)
    return {"rate": rate, "cpu": (mta_cpu(pf, pids) - c0) / messages * 1e6,
            "cpu_daemon": (cpu_seconds(pids[0]) - p0) / messages * 1e6 if pids else float("nan")}
