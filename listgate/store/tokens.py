"""Pending-record tokens: 128 bits from :mod:`secrets`, local-part safe.

26 lower-case base32 characters: survives MTAs that fold the case of local
parts, fits easily in RFC 5321's 64-octet local part next to ``L-confirm+``.

Tokens moved from Mailman 2.1 (``listgate import mailman21``) keep their form,
so a confirmation or probe Mailman mailed still works: 40 lower-case hex digits
(``Pending.py``: a SHA-1 hexdigest). Case folding by an MTA is undone by the
callers, which lower-case a token before matching it.
"""
from __future__ import annotations

import base64
import re
import secrets

TOKEN_BYTES = 16
TOKEN_RE = re.compile(r"^(?:[a-z2-7]{26}|[0-9a-f]{40})$")


def new_token() -> str:
    """A fresh token (128 bits of ``secrets.token_bytes``)."""
    return base64.b32encode(secrets.token_bytes(TOKEN_BYTES)).decode("ascii").rstrip("=").lower()


def is_token(text: str) -> bool:
    """True if ``text`` has a token's shape (says nothing about whether it is pending)."""
    return bool(TOKEN_RE.match(text))
