"""Signed one-click unsubscribe tokens (RFC 8058): ``https://BASE/u/TOKEN``.

A token names one member of one list and proves that listgate wrote it, so
the web front end can act on it without a database lookup. Form (three parts
joined by ``.``, every character URL-safe, RFC 3986 section 2.3)::

    PAYLOAD.KEYID.MAC

* ``PAYLOAD``: base64url without padding (RFC 4648 section 5) of
  ``list_key NUL member`` in UTF-8 (the list key is ``name@domain``);
* ``KEYID``: the id of the VERP key that signed (:mod:`listgate.verp`'s
  keyring, ``Site.verp_keys``: the same keys, the same rotation);
* ``MAC``: HMAC-SHA256 (RFC 2104) keyed with that key's secret over
  ``"listgate-unsubscribe" NUL list_key NUL member NUL keyid`` (list key and
  member lower-cased), base64url, cut to :data:`MAC_CHARS` characters
  (132 bits). The context string keeps a VERP MAC and a token MAC apart: one
  can never stand for the other.

Rotation: the first non-retired key signs; a retired key verifies for
``verp.retired_verify_window`` after its ``retired_at`` (or while listed
without it); a key removed from the list stops verifying at once.
"""
from __future__ import annotations

import base64
import binascii
import hmac
from typing import NamedTuple

from .. import clock
from ..addresses import list_key, split_address

__all__ = ["TokenError", "Unsubscribe", "sign", "verify", "MAC_CHARS", "MAX_TOKEN"]

MAC_CHARS = 22           # base64url characters of MAC kept: 132 bits
MAX_TOKEN = 1024         # longer is not ours (an address is at most 254 octets, RFC 5321 4.5.3.1.3)
_CONTEXT = b"listgate-unsubscribe"


class TokenError(ValueError):
    """A token that does not verify; ``reason`` is one of ``malformed``, ``unknown-key``,
    ``bad-mac``, ``retired-key``, ``unknown-list``."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class Unsubscribe(NamedTuple):
    """A verified token: the list's config ``lc``, the ``member`` address, the ``key_id`` that signed."""

    lc: object
    member: str
    key_id: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise TokenError("malformed", "payload is not base64url") from None


def _mac(secret: bytes, key_id: str, lkey: str, member: str) -> str:
    data = b"\x00".join((_CONTEXT, lkey.lower().encode("utf-8"), member.lower().encode("utf-8"),
                         key_id.encode("ascii")))
    return _b64(hmac.digest(secret, data, "sha256"))[:MAC_CHARS]


def sign(site, lc, member: str) -> str:
    """The token for ``member`` of list ``lc``, signed with the current signing key.

    Raises :class:`listgate.verp.VerpKeyError` when the key file cannot be read,
    ValueError when ``member`` is not an address (no ``@``) or holds a NUL.
    """
    if split_address(member) is None or "\x00" in member:
        raise ValueError(f"not an address: {member!r}")
    key = site.verp_keys.signer
    lkey = list_key(lc)
    payload = _b64(f"{lkey}\x00{member}".encode("utf-8"))
    return f"{payload}.{key.id}.{_mac(key.secret, key.id, lkey, member)}"


def verify(site, token: str) -> Unsubscribe:
    """The list and member ``token`` names, if one of ``site``'s keys signed it.

    Raises :class:`TokenError` (nothing else for any input string): malformed,
    a key id not in the keyring (``unknown-key``), a wrong MAC (``bad-mac``,
    compared with :func:`hmac.compare_digest`), a retired key past its window
    (``retired-key``), or a list this site no longer has (``unknown-list``).
    Raises :class:`listgate.verp.VerpKeyError` when a key file is unreadable.
    """
    if not isinstance(token, str) or not token.isascii() or len(token) > MAX_TOKEN:
        raise TokenError("malformed", "not a token")
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise TokenError("malformed", "expected PAYLOAD.KEYID.MAC")
    payload, key_id, mac = parts
    try:
        lkey, sep, member = _unb64(payload).decode("utf-8").partition("\x00")
    except UnicodeDecodeError:
        raise TokenError("malformed", "payload is not UTF-8") from None
    if not sep or "\x00" in member or split_address(member) is None or "@" not in lkey:
        raise TokenError("malformed", "payload does not name a list and a member")
    key = site.verp_keys.by_id.get(key_id.lower())
    if key is None:
        raise TokenError("unknown-key", key_id)
    expected = _mac(key.secret, key.id, lkey, member)
    if not hmac.compare_digest(expected.encode("ascii"), mac.encode("ascii")):
        raise TokenError("bad-mac")
    if key.verify_until is not None and clock.now() > key.verify_until:
        raise TokenError("retired-key", key.id)
    lc = site.lists.get(lkey.lower())
    if lc is None:
        raise TokenError("unknown-list", lkey)
    return Unsubscribe(lc, member, key.id)
