"""The whole stack on loopback: SMTP sink, private Postfix, ``listgate serve``.

Used by the end-to-end test and by README's demo (``scripts/demo``)::

    with Stack(behaviours={"gone@members.test": UNKNOWN}) as st:
        st.listgate("members", "add", "demo", "alice@members.test")
        st.send("alice@members.test", "demo@lists.example.org", msg)
        st.advance_days(1)

Postfix is configured from INSTALL's snippets (``conf/postfix``) by
:class:`~harness.postfix.PostfixInstance`; listgate is a ``listgate init``
instance inside Postfix's work directory (the milter's unix socket must be
reachable by the ``postfix`` user) and runs as ``listgate serve`` in a child
process. :class:`harness.exim.EximStack` is the same with a private Exim
instead of Postfix (``st.mta`` is the MTA either way). Time: every process
reads the clock file named by ``LISTGATE_CLOCK_FILE`` (:mod:`listgate.clock`);
:meth:`advance_days` moves it.
"""
from __future__ import annotations

import grp
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from listgate import clock, config, instance
from listgate.serve import listening
from listgate.store import open_store

from dns_helpers import TEST_DNS

from .postfix import PostfixInstance, free_port, postfix_socket
from .sink import SmtpSink

LIST_DOMAIN = "lists.example.org"


class Stack:
    """Sink + Postfix + listgate serve. Context manager; everything stops on exit."""

    def __init__(self, *, behaviours: dict[str, str] | None = None, list_name: str = "demo",
                 owner: str = "owner@owners.test", list_settings: str = "", site_settings: str = "",
                 workdir: str | None = None, log_level: str = "info", front_end: str = "milter",
                 extra_lists: dict[str, str] | None = None, prepare=None):
        """``front_end``: ``milter`` (main.cf.listgate) or ``lmtp`` (main.cf.listgate-lmtp:
        the policy service at RCPT, list mail delivered to ``listgate lmtp`` on a unix socket).
        ``extra_lists``: more list files (name → YAML text, valid or not) written before serve starts.
        ``prepare``: called with the site file's path once the instance is written and before
        it is loaded and served (e.g. to share a store URL and a VERP key between two stacks)."""
        self.prepare = prepare
        self.extra_lists = extra_lists or {}
        self.front_end = front_end
        self.behaviours = behaviours or {}
        self.list_name = list_name
        self.owner = owner
        self.list_settings = list_settings
        self.site_settings = site_settings
        self.workdir = workdir
        self.log_level = log_level
        self.sink: SmtpSink | None = None
        self.pf: PostfixInstance | None = None
        self.mta = None  # the MTA the tests talk to: send, wait_queue_empty, log_tail (Postfix or Exim)
        self.serve: subprocess.Popen | None = None
        self.site: config.Site | None = None
        self.base: Path | None = None  # listgate's instance directory
        self._saved_env: dict[str, str | None] = {}

    # -- life cycle ------------------------------------------------------------
    def start(self) -> "Stack":
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        self.sink = SmtpSink(self.behaviours).start()
        self.pf = self.mta = PostfixInstance(sink_port=self.sink.port, list_domain=LIST_DOMAIN,
                                             workdir=self.workdir, bounce_queue_lifetime="0",
                                             maximal_queue_lifetime="1h")
        self.start_listgate(self.pf.workdir / "listgate", reinject_port=self.pf.reinject_port)
        if self.front_end == "lmtp":
            self.pf.lmtp = postfix_socket(self.site.conf.lmtp.socket)
        else:
            self.pf.milter = postfix_socket(self.site.conf.milter.socket)
        self.pf.policy = postfix_socket(self.site.conf.policy.socket)
        self.pf.start()

    def start_listgate(self, base: Path, *, reinject_port: int, socket_group: str = "postfix",
                       user: str | None = None, command: list[str] | None = None,
                       environment: dict[str, str] | None = None) -> None:
        """``listgate init`` in ``base`` and ``listgate serve`` started, listening.

        The sockets go to ``base/run``, set-group-ID ``socket_group`` (the MTA's
        group: with ``socket_mode`` 0660 the MTA, and nobody else, connects).
        ``user``: run serve as this user, owner of the whole instance (Exim's
        pipe transport runs ``listgate inject`` as a user that must write it),
        with ``command`` (instead of ``python -m listgate``) and ``environment``
        added to this process's."""
        self.base = base
        sockdir = base / "run"
        sockdir.mkdir(parents=True)
        os.chown(sockdir, 0, grp.getgrnam(socket_group).gr_gid)
        os.chmod(sockdir, 0o2750)
        milter_socket = f"unix:{sockdir / 'milter.sock'}"
        policy_socket = f"inet:{free_port()}@127.0.0.1"
        path = instance.init(str(base), name=self.list_name, domain=LIST_DOMAIN, owner=self.owner,
                             milter_socket=milter_socket, policy_socket=policy_socket,
                             reinject_port=reinject_port)
        lmtp_socket = f"unix:{sockdir / 'lmtp.sock'}"
        with open(path, "a", encoding="utf-8") as fh:
            fh.write("runner:\n  poll_interval: 0.2s\n  tasks_interval: 1s\n" + self.site_settings)
            if "\ndns:" not in "\n" + self.site_settings:
                fh.write(TEST_DNS)
            if self.front_end == "lmtp":
                fh.write(f"lmtp:\n  socket: {lmtp_socket}\n")
        if self.list_settings:
            with open(base / "lists.d" / f"{self.list_name}.yaml", "a", encoding="utf-8") as fh:
                fh.write(self.list_settings)
        for name, text in self.extra_lists.items():
            (base / "lists.d" / f"{name}.yaml").write_text(text, encoding="utf-8")
        if self.prepare is not None:
            self.prepare(path)
        self.site = config.load(path, strict=False)
        self.clock_file = str(base / "clock")
        clock.write_offset_file(self.clock_file, 0.0)
        for var, value in ((clock.ENV_VAR, self.clock_file), (config.ENV_VAR, path)):
            self._saved_env[var] = os.environ.get(var)
            os.environ[var] = value
        clock.reset()  # this process reads the clock file too
        if user is not None:
            for parent, dirs, files in os.walk(base):
                for name in [parent, *(os.path.join(parent, n) for n in dirs + files)]:
                    shutil.chown(name, user=user, group=None if name == str(sockdir) else user)
        self.serve_log = open(base / "serve.log", "ab")
        self.serve = subprocess.Popen(
            [*(command or [sys.executable, "-m", "listgate"]), "-c", path, "serve", "--log-level", self.log_level],
            stdin=subprocess.DEVNULL, stdout=self.serve_log, stderr=subprocess.STDOUT, cwd=str(base),
            env={**os.environ, **(environment or {})}, start_new_session=True, user=user, group=user)
        self.wait_listening()

    def wait_listening(self, timeout: float = 30.0) -> None:
        """Until the milter socket and the policy port accept connections."""
        end = time.monotonic() + timeout
        specs = [self.site.conf.milter.socket, self.site.conf.policy.socket]
        if self.site.conf.lmtp.socket:
            specs.append(self.site.conf.lmtp.socket)
        while time.monotonic() < end:
            if self.serve.poll() is not None:
                raise RuntimeError(f"listgate serve exited:\n{self.serve_text()}")
            if all(listening(self.site, spec) for spec in specs):
                return
            time.sleep(0.05)
        raise TimeoutError(f"listgate serve not listening after {timeout}s:\n{self.serve_text()}")

    def close(self) -> None:
        if self.serve is not None and self.serve.poll() is None:
            self.serve.send_signal(signal.SIGTERM)
            try:
                self.serve.wait(40)
            except subprocess.TimeoutExpired:
                os.killpg(self.serve.pid, signal.SIGKILL)
                self.serve.wait(10)
        if self.serve is not None:
            try:  # children that outlived serve (they are in its session)
                os.killpg(self.serve.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.serve_log.close()
        if self.pf is not None:
            self.pf.close()
        if self.sink is not None:
            self.sink.stop()
        for var, value in self._saved_env.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
        self._saved_env = {}
        clock.reset()

    def __enter__(self) -> "Stack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- time --------------------------------------------------------------------
    def advance_days(self, days: float) -> None:
        """Move every process's clock forward (the clock file is re-read on change)."""
        with open(self.clock_file, encoding="ascii") as fh:
            offset = float(fh.read())
        clock.write_offset_file(self.clock_file, offset + days * 86400)

    # -- conveniences ------------------------------------------------------------
    @property
    def list_key(self) -> str:
        return f"{self.list_name}@{LIST_DOMAIN}"

    @property
    def lc(self):
        return self.site.lists[self.list_key]

    def address(self, role: str = "post", extension: str | None = None) -> str:
        from listgate import addresses
        return addresses.make(self.list_name, LIST_DOMAIN, role, extension)

    def store(self):
        return open_store(self.site, self.list_key)

    def member(self, address: str):
        return self.store().get_member(address)

    def send(self, mail_from: str, rcpts, msg: bytes):
        return self.mta.send(mail_from, rcpts, msg)

    def listgate(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run([sys.executable, "-m", "listgate", "-c", self.site.path, *args],
                             capture_output=True, text=True, timeout=120)
        if check and out.returncode != 0:
            raise RuntimeError(f"listgate {' '.join(args)} failed ({out.returncode}):\n{out.stderr}")
        return out

    def serve_text(self) -> str:
        try:
            return (self.base / "serve.log").read_text(errors="replace") if self.base else ""
        except OSError:
            return ""

    def settle(self, timeout: float = 60.0) -> None:
        """Until the MTA's queue is empty and listgate's in/out/virgin queues are drained
        (none waiting, none in progress), then the MTA's queue once more (what the
        runner handed over last)."""
        from listgate.queue import Switchboard
        boards = [Switchboard.for_site(self.site, q) for q in ("in", "out", "virgin")]
        self.mta.wait_queue_empty(timeout=timeout)
        self.wait_until(lambda: all(not b.ids() and not b.held_ids() for b in boards), timeout,
                        what="listgate queues to drain")
        self.mta.wait_queue_empty(timeout=timeout)

    def child_pid(self, name: str) -> int | None:
        """pid of serve's child ``listgate ... NAME`` (milter, policy, runner)."""
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    argv = fh.read().split(b"\0")
            except (OSError, ValueError, IndexError):
                continue
            if ppid == self.serve.pid and name.encode() in argv:
                return int(entry)
        return None

    def wait_until(self, predicate, timeout: float = 60.0, interval: float = 0.1, what: str = "condition"):
        end = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > end:
                raise TimeoutError(f"timed out waiting for {what}\n--- serve log tail ---\n"
                                   + "\n".join(self.serve_text().splitlines()[-40:])
                                   + "\n--- MTA log tail ---\n" + self.mta.log_tail(30))
            time.sleep(interval)

