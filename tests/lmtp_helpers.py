"""The LMTP server in a background thread of the test process, and an LMTP client
that reads the one-reply-per-recipient answer to DATA (RFC 2033 section 4.2)."""
from __future__ import annotations

import asyncio
import smtplib
import threading

from listgate import config
from listgate.lmtp import LmtpServer

from conftest import free_port


class RunningLmtp:
    """``with RunningLmtp(site) as srv:`` serves ``srv.host``/``srv.port`` (or the site's unix socket)."""

    def __init__(self, site, socket_spec: str | None = None):
        self.watcher = config.Watcher(site.path, interval=0, site=site)
        self.socket_spec = socket_spec or f"inet:{free_port()}@127.0.0.1"
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> "RunningLmtp":
        self.thread.start()
        self.server = LmtpServer(self.watcher.current, self.socket_spec)
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        self.kind, self.where = self.server.address
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def client(self) -> smtplib.LMTP:
        if self.kind == "unix":
            c = smtplib.LMTP(self.where, timeout=30)
        else:
            c = smtplib.LMTP(self.where[0], self.where[1], timeout=30)
        c.ehlo_or_helo_if_needed()
        return c

    def transact(self, sender: str, rcpts: list[str], msg: bytes, mail_options=()) -> dict:
        """One transaction; ``{rcpt: (code, text)}``: the RCPT refusal, or the reply after DATA.

        A ``"MAIL"`` key holds a refused MAIL's reply (then nothing else happens).
        """
        out: dict = {}
        with self.client() as c:
            code, text = c.mail(sender, list(mail_options))
            if code != 250:
                return {"MAIL": (code, text.decode())}
            accepted = []
            for r in rcpts:
                code, text = c.rcpt(r)
                if code == 250:
                    accepted.append(r)
                else:
                    out[r] = (code, text.decode())
            if not accepted:
                return out
            code, text = c.data(msg)
            out[accepted[0]] = (code, text.decode())
            for r in accepted[1:]:
                code, text = c.getreply()
                out[r] = (code, text.decode())
        return out
