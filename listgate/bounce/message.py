"""Tolerant parsing of inbound bounce mail: never raises on bad input.

Bounces come from strangers' MTAs: broken MIME, 8-bit junk in headers,
missing headers, truncated multiparts, gigantic attachments. Everything here
swallows parse errors and returns empty values instead.

Size cap: only the first :data:`MAX_PARSE_BYTES` octets of a message are
parsed. Every report format this package reads (RFC 3464 DSN, RFC 5965 ARF,
RFC 3834 auto-replies, the non-standard bounces flufl.bounce knows) puts its
machine-readable part or its diagnostic text before the returned original
message, so a cut-off tail only loses the copy of our own mail. Likewise only
the first :data:`MAX_TEXT_CHARS` characters of any text part are searched.
"""
from __future__ import annotations

import email
import email.policy
import re
from email.message import Message
from email.utils import getaddresses, parseaddr

from .. import header_text
from ..addresses import bare

MAX_PARSE_BYTES = 1024 * 1024        # 1 MiB of the message is parsed
MAX_TEXT_CHARS = 64 * 1024           # 64 KiB of each text part is searched
MAX_PARTS = 200                      # MIME parts walked, at most


def parse(raw: bytes) -> Message:
    """``raw`` (bytes; str accepted) → an ``email.message.Message`` (compat32).

    compat32 is the most forgiving policy of the stdlib parser: it records
    defects instead of raising. Input over :data:`MAX_PARSE_BYTES` is cut.
    Never raises; worst case returns an empty message.
    """
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogateescape")
    raw = bytes(raw[:MAX_PARSE_BYTES])
    try:
        return email.message_from_bytes(raw, policy=email.policy.compat32)
    except Exception:  # the parser is defensive, but bad input must never crash us
        return Message()


def header(msg: Message, name: str) -> str:
    """The first ``name`` header of ``msg`` as str ('' when absent or unreadable).

    Encoded words are left as they are; 8-bit junk comes back as U+FFFD.
    """
    values = headers(msg, name)
    return values[0] if values else ""


def _to_text(value) -> str:
    """A header value as str; raw 8-bit (surrogate-escaped by the parser) read as UTF-8.

    RFC 6532 allows UTF-8 in headers (and RFC 6533 in DSN address fields).
    """
    try:
        text = str(value)
    except Exception:
        return ""
    try:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text.strip()


def decoded_header(msg: Message, name: str) -> str:
    """Like :func:`header`, with RFC 2047 encoded words decoded (never raises)."""
    return header_text.decode(header(msg, name))


def headers(msg: Message, name: str) -> list[str]:
    """All ``name`` headers of ``msg`` as str (never raises)."""
    # raw_items(): the values as parsed, before compat32 turns 8-bit bytes
    # into an unreadable Header object
    name = name.lower()
    try:
        return [_to_text(v) for k, v in msg.raw_items() if k.lower() == name]
    except Exception:
        return []


def content_type(msg: Message) -> str:
    try:
        return msg.get_content_type()
    except Exception:
        return "text/plain"


def param(msg: Message, name: str, hdr: str = "content-type") -> str:
    """A parameter of a structured header, lower-cased ('' when absent)."""
    try:
        value = msg.get_param(name, header=hdr)
    except Exception:
        return ""
    if isinstance(value, tuple):  # RFC 2231 (charset, language, value)
        value = value[2]
    return str(value or "").strip().lower()


def walk(msg: Message, *, skip_returned: bool = False):
    """Yield ``msg`` and its MIME descendants (at most :data:`MAX_PARTS`), breadth first.

    ``skip_returned``: do not descend into message/rfc822 parts (the copy of
    our own mail that a bounce returns).
    """
    stack = [msg]
    seen = 0
    while stack and seen < MAX_PARTS:
        part = stack.pop(0)
        seen += 1
        yield part
        if skip_returned and content_type(part) == "message/rfc822":
            continue
        try:
            if part.is_multipart():
                payload = part.get_payload()
                if isinstance(payload, list):
                    stack.extend(p for p in payload if isinstance(p, Message))
        except Exception:
            continue


def text_of(part: Message) -> str:
    """Decoded text of a non-multipart part (at most :data:`MAX_TEXT_CHARS`).

    Transfer encoding is undone; the charset is honoured when known, else
    Latin-1 (never fails). A part whose payload is a message/* is rendered
    back to text.
    """
    try:
        if part.is_multipart():
            payload = part.get_payload()
            if isinstance(payload, list):
                return "\n".join(
                    p.as_string()[:MAX_TEXT_CHARS] for p in payload if isinstance(p, Message)
                )[:MAX_TEXT_CHARS]
            return ""
        data = part.get_payload(decode=True)
        if data is None:
            data = str(part.get_payload() or "").encode("utf-8", "replace")
    except Exception:
        return ""
    data = data[: MAX_TEXT_CHARS * 4]
    charset = "latin-1"
    try:
        charset = part.get_content_charset() or "utf-8"
    except Exception:
        pass
    try:
        text = data.decode(charset, "replace")
    except (LookupError, TypeError):
        text = data.decode("utf-8", "replace")
    if "\ufffd" in text:
        # A mislabelled charset (8-bit UTF-8 declared as ISO-2022-JP, say):
        # text that is valid UTF-8 is read as such.
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return text[:MAX_TEXT_CHARS]


def body_text(msg: Message) -> str:
    """The human-readable text of a bounce: text/* parts before any returned message.

    Parts inside a message/rfc822 (our own returned mail) are skipped: their
    words ("spam", "user") are not the remote MTA's.
    """
    chunks: list[str] = []
    total = 0
    stack = [msg]
    seen = 0
    while stack and seen < MAX_PARTS and total < MAX_TEXT_CHARS:
        part = stack.pop(0)
        seen += 1
        ctype = content_type(part)
        if ctype in ("message/rfc822", "text/rfc822-headers", "message/rfc822-headers"):
            continue
        try:
            multipart = part.is_multipart()
        except Exception:
            multipart = False
        if multipart:
            if ctype.startswith("message/"):
                continue
            try:
                payload = part.get_payload()
            except Exception:
                continue
            if isinstance(payload, list):
                stack.extend(p for p in payload if isinstance(p, Message))
            continue
        # a multipart/* the parser could not split (bad boundary) is text too
        if ctype.startswith(("text/", "multipart/")) or ctype == "message/delivery-status":
            text = text_of(part)
            chunks.append(text)
            total += len(text)
    return "\n".join(chunks)[:MAX_TEXT_CHARS]


# local@domain with a dotted domain; no spaces, quotes, brackets or JSON
# punctuation (a detector may hand us garbage); non-ASCII allowed (RFC 6531).
_ADDRESS_RE = re.compile(r'^[^\s"(),:;<>@\[\]\\{}]+@[^\s"(),:;<>@\[\]\\{}.]+(?:\.[^\s"(),:;<>@\[\]\\{}.]+)+$')
# Where a bounce quotes our own message inline (not as a MIME part); its
# words are not the remote MTA's.
_RETURNED_MARKER_RE = re.compile(
    r"^[\s\-=*#_]*(?:returned\s+(?:message|mail)|original\s+message|undelivered\s+message|"
    r"(?:the\s+)?(?:original\s+)?message\s+(?:header|headers)\s+follows?|"
    r"below\s+this\s+line\s+is\s+a\s+copy\s+of\s+the\s+message|"
    r"(?:the\s+)?header\s+of\s+the\s+original\s+message|bounced\s+e-?mail:|"
    r"unsent\s+message\s+below|this\s+is\s+a\s+copy\s+of\s+the\s+(?:original\s+)?message)",
    re.IGNORECASE | re.MULTILINE,
)


# The header block of a quoted original message: MTAs' own prose never starts
# a line with these trace fields (RFC 5322 section 3.6.7).
_QUOTED_HEADER_RE = re.compile(r"^(?:Received|Return-Path|DKIM-Signature|ARC-Seal):[ \t]", re.IGNORECASE | re.MULTILINE)


def without_returned_text(text: str) -> str:
    """``text`` up to the first marker of an inline-quoted original message, or
    the first trace header of one, whichever comes first (its words, e.g. an
    ``X-Virus-Scanned`` field, are not the remote MTA's)."""
    cuts = [m.start() for m in (_RETURNED_MARKER_RE.search(text), _QUOTED_HEADER_RE.search(text)) if m and m.start() > 0]
    return text[: min(cuts)] if cuts else text


def address_of(value: str) -> str | None:
    """The bare address in a header value or DSN field, lower-cased domain.

    ``'rfc822; <User@Example.COM>'`` → ``'User@example.com'``. None if none.
    """
    if not value:
        return None
    if ";" in value:
        kind, _, rest = value.partition(";")
        if "@" in rest or kind.strip().lower() in ("rfc822", "x-local"):
            value = rest
    value = value.strip().strip("\"'")
    try:
        _, addr = parseaddr(value)
    except Exception:
        addr = ""
    addr = bare(addr or value)
    if not _ADDRESS_RE.match(addr):
        return None
    local, _, domain = addr.rpartition("@")
    if not local or not domain:
        return None
    return f"{local}@{domain.lower().rstrip('.')}"


def addresses_in(msg: Message, name: str) -> list[str]:
    """All addresses in the ``name`` headers of ``msg`` (never raises)."""
    try:
        pairs = getaddresses(headers(msg, name))
    except Exception:
        return []
    out = []
    for _, addr in pairs:
        addr = address_of(addr) if addr else None
        if addr:
            out.append(addr)
    return out


def returned_message(msg: Message) -> Message | None:
    """The returned original (message/rfc822 or text/rfc822-headers part), if any."""
    for part in walk(msg):
        ctype = content_type(part)
        if ctype == "message/rfc822":
            try:
                payload = part.get_payload()
            except Exception:
                continue
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                return payload[0]
        elif ctype in ("text/rfc822-headers", "message/rfc822-headers"):
            return parse(text_of(part).encode("utf-8", "replace"))
    return None
