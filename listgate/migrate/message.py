"""Turning a pickled Mailman 2.1 message back into the bytes of the mail.

Mailman pickled ``Mailman.Message.Message`` objects (subclasses of Python 2's
``email.Message.Message``) in held messages and queue entries
(``SAVE_MSGS_AS_PICKLES``). Read through :mod:`listgate.migrate.unpickle`
they are :class:`~listgate.migrate.unpickle.StandIn` objects with the state
Python 2's email package kept: ``_headers`` (a list of (name, value) pairs;
a value is a byte string or an ``email.Header.Header`` with ``_chunks`` of
(text, charset)), ``_payload`` (a byte string, or a list of messages for a
multipart or ``message/rfc822``), ``_unixfrom``, ``preamble``, ``epilogue``.
:func:`flatten` writes them as Python 2's ``Generator`` did (RFC 2046
section 5.1.1 multipart bodies), with CRLF-free ``\\n`` line ends as
Mailman kept them; byte strings come back exactly (they were read as
latin-1).
"""
from __future__ import annotations

import email.header
import re
from typing import Any

from .unpickle import StandIn

MAX_DEPTH = 50      # nesting of multiparts: deeper is a damaged or hostile file

_BOUNDARY = re.compile(r'boundary\s*=\s*(?:"([^"]+)"|([^\s;]+))', re.I)


class MessageFormatError(ValueError):
    """The pickled object is not a message we can write back."""


def is_message(obj: Any) -> bool:
    return isinstance(obj, StandIn) and obj.mm_class.rsplit(".", 1)[-1] in (
        "Message", "UserNotification", "OwnerNotification")


def flatten(obj: Any) -> bytes:
    """The bytes of message ``obj`` (a stand-in, or a Python 2 byte string read as latin-1).

    Raises :class:`MessageFormatError` for anything else.
    """
    if isinstance(obj, str):
        return _raw(obj)
    if not is_message(obj):
        raise MessageFormatError(f"not a message: {obj!r:.60}")
    return _flatten(obj, 0)


def _raw(text: str) -> bytes:
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8")     # a Python 2 unicode object


def _flatten(msg: StandIn, depth: int) -> bytes:
    if depth > MAX_DEPTH:
        raise MessageFormatError("message nested too deeply")
    out: list[bytes] = []
    headers = msg.get("_headers") or []
    if not isinstance(headers, list):
        raise MessageFormatError("message headers are not a list")
    content_type = ""
    for item in headers:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
            raise MessageFormatError("malformed header in a pickled message")
        name, value = item
        text = _header_value(value)
        if name.lower() == "content-type":
            content_type = text
        out.append(_raw(f"{name}: {text}\n"))
    out.append(b"\n")
    payload = msg.get("_payload")
    if isinstance(payload, str) or payload is None:
        out.append(_raw(payload or ""))
    elif isinstance(payload, list):
        if content_type.lower().startswith("message/"):
            out.extend(_flatten(part, depth + 1) for part in payload if is_message(part))
        else:
            out.append(_multipart(msg, payload, content_type, depth))
    else:
        raise MessageFormatError("message payload is neither text nor parts")
    return b"".join(out)


def _multipart(msg: StandIn, parts: list, content_type: str, depth: int) -> bytes:
    found = _BOUNDARY.search(content_type)
    if not found:
        raise MessageFormatError("multipart message without a boundary")
    boundary = _raw(found.group(1) or found.group(2))
    out = []
    preamble = msg.get("preamble")
    if isinstance(preamble, str) and preamble:
        out.append(_raw(preamble) + b"\n")
    for part in parts:
        if not is_message(part):
            raise MessageFormatError("a part of a multipart is not a message")
        out.append(b"--" + boundary + b"\n" + _flatten(part, depth + 1) + b"\n")
    out.append(b"--" + boundary + b"--\n")
    epilogue = msg.get("epilogue")
    if isinstance(epilogue, str) and epilogue:
        out.append(_raw(epilogue))
    return b"".join(out)


def _header_value(value: Any) -> str:
    """A header value as it goes on the wire: text kept, an ``email.Header.Header`` RFC 2047-encoded."""
    if isinstance(value, str):
        return value
    if isinstance(value, StandIn) and value.mm_class.endswith("Header"):
        header = email.header.Header()
        for chunk in value.get("_chunks") or []:
            if not (isinstance(chunk, tuple) and len(chunk) == 2 and isinstance(chunk[0], str)):
                continue
            text, charset = chunk
            name = charset.get("input_charset") if isinstance(charset, StandIn) else charset
            name = name if isinstance(name, str) and name else "us-ascii"
            try:
                decoded = text.encode("latin-1").decode(name)
            except (UnicodeError, LookupError):
                decoded, name = text, "utf-8"
            try:
                header.append(decoded, name)
            except (UnicodeError, LookupError):
                header.append(decoded, "utf-8")
        return header.encode()
    raise MessageFormatError(f"header value of type {type(value).__name__}")
