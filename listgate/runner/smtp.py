"""The runner's SMTP client to the re-injection listener (``site.conf.reinject``).

One persistent connection per delivery thread (:class:`Connection`, reconnected
on demand and recycled after ``reinject.max_session_age`` seconds or
``reinject.max_session_messages`` transactions, so that a ``postfix reload``
reaches the listener's settings), the commit gate that lets one transaction at a time pass its final
dot (:data:`COMMIT_GATE`; why: :mod:`listgate.runner.delivery`'s docstring), and
the MAIL FROM / RCPT TO options: XVERP, ``BODY=8BITMIME`` (RFC 6152),
``SMTPUTF8`` (RFC 6531) and the DSN requests of RFC 3461 section 4
(:func:`dsn_options`).
"""
from __future__ import annotations

import re
import smtplib
import threading
import time

# Held from a transaction's final dot until its progress line is written (not yet fdatasync'd:
# a written line survives a kill of the process; :mod:`listgate.runner.delivery`'s docstring):
# one per process, shared by every delivery thread and Deliverer.
COMMIT_GATE = threading.Lock()


class Unreachable(Exception):
    """The re-injection listener cannot be reached (connect failed, connection dropped)."""


_LEADING_DOT = re.compile(rb"(?m)^\.")
# An addr-spec of atext, dots and one @ (RFC 5322 section 3.2.3): smtplib's quoteaddr
# (email.utils.parseaddr, Python code; a sixth of the runner's CPU per delivery) gives it back
# as ``<addr>`` unchanged. Anything else still goes through quoteaddr.
_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+\Z")


def _path(address: str) -> str:
    """The reverse- or forward-path of ``address`` (RFC 5321 section 4.1.2), as smtplib writes it."""
    return f"<{address}>" if _PLAIN_ADDRESS.match(address) else smtplib.quoteaddr(address)


class _GatedSMTP(smtplib.SMTP):
    """smtplib's client, whose DATA takes the connection's commit gate before the final dot."""

    def __init__(self, *args, before_dot, **kw):
        self._before_dot = before_dot
        super().__init__(*args, **kw)

    def mail(self, sender, options=()):
        """smtplib's ``mail`` (its SMTPUTF8 check included), the path written by :func:`_path`."""
        optionlist = ""
        if options and self.does_esmtp:
            if any(x.lower() == "smtputf8" for x in options):
                if not self.has_extn("smtputf8"):
                    raise smtplib.SMTPNotSupportedError("SMTPUTF8 not supported by server")
                self.command_encoding = "utf-8"
            optionlist = " " + " ".join(options)
        self.putcmd("mail", f"FROM:{_path(sender)}{optionlist}")
        return self.getreply()

    def rcpt(self, recip, options=()):
        """smtplib's ``rcpt``, the path written by :func:`_path`."""
        optionlist = " " + " ".join(options) if options and self.does_esmtp else ""
        self.putcmd("rcpt", f"TO:{_path(recip)}{optionlist}")
        return self.getreply()

    def data(self, msg):
        """DATA (RFC 5321 section 4.1.1.4) with ``msg`` as bytes with CRLF line ends:
        354, then the gate, then the dot-stuffed body (section 4.5.2) and the final dot.

        Body and dot go in one write: a dot written alone after the body waits for
        the body's ACK (Nagle), which the MTA delays (delayed ACK), 40 ms a message.
        (Sending the body before the gate, with TCP_NODELAY, made no difference to
        the MTA's dot-to-250 time in bench/fanout.py.)"""
        self.putcmd("data")
        code, repl = self.getreply()
        if code != 354:
            raise smtplib.SMTPDataError(code, repl)
        body = _LEADING_DOT.sub(b"..", msg) if msg.startswith(b".") or b"\n." in msg else msg
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
        self._before_dot()
        self.send(body + b".\r\n")
        return self.getreply()


class Connection:
    """One persistent SMTP client connection to ``site.conf.reinject`` (reconnects on demand).

    ``gate`` is taken before a final dot (:meth:`_enter_commit`) and given back by
    :meth:`end_commit`, once the caller recorded the outcome (module docstring).
    """

    def __init__(self, reinject, gate: threading.Lock = COMMIT_GATE):
        self.conf = reinject
        self._smtp: smtplib.SMTP | None = None
        self.gate = gate
        self._holding = False
        self._opened = 0.0      # time.monotonic() of the connect: a session's age, not business time
        self._uses = 0          # transactions begun on this session

    def _enter_commit(self) -> None:
        if not self._holding:  # a retried transaction (reconnect) already holds it
            self.gate.acquire()
            self._holding = True

    def end_commit(self) -> None:
        """Give the gate back if this connection holds it (idempotent)."""
        if self._holding:
            self._holding = False
            self.gate.release()

    def get(self) -> smtplib.SMTP:
        """The session for one transaction: the open one, or a new one (EHLO done) when
        there is none, it was closed, or it is due for recycling (module docstring).

        Raises :class:`Unreachable` when the listener cannot be reached."""
        if self._smtp is not None and self._smtp.sock is not None:
            if (self._uses < self.conf.max_session_messages
                    and time.monotonic() - self._opened < self.conf.max_session_age):
                self._uses += 1
                return self._smtp
            self.close()
        self.drop()
        try:
            smtp = _GatedSMTP(self.conf.host, self.conf.port, local_hostname=self.conf.helo,
                              timeout=self.conf.timeout, before_dot=self._enter_commit)
            smtp.ehlo_or_helo_if_needed()
        except (OSError, smtplib.SMTPException) as exc:
            raise Unreachable(f"cannot connect to {self.conf.host}:{self.conf.port}: {exc}") from None
        self._smtp, self._opened, self._uses = smtp, time.monotonic(), 1
        return smtp

    def takes_recipient(self, rcpt: str) -> int | None:
        """Ask the listener whether it takes ``rcpt`` (``MAIL FROM:<>``, ``RCPT TO``, ``RSET``: no
        message is sent); the reply code to RCPT (that to MAIL FROM if refused), or None when
        the listener cannot be reached."""
        try:
            smtp = self.get()
            code, _ = smtp.mail("")
            if code // 100 == 2:
                code, _ = smtp.rcpt(rcpt)
            smtp.rset()
            return code
        except (Unreachable, OSError, smtplib.SMTPException):
            self.drop()
            return None

    def drop(self) -> None:
        if self._smtp is not None:
            try:
                self._smtp.close()
            except OSError:
                pass
        self._smtp = None

    def close(self) -> None:
        """QUIT politely, then close."""
        if self._smtp is not None and self._smtp.sock is not None:
            try:
                self._smtp.quit()
            except (OSError, smtplib.SMTPException):
                pass
        self.drop()


def dsn_options(site, lc, meta: dict, rcpt: str) -> tuple[list[str], list[str]]:
    """``(MAIL FROM options, RCPT TO options)`` asking for DSNs (RFC 3461 section 4) for one
    recipient of the qfile with ``meta``: probes and per-member posts (module docstring), else none."""
    if lc is None or meta.get("xverp"):
        return [], []
    from .. import verp
    token = meta.get("probe_token")
    if token:
        mail_opts, notify = [f"ENVID={verp.xtext(verp.probe_envid(site, lc, token))}"], "NOTIFY=SUCCESS,FAILURE"
    elif meta.get("kind") == "post":
        mail_opts, notify = [f"ENVID={verp.xtext(verp.post_envid(site, lc, rcpt))}"], "NOTIFY=FAILURE,DELAY"
    else:
        return [], []
    rcpt_opts = [notify] + ([f"ORCPT=rfc822;{verp.xtext(rcpt)}"] if rcpt.isascii() else [])
    return mail_opts, rcpt_opts


def _options(smtp: smtplib.SMTP, msg: bytes, addresses: list[str], xverp: bool, utf8: bool) -> list[str]:
    opts = []
    if xverp:
        opts.append("XVERP")
    if smtp.has_extn("8bitmime") and not msg.isascii():
        opts.append("BODY=8BITMIME")
    if smtp.has_extn("smtputf8") and (utf8 or any(not a.isascii() for a in addresses)):
        opts.append("SMTPUTF8")
    return opts
