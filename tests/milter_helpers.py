"""Helpers for the milter and inject tests: tmpfs mounts, TestCtx transactions,
the milter daemon as a child process, and a milter client over a real socket.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import Milter
import pytest
from Milter.testctx import TestCtx
from miltertest import MilterConnection, constants as mc

REPO = Path(__file__).resolve().parents[1]


# -- file systems that fail -------------------------------------------------

@contextlib.contextmanager
def tmpfs(path: Path, size: str = "4m"):
    """Mount a tmpfs of ``size`` on ``path`` (skips the test when mounting is not possible)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                          capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def remount(path: Path, mode: str) -> None:
    """``mode`` is ``ro`` or ``rw``: even root cannot write to a read-only mount."""
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True, capture_output=True, timeout=30)


def fill(path: Path) -> None:
    """Fill the file system holding ``path`` until ENOSPC."""
    with open(path / "filler", "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:
            pass


def untraced(stored: bytes) -> bytes:
    """A message the milter stored, without the Received: field it writes first (one field, folded)."""
    assert stored.startswith(b"Received: from ") or stored.startswith(b"Received: by "), stored[:80]
    end = re.search(rb"\r\n(?![ \t])", stored).end()
    return stored[end:]


# -- TestCtx (no socket) ---------------------------------------------------------

# The no-reply protocol bits. TestCtx treats a NOREPLY answer as a refusal (it
# closes the connection), so transactions run with an MTA offer without them:
# pymilter's @noreply then answers CONTINUE, as it does for such an MTA.
NR_BITS = (Milter.P_NR_CONN | Milter.P_NR_HELO | Milter.P_NR_MAIL | Milter.P_NR_RCPT | Milter.P_NR_DATA
           | Milter.P_NR_UNKN | Milter.P_NR_EOH | Milter.P_NR_BODY | Milter.P_NR_HDR)
FULL_OFFER = 0x1fffff


def fresh_ctx(protocol: int = FULL_OFFER & ~NR_BITS) -> TestCtx:
    """A TestCtx with its own copy of the MTA's offer: ``TestCtx.default_opts`` is a
    class attribute that negotiate() mutates in place, so every test resets it."""
    TestCtx.default_opts = [Milter.CURR_ACTS, protocol, 0, 0]
    return TestCtx()


def split_message(msg: bytes) -> tuple[list[tuple[str, bytes]], bytes]:
    """(header fields as the MTA hands them with P_HDR_LEADSPC: name and the raw text
    after the colon, folded lines joined by LF), body with CRLF line ends."""
    head, sep, body = msg.partition(b"\r\n\r\n")
    fields: list[tuple[str, bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + b"\n" + line)
        elif line:
            name, _, value = line.partition(b":")
            fields.append((name.decode("ascii"), value))
    return fields, body


class Transaction:
    """The result of :func:`transact`: each stage's return code and the context."""

    def __init__(self, ctx: TestCtx):
        self.ctx = ctx
        self.rcpt_rc: dict[str, int] = {}
        self.data_rc: int | None = None
        self.eom_rc: int | None = None

    @property
    def final(self) -> int:
        return self.eom_rc if self.eom_rc is not None else self.data_rc


def transact(ctx: TestCtx, sender: str, rcpts: list[str], msg: bytes, *, qid: str = "4XyZ1abcD",
             connect: bool = True, ip: str = "192.0.2.10") -> Transaction:
    """One SMTP transaction through ``ctx`` in libmilter's order (connect, MAIL,
    RCPT..., DATA, headers, body, end of message), stopping where a real MTA
    would. A rejected RCPT drops only that recipient."""
    t = Transaction(ctx)
    if connect:
        assert ctx._connect(host="client.example", helo="client.example", ip=ip) == Milter.CONTINUE
    ctx._setsymval("i", qid)
    assert ctx._envfrom(f"<{sender}>") == Milter.CONTINUE
    for r in rcpts:
        t.rcpt_rc[r] = ctx._envrcpt(f"<{r}>")
    if not any(rc == Milter.CONTINUE for rc in t.rcpt_rc.values()):
        return t
    t.data_rc = ctx._data()
    if t.data_rc != Milter.CONTINUE:
        return t
    fields, body = split_message(msg)
    for name, value in fields:
        assert ctx._priv.header_bytes(name, value) == Milter.CONTINUE
    assert ctx._feed_body(io.BytesIO(body)) == Milter.CONTINUE
    t.eom_rc = ctx._eom()
    return t


# -- the daemon over a real socket -----------------------------------------------

def postfix_socket_dir(parent: Path) -> Path:
    """``parent/listgate``: set-group-ID and group ``postfix``, as INSTALL lays it out.

    A socket created inside inherits the group, so with ``socket_mode: 0660``
    Postfix's processes connect and nobody else can.
    """
    import grp
    d = parent / "listgate"
    d.mkdir()
    os.chown(d, 0, grp.getgrnam("postfix").gr_gid)
    os.chmod(d, 0o2750)
    return d


def short_dir() -> str:
    """A short directory for unix sockets (sun_path holds ~107 bytes; tmp_path can be longer)."""
    return tempfile.mkdtemp(prefix="lgm", dir="/tmp")


class Daemon:
    """``listgate -c SITE milter`` as a child process (context manager).

    Ready when its socket accepts a connection (bounded wait, no sleep-and-hope).
    ``stop()`` sends SIGKILL; ``stop(graceful=True)`` SIGTERM, libmilter's
    shutdown, which notices it within its 5 s listener poll (SIGKILL after 15 s).
    """

    def __init__(self, site_path: str, connect_to, log_path: Path, env: dict | None = None):
        self.site_path = site_path
        self.connect_to = connect_to   # unix path (str) or (host, port)
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> "Daemon":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "listgate", "-c", self.site_path, "milter"],
                                     stdout=self._log, stderr=self._log, env=self.env, cwd=str(REPO))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"milter exited {self.proc.returncode}:\n{self.log()}")
            try:
                self.connect().close()
                return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"milter did not listen within {timeout}s:\n{self.log()}")

    def connect(self, timeout: float = 10.0) -> socket.socket:
        if isinstance(self.connect_to, str):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(self.connect_to)
        except OSError:
            s.close()
            raise
        return s

    def stop(self, graceful: bool = False) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            if graceful:
                self.proc.terminate()
            else:
                self.proc.kill()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> "Daemon":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class Client:
    """The MTA side of the milter protocol (miltertest), honouring the no-reply
    steps the milter negotiated."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.conn = MilterConnection(sock)
        self.actions, self.protocol = self.conn.optneg_mta()

    def _step(self, nr_bit: int, cmd: str, **args):
        """Send ``cmd``; wait for the reply unless the milter asked for none."""
        if self.protocol & nr_bit:
            self.conn._send(cmd, **args)
            return None
        return self.conn.send_ar(cmd, **args)

    def connect(self, ip: str = "192.0.2.10", host: str = "client.example"):
        if self.protocol & mc.SMFIP_NOCONNECT:
            return None
        return self._step(mc.SMFIP_NR_CONN, mc.SMFIC_CONNECT, hostname=host, family=mc.SMFIA_INET,
                          port=25000, address=ip)

    def mail(self, sender: str):
        return self._step(mc.SMFIP_NR_MAIL, mc.SMFIC_MAIL, args=[f"<{sender}>"])

    def rcpt(self, rcpt: str):
        return self._step(mc.SMFIP_NR_RCPT, mc.SMFIC_RCPT, args=[f"<{rcpt}>"])

    def data(self):
        return self._step(mc.SMFIP_NR_DATA, mc.SMFIC_DATA)

    def message(self, msg: bytes, qid: str = "4XyZ1abcD"):
        """Headers, end of header, body, end of message; returns the EOM replies."""
        fields, body = split_message(msg)
        if not self.protocol & mc.SMFIP_NOHDRS:
            for name, value in fields:
                self._step(mc.SMFIP_NR_HDR, mc.SMFIC_HEADER, name=name, value=value.decode())
        if not self.protocol & mc.SMFIP_NOEOH:
            self._step(mc.SMFIP_NR_EOH, mc.SMFIC_EOH)
        if not self.protocol & mc.SMFIP_NOBODY and body:
            self._step(mc.SMFIP_NR_BODY, mc.SMFIC_BODY, buf=body.decode())
        self.conn.send_macro(mc.SMFIC_BODYEOB, i=qid)
        return self.conn.send_eom()

    def abort(self) -> None:
        self.conn._send(mc.SMFIC_ABORT)

    def quit(self) -> None:
        try:
            self.conn._send(mc.SMFIC_QUIT)
        finally:
            self.sock.close()
