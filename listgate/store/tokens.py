"""Pending-record tokens: 128 bits from :mod:`secrets`, local-part safe.

26 lower-case base32 characters: survives MTAs that fold the case of local
parts, fits easily in RFC 5321's 64-octet local part next to ``L-confirm+``.
"""
from __future__ import annotations

import base64
import re
import secrets

TOKEN_BYTES = 16
TOKEN_RE = re.compile(r"^[a-z2-7]{26}$")


def new_token() -> str:
    """A fresh token (128 bits of ``secrets.token_bytes``)."""
    return base64.b32encode(secrets.token_bytes(TOKEN_BYTES)).decode("ascii").rstrip("=").lower()


def is_token(text: str) -> bool:
    """True if ``text`` has a token's shape (says nothing about whether it is pending)."""
    return bool(TOKEN_RE.match(text))
