"""Reading untrusted mail: headers, the sender, the text of a command message, RFC 3834.

Everything here tolerates broken input (8-bit junk in headers, bad RFC 2047
words, broken MIME): the worst outcome is an empty string or None, never an
exception, so one bad message cannot stop a runner.
"""
from __future__ import annotations

import email.header
import email.utils
import re
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32

from .. import header_text as encoded_words
from ..addresses import bare
from ..bounce import message as bmsg
from ..bounce.autoreply import autoreply_reason

_BLANK_LINE = re.compile(rb"\r?\n\r?\n")

def headers(msg: bytes) -> Message:
    """The header section of ``msg`` as a compat32 :class:`Message` (body not parsed)."""
    return BytesHeaderParser(policy=compat32).parsebytes(msg)


def header_text(m: Message, name: str) -> str:
    """Header ``name`` decoded (RFC 2047) and unfolded; '' if absent or undecodable."""
    raw = m.get(name)
    if raw is None:
        return ""
    if isinstance(raw, email.header.Header):   # compat32's form of a value with 8-bit bytes
        raw = str(raw)
    return " ".join(encoded_words.decode(raw).split())


def author(m: Message) -> tuple[str, str] | None:
    """``(display name, address)`` from ``From`` (RFC 5322 section 3.6.2), or None.

    ``From`` is forgeable: callers use it for whom to answer and whom a post is
    from, never as proof of identity for a state change (that is what
    confirmation tokens are for).
    """
    for name in ("From", "Sender", "Reply-To"):
        try:
            display, addr = email.utils.parseaddr(str(m.get(name, "")))
        except (TypeError, ValueError, IndexError):
            continue
        if addr and "@" in addr and " " not in addr:
            return encoded_words.decode(display), addr
    return None


def is_null_sender(envelope_sender: str | None) -> bool:
    """True for ``<>`` and the MAILER-DAEMON conventions (RFC 5321 section 4.5.5)."""
    s = bare(envelope_sender or "")
    if not s:
        return True
    local = s.rpartition("@")[0] if "@" in s else s
    return local.lower() in ("mailer-daemon", "postmaster")


def auto_generated(m: Message, envelope_sender: str | None) -> str | None:
    """Why a message must not be answered automatically, or None.

    RFC 3834 section 2 and 5: ``Auto-Submitted`` other than ``no`` and the
    autoresponder signs :func:`listgate.bounce.autoreply.autoreply_reason`
    knows; also the
    de facto ``Precedence: bulk|junk|list``, the null sender or MAILER-DAEMON
    (RFC 5321 section 4.5.5), and list traffic (``List-Id``, RFC 2919) and the
    common autoresponder markers. Answering any of these risks a mail loop.
    """
    if is_null_sender(envelope_sender):
        return "null sender"
    reason = autoreply_reason(m)
    if reason:
        return reason
    prec = header_text(m, "Precedence").lower()
    if prec in ("bulk", "junk", "list"):
        return f"Precedence: {prec}"
    for name in ("List-Id", "X-Auto-Response-Suppress"):
        if m.get(name) is not None:
            return f"{name} present"
    writer = author(m)
    if writer and is_null_sender(writer[1]):
        return "From: MAILER-DAEMON"
    return None


def command_text(msg: bytes) -> str:
    """The first ``text/plain`` part of ``msg``, decoded (at most 64 KiB; never raises)."""
    parsed = bmsg.parse(msg)
    for part in bmsg.walk(parsed, skip_returned=True):
        if bmsg.content_type(part) == "text/plain":
            return bmsg.text_of(part)
    return ""


def split(msg: bytes) -> tuple[bytes, bytes, bytes]:
    """``(header section, end-of-line sequence, body)`` of raw ``msg``.

    The header section excludes the blank line; the body is everything after
    it, byte for byte. The end of line is the one the header section uses
    (CRLF or LF) so added headers match it. A message without a blank line is
    all header (RFC 5322 section 2.1: the body is optional).
    """
    m = _BLANK_LINE.search(msg)
    if m is None:
        eol = b"\r\n" if b"\r\n" in msg else b"\n"
        return msg.rstrip(b"\r\n"), eol, b""
    eol = b"\r\n" if msg[m.start():m.start() + 1] == b"\r" else b"\n"
    return msg[:m.start()], eol, msg[m.end():]


def fields(head: bytes, eol: bytes) -> list[bytes]:
    """Header fields of a raw header section with their continuation lines (RFC 5322 section 2.2.3),
    each without its last eol; continuation lines joined with ``eol``."""
    out: list[bytes] = []
    for line in head.split(b"\n"):
        line = line.rstrip(b"\r")
        if out and line[:1] in (b" ", b"\t"):
            out[-1] += eol + line
        else:
            out.append(line)
    return [f for f in out if f]


def field_name(field: bytes) -> str:
    """The lower-cased name of a raw header field."""
    return field.split(b":", 1)[0].strip().decode("ascii", "replace").lower()
