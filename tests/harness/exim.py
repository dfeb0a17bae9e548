"""A private Exim on loopback, configured from conf/exim/ (the text INSTALL gives admins).

The binary is Debian's exim4, unpacked (not installed) into ``.exim/`` by
scripts/install-deps. ``EximInstance`` writes a configuration of its own under
``workdir`` (spool, logs, pid file), with test plumbing (ports, a retry rule
of seconds, a ``manualroute`` of every other domain to the SMTP sink) around
the ACL statements of ``conf/exim/acl_rcpt.conf`` and the router + transport
of ``conf/exim/lmtp_transport.conf`` (or, ``transport="pipe"``, of
``conf/exim/router_transport.conf``: the pipe to ``listgate inject``), whose
list domain, policy socket, LMTP socket, command and paths are substituted.
``exim -bd`` runs as a child process, stopped on exit.

:class:`EximStack` is :class:`harness.stack.Stack` with Exim as the MTA: the
life-cycle tests run on it unchanged.
"""
from __future__ import annotations

import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .postfix import free_port
from .sink import SmtpSink
from .stack import LIST_DOMAIN, Stack

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf" / "exim"
EXIM = ROOT / ".exim" / "usr" / "sbin" / "exim4"


def unavailable() -> str | None:
    """Why the unpacked Exim cannot run here (None when it can)."""
    if os.geteuid() != 0:
        return "a private Exim needs root"
    if not EXIM.exists():
        return f"{EXIM} is missing: run scripts/install-deps (it unpacks Debian's exim4)"
    proc = subprocess.run([str(EXIM), "-C", "/dev/null", "-bV"], capture_output=True, text=True, timeout=30)
    if "Exim version" not in proc.stdout:
        return f"the unpacked exim4 does not run: {(proc.stderr or proc.stdout).strip()[:300]}"
    return None


class EximInstance:
    """``with EximInstance(list_domain=..., policy=("127.0.0.1", port), lmtp_socket=path, sink_port=...) as ex:``

    ``transport``: ``lmtp`` (``lmtp_socket``) or ``pipe`` (``inject``: a dict
    with ``site`` (listgate.yaml's path), ``user`` (the pipe's user and group),
    ``home`` (its directory), ``command`` (what runs ``listgate``, for
    INSTALL's /usr/local/bin/listgate) and ``environment`` (more variables)).
    ``reinject_port``: a second listening port (INSTALL: listgate's runner
    hands its outgoing mail to Exim there).
    """

    def __init__(self, *, list_domain: str, policy: tuple[str, int], sink_port: int, lmtp_socket: str | None = None,
                 workdir: str | None = None, transport: str = "lmtp", inject: dict | None = None,
                 reinject_port: int | None = None):
        self.list_domain = list_domain
        self.policy = policy
        self.lmtp_socket = lmtp_socket
        self.sink_port = sink_port
        self.transport = transport
        self.inject = inject
        self.port = free_port()
        self.reinject_port = reinject_port
        self._own = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="listgate-exim-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o755)
        self.config = self.workdir / "exim.conf"
        self.proc: subprocess.Popen | None = None

    def acl(self) -> str:
        text = (CONF / "acl_rcpt.conf").read_text(encoding="utf-8")
        host, port = self.policy
        return text.replace("inet:127.0.0.1:10040", f"inet:{host}:{port}")

    def router_transport(self) -> tuple[str, str]:
        """The router and the transport INSTALL gives for ``self.transport``, this instance's values in."""
        if self.transport == "lmtp":
            text = (CONF / "lmtp_transport.conf").read_text(encoding="utf-8")
            text = text.replace("/var/lib/listgate/run/lmtp.sock", self.lmtp_socket)
        else:
            text = (CONF / "router_transport.conf").read_text(encoding="utf-8")
            inj = self.inject
            argv, env = inj["command"], inj["environment"]
            text = (text.replace("/usr/local/bin/listgate", " ".join(argv))
                    .replace("/etc/listgate/listgate.yaml", inj["site"])
                    .replace("environment = LISTGATE_CLIENT=$sender_host_address",
                             "environment = <; LISTGATE_CLIENT=$sender_host_address ; "
                             + " ; ".join(f"{k}={v}" for k, v in env.items()))
                    .replace("user = listgate", f"user = {inj['user']}")
                    .replace("group = listgate", f"group = {inj['user']}")
                    .replace("/var/lib/listgate", inj["home"]))
        router, transport = text.replace("lists.example.org", self.list_domain).split("# ---- transport ----")
        return router.split("# ---- router ----")[1], transport

    def config_text(self) -> str:
        w = self.workdir
        router, transport = self.router_transport()
        ports = f"{self.port} : {self.reinject_port}" if self.reinject_port else str(self.port)
        return f"""\
# test plumbing (tests/harness/exim.py); listgate's parts come from conf/exim/
primary_hostname = mx.listgate.test
# the unpacked binary re-executes itself for deliveries (the compiled-in path is /usr/sbin/exim4)
exim_path = {EXIM}
qualify_domain = listgate.test
spool_directory = {w}/spool
log_file_path = {w}/log/%slog
pid_file_path = {w}/exim.pid
daemon_smtp_ports = {ports}
local_interfaces = 127.0.0.1
host_lookup =
rfc1413_hosts =
keep_environment =
acl_smtp_rcpt = acl_check_rcpt
queue_run_max = 1

begin acl

acl_check_rcpt:
{self.acl()}
  accept

begin routers
{router}
to_sink:
  driver = manualroute
  domains = ! {self.list_domain}
  route_list = * 127.0.0.1
  self = send
  transport = to_sink

begin transports
{transport}
to_sink:
  driver = smtp
  port = {self.sink_port}
  allow_localhost
  hosts_avoid_tls = *

begin retry
* * F,1h,1s
"""

    def start(self) -> "EximInstance":
        for d in ("spool", "log"):
            (self.workdir / d).mkdir(exist_ok=True)
            shutil.chown(self.workdir / d, user="Debian-exim", group="Debian-exim")
        self.config.write_text(self.config_text(), encoding="utf-8")
        check = subprocess.run([str(EXIM), "-C", str(self.config), "-bV"], capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise RuntimeError(f"exim -bV refused the configuration:\n{check.stdout}{check.stderr}")
        # -bd: listen; -q1s: a queue runner every second (deferred mail is retried soon); -odi in the test's sends
        self.proc = subprocess.Popen([str(EXIM), "-C", str(self.config), "-bdf", "-q1s"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        end = time.monotonic() + 20
        while time.monotonic() < end:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    if s.recv(64).startswith(b"220"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"exim did not greet on {self.port}:\n{self.log_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if self._own:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "EximInstance":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_text(self) -> str:
        try:
            return (self.workdir / "log" / "mainlog").read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def queue(self) -> list[str]:
        """Ids of the messages in Exim's queue that are not frozen (``exim -bp``).
        A frozen message is a bounce nobody takes: Exim keeps it for the postmaster."""
        out = subprocess.run([str(EXIM), "-C", str(self.config), "-bp"], capture_output=True, text=True,
                             timeout=30).stdout
        return [line.split()[2] for line in out.splitlines()
                if line[:1] == " " and len(line.split()) > 2 and "*** frozen ***" not in line]

    def wait_queue_empty(self, timeout: float = 30.0) -> None:
        """Until no message waits in Exim's queue (its queue runner retries every second)."""
        deadline = time.monotonic() + timeout
        while True:
            q = self.queue()
            if not q:
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"Exim queue not empty after {timeout}s: {q}\n{self.log_tail(20)}")
            time.sleep(0.1)

    def send(self, mail_from: str, rcpts: list[str], msg: bytes):
        """``smtplib.sendmail``'s refused dict, or the exception it raised."""
        try:
            with smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.listgate.test", timeout=30) as c:
                return c.sendmail(mail_from, rcpts, msg)
        except (smtplib.SMTPException, OSError) as exc:
            return exc


# INSTALL runs the pipe as user listgate, owner of the instance and of its
# daemons. Here that is Exim's own user (Debian's exim4 refuses root: it is
# on its fixed_never_users), with the system's Python 3 and this checkout's
# packages: the tests' interpreter may live where that user cannot go (/root).
PIPE_USER = "Debian-exim"
SYSTEM_PYTHON = "/usr/bin/python3"


def unprivileged_listgate() -> tuple[list[str], dict[str, str]] | None:
    """``(argv, environment)`` that run ``listgate`` as a user other than root, or
    None when the system's Python 3 is not this interpreter's minor version."""
    import site
    import sysconfig
    try:
        out = subprocess.run([SYSTEM_PYTHON, "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
    except OSError:
        return None
    if out != str(tuple(sys.version_info[:2])):
        return None
    paths = [sysconfig.get_paths()["purelib"], *site.getsitepackages(), str(ROOT)]
    return [SYSTEM_PYTHON, "-m", "listgate"], {"PYTHONPATH": ":".join(dict.fromkeys(paths))}


class EximStack(Stack):
    """The sink, ``listgate serve`` and a private Exim in front (no Postfix): Exim
    takes the mail at RCPT (asking the policy server), hands list mail to
    listgate over ``transport`` (``lmtp`` or ``pipe``), delivers listgate's
    outgoing mail (the runner's re-injection port) to the sink, and sends its
    own bounces of it to the list's bounce addresses. Same interface as Stack."""

    def __init__(self, *, transport: str = "lmtp", **kw):
        super().__init__(front_end="lmtp" if transport == "lmtp" else "pipe", **kw)
        self.transport = transport
        self.exim: EximInstance | None = None
        self.tmp: Path | None = None
        self._as_owner: tuple[list[str], dict[str, str]] | None = None

    def listgate(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """The CLI as the instance's owner when that is Exim's user (the pipe stack): as
        root it would become that user itself, and this Python (under /root) cannot follow."""
        if self._as_owner is None:
            return super().listgate(*args, check=check)
        argv, env = self._as_owner
        out = subprocess.run([*argv, "-c", self.site.path, *args], capture_output=True, text=True, timeout=120,
                             user=PIPE_USER, group=PIPE_USER, cwd=str(self.base),
                             env={**os.environ, **env, "LISTGATE_CLOCK_FILE": self.clock_file})
        if check and out.returncode != 0:
            raise RuntimeError(f"listgate {' '.join(args)} failed ({out.returncode}):\n{out.stderr}")
        return out

    def _start(self) -> None:
        self.sink = SmtpSink(self.behaviours).start()
        self.tmp = Path(tempfile.mkdtemp(prefix="listgate-eximstack-"))
        os.chmod(self.tmp, 0o755)
        reinject = free_port()
        if self.transport == "pipe":
            run = unprivileged_listgate()
            if run is None:
                raise RuntimeError(f"{SYSTEM_PYTHON} is not Python {sys.version_info[0]}.{sys.version_info[1]}")
            argv, env = run
            self.start_listgate(self.tmp / "listgate", reinject_port=reinject, socket_group="Debian-exim",
                                user=PIPE_USER, command=argv, environment=env)
            self._as_owner = (argv, env)
            env = {**env, "LISTGATE_CLOCK_FILE": self.clock_file}
        else:
            argv, env = [], {}
            self.start_listgate(self.tmp / "listgate", reinject_port=reinject, socket_group="Debian-exim")
        host, port = self.site.conf.policy.socket.split(":", 1)[1].split("@")[::-1]
        lmtp = self.site.conf.lmtp.socket
        self.exim = self.mta = EximInstance(
            list_domain=LIST_DOMAIN, policy=(host, int(port)), sink_port=self.sink.port,
            lmtp_socket=self.site.resolve(lmtp.split(":", 1)[1]) if lmtp else None, workdir=str(self.tmp / "exim"),
            transport=self.transport, reinject_port=reinject,
            inject={"site": self.site.path, "user": PIPE_USER, "home": str(self.base), "command": argv,
                    "environment": env})
        self.exim.start()

    def close(self) -> None:
        if self.exim is not None:
            self.exim.stop()
        super().close()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
