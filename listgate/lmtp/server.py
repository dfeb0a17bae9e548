"""The LMTP front end (RFC 2033): list mail the MTA has already queued, handed over per recipient.

A thin translation of LMTP to listgate's shared decisions, on aiosmtpd's
:class:`aiosmtpd.lmtp.LMTP` (the SMTP state machine with LHLO):

=========  ==================================================================
LHLO       announces PIPELINING, ENHANCEDSTATUSCODES, SIZE (``lmtp.max_message_size``, RFC 1870),
           8BITMIME (RFC 6152) and SMTPUTF8 (RFC 6531): the message is taken
           as bytes and stored byte-exact, whatever its encoding
MAIL       takes the current configuration (hot reload) for the transaction
RCPT       :func:`listgate.routing.decide_rcpt` (the policy service and the
           milter ask the same): ``accept``/``discard`` → 250; ``reject`` →
           routing's code (550 5.1.1 forged bounce address, unknown list);
           ``pass`` (not a list address) → 550 5.1.1; ``tempfail`` → 451 4.3.0
DATA       :func:`listgate.inject.store_each` (each (list, role, extension) on its own),
           in a worker thread (it fsyncs); then one reply per accepted
           recipient, in RCPT order (RFC 2033 section 4.2): 250 once its part
           is durable (a qfile, or the bounce engine's transaction), 451 4.3.0
           when it cannot be stored now, 452 4.3.1 when the disk is full
           (RFC 3463), 554 5.6.0 for input that is not a message. The MTA
           keeps every recipient without a 250 queued and retries it.
=========  ==================================================================

The SMTP client's address is not known here (the MTA is the LMTP client):
qfiles carry ``client_address: null``; the MTA's own checks ran at RCPT.
"""
from __future__ import annotations

import asyncio
import errno
from typing import Callable

from aiosmtpd.lmtp import LMTP

from ..inject import NotStored, Routed, Unusable, bare, check_message, store_each
from ..log import events
from ..routing import decide_rcpt

log = events("listgate.lmtp")

TEMPFAIL = "451 4.3.0 listgate cannot store this message now, try again later"
DISK_FULL = "452 4.3.1 listgate's queue is full, try again later"
NOT_OURS = "550 5.1.1 not a list address listgate manages"
TOO_BIG = "552 5.3.4 message too big for listgate"
LINE_TOO_LONG = "500 5.6.0 line too long"
# A text line of a message, CRLF included, may be this long: RFC 5322 section
# 2.1.1 asks for 998 characters, mail in the wild breaks it; aiosmtpd's default
# (1001) would refuse such a message for good.
LINE_LIMIT = 64 * 1024


class Handler:
    """aiosmtpd handler hooks; ``get_site()`` returns the current :class:`listgate.config.Site`."""

    def __init__(self, get_site: Callable):
        self.get_site = get_site

    async def handle_EHLO(self, server, session, envelope, hostname: str, responses: list[str]) -> list[str]:
        """LHLO's reply: aiosmtpd's, plus the PIPELINING and ENHANCEDSTATUSCODES an LMTP
        server must offer (RFC 2033 section 5); aiosmtpd reads pipelined commands in order."""
        session.host_name = hostname
        return [responses[0], "250-PIPELINING", "250-ENHANCEDSTATUSCODES", *responses[1:]]

    async def handle_MAIL(self, server, session, envelope, address: str, mail_options: list[str]) -> str:
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        envelope.site = self.get_site()
        envelope.routed = {}
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server, session, envelope, address: str, rcpt_options: list[str]) -> str:
        try:
            d = decide_rcpt(envelope.site, address, sender=bare(envelope.mail_from))
        except Exception:  # noqa: BLE001 - a bug must cost a retry, never an accepted or lost message
            log.exception("rcpt_failed", "RCPT decision failed", rcpt=address)
            return TEMPFAIL
        if d.action in ("accept", "discard"):
            envelope.rcpt_tos.append(address)
            envelope.routed[address] = Routed(address, d)
            return "250 2.1.5 OK"
        if d.action == "pass":
            return NOT_OURS
        text = (d.text or "refused").replace("\r", " ").replace("\n", " ")
        if d.action == "reject":
            return f"{d.code or 550} {d.dsn or '5.7.1'} {text}"
        return f"{d.code or 451} {d.dsn or '4.3.0'} {d.text or 'store unavailable, try again later'}"

    async def handle_DATA(self, server, session, envelope) -> str:
        """One reply line per accepted recipient, joined (aiosmtpd writes them as one push)."""
        msg = envelope.original_content
        try:
            check_message(msg)
        except Unusable as exc:
            return _per_rcpt(envelope.rcpt_tos, f"554 5.6.0 {exc}")
        sender = bare(envelope.mail_from)
        routed = [envelope.routed[rcpt] for rcpt in envelope.rcpt_tos]
        # each (list, role, extension) on its own: a part that fails costs only its own recipients a retry
        reply = await asyncio.get_running_loop().run_in_executor(None, _store, envelope.site, msg, sender, routed)
        return "\r\n".join(reply.get(rcpt, TEMPFAIL) for rcpt in envelope.rcpt_tos)


def _store(site, msg: bytes, sender: str, routed: list[Routed]) -> dict[str, str]:
    """The reply per recipient. Never raises: a bug costs a retry, not a lost message."""
    try:
        parts = store_each(site, msg, sender, routed)
    except Exception:  # noqa: BLE001
        log.exception("end_of_message_failed", rcpt=bare(routed[0].rcpt))
        return {}
    reply: dict[str, str] = {}
    for group, result in parts:
        if isinstance(result, NotStored):
            log.warning("tempfail", rcpt=group.rcpts[0], error=result)
            cause = result.__cause__
            full = isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT)
            status = DISK_FULL if full else TEMPFAIL
        else:
            status = "250 2.0.0 stored"
        for r in group.routed:
            reply[r.rcpt] = status
    return reply


def _per_rcpt(rcpts: list[str], status: str) -> str:
    return "\r\n".join([status] * max(1, len(rcpts)))


class ListgateLMTP(LMTP):
    """aiosmtpd's LMTP, with every reply to DATA given once per recipient.

    aiosmtpd answers a message over the size limit, or with an over-long
    line, with a single reply; an LMTP client waits for one per accepted
    recipient (RFC 2033 section 4.2) and would stall until its timeout.
    """

    line_length_limit = LINE_LIMIT

    async def smtp_DATA(self, arg: str) -> None:
        self._data_rcpts = list(self.envelope.rcpt_tos) if self.envelope else []
        try:
            await super().smtp_DATA(arg)
        finally:
            self._data_rcpts = []

    async def push(self, status) -> None:
        rcpts = getattr(self, "_data_rcpts", None)
        if rcpts and isinstance(status, str):
            if status.startswith("552 Error: Too much mail data"):
                status = _per_rcpt(rcpts, TOO_BIG)
            elif status.startswith("500 Line too long"):
                status = _per_rcpt(rcpts, LINE_TOO_LONG)
        await super().push(status)


def protocol_factory(site, get_site: Callable) -> Callable[[], ListgateLMTP]:
    """A factory for ``loop.create_server``: one :class:`ListgateLMTP` per connection."""
    handler = Handler(get_site)
    conf = site.conf.lmtp

    def make() -> ListgateLMTP:
        return ListgateLMTP(handler, data_size_limit=conf.max_message_size or None, enable_SMTPUTF8=True,
                            decode_data=False, hostname=site.conf.hostname, ident="listgate",
                            timeout=conf.timeout or 300)
    return make
