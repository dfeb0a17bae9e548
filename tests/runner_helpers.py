"""Shared by the runner, delivery and command tests: an instance with members and a real SMTP sink.

``Env`` holds a fresh instance (``listgate init`` in tmp_path), an
:class:`harness.SmtpSink` listening on the instance's re-injection port, and
helpers to put list mail in the ``in`` queue (as the milter would), run the
runner in-process, and start/stop a real ``listgate runner`` subprocess.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import make_site
from harness import SmtpSink

from listgate import config
from listgate.queue import Switchboard
from listgate.runner.loop import Runner
from listgate.store import close_all, open_store

LIST = "demo@lists.example.org"
DOMAIN = "lists.example.org"
OWNER = "owner@lists.example.org"
MODERATOR = "mod@example.net"
TOKEN_RE = re.compile(rb"confirm\+([a-z2-7]{26})@")


def message(sender: str, subject: str, body: bytes = b"Hello.\r\n", extra: str = "") -> bytes:
    head = f"From: {sender}\r\nTo: {LIST}\r\nSubject: {subject}\r\nMessage-ID: <{time.monotonic_ns()}@test>\r\n{extra}"
    return head.encode("utf-8") + b"\r\n" + body


class Env:
    def __init__(self, tmp_path: Path, list_settings: str = "", behaviours=None):
        self.dir = tmp_path / "instance"
        self.site = make_site(self.dir)
        if list_settings:
            self.edit_list(list_settings)
        self.sink = SmtpSink(behaviours or {}, port=self.site.conf.reinject.port).start()
        self.procs: list[subprocess.Popen] = []

    # -- config ------------------------------------------------------------------
    def edit_list(self, extra_yaml: str) -> None:
        """Append keys to lists.d/demo.yaml (or replace ones already there) and reload."""
        path = self.dir / "lists.d" / "demo.yaml"
        lines = path.read_text().splitlines()
        new_keys = {ln.split(":", 1)[0] for ln in extra_yaml.strip().splitlines() if ln and not ln.startswith(" ")}
        kept, skipping = [], False
        for ln in lines:
            if ln and not ln.startswith((" ", "#")):
                skipping = ln.split(":", 1)[0] in new_keys
            if not skipping:
                kept.append(ln)
        path.write_text("\n".join(kept) + "\n" + extra_yaml.strip() + "\n")
        self.site = config.load(self.site.path)

    @property
    def lc(self):
        return self.site.get_list(LIST)

    @property
    def store(self):
        return open_store(self.site, LIST)

    def members(self, *addrs: str) -> None:
        for a in addrs:
            self.store.add_member(a)

    # -- queues ------------------------------------------------------------------
    def inject(self, msg: bytes, role: str = "post", sender: str | None = None, extension: str | None = None) -> str:
        """Queue ``msg`` in ``in`` with the metadata the milter writes."""
        meta = {"list": LIST, "role": role, "extension": extension, "envelope_sender": sender or "",
                "recipients": [LIST], "mta_queue_id": "TESTQ"}
        return Switchboard.for_site(self.site, "in").enqueue(msg, meta)

    def queue(self, name: str) -> Switchboard:
        return Switchboard.for_site(self.site, name)

    def run(self, **kw) -> int:
        runner = Runner(self.site, **kw)
        try:
            return runner.run_once(with_tasks=False)
        finally:
            runner.close()

    def confirm_token(self, rcpt: str, index: int = -1) -> str:
        """The token of a confirmation request the sink received for ``rcpt``."""
        mails = [d for d in self.sink.messages_for(rcpt) if TOKEN_RE.search(d.data)]
        assert mails, f"no confirmation for {rcpt}: {[d.data[:200] for d in self.sink.messages_for(rcpt)]}"
        return TOKEN_RE.search(mails[index].data).group(1).decode()

    # -- processes ---------------------------------------------------------------
    def env(self, **extra) -> dict:
        env = dict(os.environ, LISTGATE_CONFIG=self.site.path, **extra)
        return env

    def cli(self, *args: str, timeout: float = 60, **extra) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "listgate", *args], env=self.env(**extra),
                              capture_output=True, text=True, timeout=timeout)

    def spawn(self, *args: str, **extra) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "listgate", *args], env=self.env(**extra),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            try:
                proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.sink.stop()
        close_all()


def wait_until(predicate, timeout: float = 20.0, interval: float = 0.05):
    """Poll ``predicate`` until truthy (returns its value); raises TimeoutError."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("condition not met")


def text_of(delivery) -> str:
    """The decoded text body of a delivered message (generated mail may be quoted-printable)."""
    msg = delivery.message()
    body = msg.get_body(("plain",))
    return body.get_content() if body is not None else ""


def any_text(deliveries, needle: str) -> bool:
    return any(needle in text_of(d) for d in deliveries)
