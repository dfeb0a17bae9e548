"""A private Exim on loopback, configured from conf/exim/ (the text INSTALL gives admins).

The binary is Debian's exim4, unpacked (not installed) into ``.exim/`` by
scripts/install-deps. ``EximInstance`` writes a configuration of its own under
``workdir`` (spool, logs, pid file), with test plumbing (ports, a retry rule
of seconds, a ``manualroute`` of every other domain to the SMTP sink) around
the ACL statements of ``conf/exim/acl_rcpt.conf`` and the router + transport
of ``conf/exim/lmtp_transport.conf``, whose list domain, policy socket and
LMTP socket are substituted. ``exim -bd`` runs as a child process, stopped on
exit.
"""
from __future__ import annotations

import os
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .postfix import free_port

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
    """``with EximInstance(list_domain=..., policy=("127.0.0.1", port), lmtp_socket=path, sink_port=...) as ex:``"""

    def __init__(self, *, list_domain: str, policy: tuple[str, int], lmtp_socket: str, sink_port: int,
                 workdir: str | None = None):
        self.list_domain = list_domain
        self.policy = policy
        self.lmtp_socket = lmtp_socket
        self.sink_port = sink_port
        self.port = free_port()
        self._own = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="listgate-exim-"))
        os.chmod(self.workdir, 0o755)
        self.config = self.workdir / "exim.conf"
        self.proc: subprocess.Popen | None = None

    def acl(self) -> str:
        text = (CONF / "acl_rcpt.conf").read_text(encoding="utf-8")
        host, port = self.policy
        return text.replace("inet:127.0.0.1:10040", f"inet:{host}:{port}")

    def lmtp_router_transport(self) -> tuple[str, str]:
        text = (CONF / "lmtp_transport.conf").read_text(encoding="utf-8")
        text = text.replace("lists.example.org", self.list_domain).replace(
            "/var/lib/listgate/run/lmtp.sock", self.lmtp_socket)
        router, transport = text.split("# ---- transport ----")
        return router.split("# ---- router ----")[1], transport

    def config_text(self) -> str:
        w = self.workdir
        router, transport = self.lmtp_router_transport()
        return f"""\
# test plumbing (tests/harness/exim.py); listgate's parts come from conf/exim/
primary_hostname = mx.listgate.test
# the unpacked binary re-executes itself for deliveries (the compiled-in path is /usr/sbin/exim4)
exim_path = {EXIM}
qualify_domain = listgate.test
spool_directory = {w}/spool
log_file_path = {w}/log/%slog
pid_file_path = {w}/exim.pid
daemon_smtp_ports = {self.port}
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

    def send(self, mail_from: str, rcpts: list[str], msg: bytes):
        """``smtplib.sendmail``'s refused dict, or the exception it raised."""
        try:
            with smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.listgate.test", timeout=30) as c:
                return c.sendmail(mail_from, rcpts, msg)
        except (smtplib.SMTPException, OSError) as exc:
            return exc
