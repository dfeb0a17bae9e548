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


# the headers a moderator reads a held post by (listgate held show), in this order
SHOWN_HEADERS = ("From", "Sender", "Reply-To", "To", "Cc", "Date", "Subject", "Message-ID", "List-Id")


def outline(msg: bytes, shown: tuple[str, ...] = SHOWN_HEADERS) -> tuple[list[tuple[str, str]], str, list[str]]:
    """A message for a person to read: ``(headers, text, attachments)``; never raises.

    Control characters (a terminal's escapes) become U+FFFD. ``headers``: each of ``shown`` present, RFC 2047 decoded (:mod:`listgate.header_text`,
    ``email.policy.default``), 8-bit junk as UTF-8 or U+FFFD. ``text``: the first
    ``text/plain`` part that is not an attachment (else the first ``text/*`` one),
    decoded by its charset (at most 64 KiB). ``attachments``: one line per other
    leaf part, ``TYPE NAME (N bytes)``; their content is not shown.
    """
    parsed = bmsg.parse(msg)
    heads = [(name, " ".join(bmsg.decoded_header(parsed, name).split()))
             for name in shown if bmsg.headers(parsed, name)]
    body, text_parts, attached = None, [], []
    for part in bmsg.walk(parsed, skip_returned=True):
        ctype = bmsg.content_type(part)
        try:
            if ctype == "message/rfc822":      # a forwarded message: one attachment, not read into
                inner = part.get_payload()
                inner = inner[0] if isinstance(inner, list) and inner else None
                subject = bmsg.decoded_header(inner, "Subject") if inner is not None else ""
                attached.append(f"message/rfc822 {subject!r} ({len(part.as_bytes())} bytes)")
                continue
            if part.is_multipart():
                continue
            disposition = (part.get_content_disposition() or "").lower()
            filename = encoded_words.decode(part.get_filename() or "")
        except Exception:  # noqa: BLE001 - broken MIME is read as far as it goes
            disposition = filename = ""
        if ctype.startswith("text/") and disposition != "attachment" and not filename:
            text_parts.append(part)
            if body is None and ctype == "text/plain":
                body = part
            continue
        try:
            size = len(part.get_payload(decode=True) or b"")
        except Exception:  # noqa: BLE001
            size = 0
        attached.append(f"{ctype} {filename or '(no name)'} ({size} bytes)")
    if body is None and text_parts:
        body = text_parts[0]
    text = bmsg.text_of(body) if body is not None else ""
    # the parts besides the body that were text too (an HTML alternative): named, not shown
    attached[:0] = [f"{bmsg.content_type(p)} (alternative text, not shown)" for p in text_parts if p is not body]
    return [(n, _printable(v)) for n, v in heads], _printable(text, keep="\n\t"), [_printable(a) for a in attached]


_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _printable(text: str, keep: str = "") -> str:
    """``text`` without control characters (a terminal escape in a stranger's mail must not act
    on the moderator's terminal): each becomes U+FFFD, except those in ``keep``."""
    return _CONTROLS.sub(lambda m: m.group() if m.group() in keep else "\ufffd", text.replace("\r\n", "\n"))
