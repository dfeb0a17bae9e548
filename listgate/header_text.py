"""Header text of mail from strangers: RFC 2047 encoded words decoded, never an exception.

The one decoder of header values for every reader (the list application's
:mod:`listgate.app.mail`, the bounce reader's :mod:`listgate.bounce.message`):
:func:`decode` lets the standard library's header parser
(``email.policy.default``) read the encoded words (RFC 2047 section 6: white
space between adjacent encoded words is dropped, an unknown charset or a bad
encoding is a defect, not an error).
"""
from __future__ import annotations

import email.policy

__all__ = ["decode"]


def _readable(text: str) -> str:
    """Lone surrogates (8-bit bytes the parser kept as escapes) read as UTF-8, else U+FFFD."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def decode(value: str) -> str:
    """``value`` (a raw header value, possibly folded) with its encoded words decoded.

    Folding line breaks are removed (RFC 5322 section 2.2.3); anything the
    parser cannot read comes back as it was. Never raises.
    """
    raw = "".join(str(value).splitlines())
    try:
        text = str(email.policy.default.header_factory("x-listgate-decoded", raw))
    except Exception:  # noqa: BLE001 - the parser is defensive, but bad input must never crash a reader
        text = raw
    return _readable(text)
