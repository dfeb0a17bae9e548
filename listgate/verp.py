"""Signed member VERP and probe bounce addresses (DESIGN.md, "Address scheme").

Forms, for list ``L`` at domain ``D`` (the ``+`` is Postfix's
``recipient_delimiter``):

* member VERP, signed: ``L-bounces+<local>=<domain>.<keyid>.<mac>@D``.
  ``mac`` is HMAC-SHA256 (RFC 2104, stdlib :mod:`hmac`) keyed with the VERP
  key ``keyid`` over ``list_key NUL member`` with the member address
  lower-cased, written in lower-case base32 (RFC 4648 section 6) and cut to
  ``verp.mac_length`` characters. Lower case throughout, so an MTA that folds
  the case of local parts does not break the signature.
* probe: ``L-bounces+<token>@D``, ``token`` a pending ``probe`` record
  (:mod:`listgate.store.tokens`).
* Mailman-style unsigned ``L-bounces+<local>=<domain>@D``: decoded only when
  the list sets ``accept_unsigned_verp`` (a migration window) or uses
  ``verp_mode: xverp`` (Postfix XVERP with its default ``+=`` delimiters
  writes exactly these addresses; such lists accept forgeable bounce
  addresses by choice).

Keys (``verp.keys`` in the site file): each file holds a hex secret. The first
key that is not ``retired`` signs. A retired key still verifies: for
``verp.retired_verify_window`` after its ``retired_at``, or, without
``retired_at``, as long as it is listed. Remove a key from the list to stop it
verifying at once (e.g. after a leak). Key files are read once per loaded
configuration (a :class:`listgate.config.Watcher` reload reads them again).

Long addresses: RFC 5321 section 4.5.3.1.1 limits a local part to 64 octets.
When the signed local part would be longer, or the member's local part is not
a plain ASCII dot-atom (quoted strings, spaces, non-ASCII; RFC 5322 section
3.2.3) that survives being embedded, :func:`member_bounce_address` returns the
plain ``L-bounces@D``: that member's bounces are then attributed by their DSN
(``Final-Recipient``) or a detector instead of by VERP. Nothing is hashed or
truncated, so a VERP address always names its member exactly.
"""
from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Any, NamedTuple

from . import clock, memo
from .addresses import make, split_address
from .store.tokens import is_token

__all__ = ["VerpResult", "VerpKeyError", "member_bounce_address", "probe_bounce_address", "decode", "check_keys",
           "MAX_LOCAL_PART", "KINDS", "ERRORS"]

MAX_LOCAL_PART = 64           # RFC 5321 section 4.5.3.1.1
KINDS = ("member", "probe", "unsigned", "invalid")
ERRORS = ("bad-mac", "retired-key", "unknown-key", "malformed", "unsigned-not-accepted", "unknown-token")

# RFC 5322 section 3.2.3 dot-atom of atext, minus '@' (implicitly) and '=' kept
# legal: we split the member's local part from its domain at the *last* '='.
_DOT_ATOM_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_DOMAIN_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)(?:\.(?!-)[a-z0-9-]{1,63}(?<!-))+$")
_B32_RE = re.compile(r"^[a-z2-7]+$")
_KEY_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,16}$")


class VerpKeyError(ValueError):
    """A VERP key file cannot be read or does not hold a hex secret."""


class VerpResult(NamedTuple):
    """What a ``L-bounces+EXT`` extension means (immutable).

    ``kind``: ``member`` (signed, verified), ``probe`` (a live probe token),
    ``unsigned`` (Mailman-style / XVERP, list accepts it), ``invalid``.
    ``member``: the member address ``local@domain`` for member/unsigned (the
    local part as it arrived: it may have been case-folded by an MTA).
    ``token``: the probe token (lower case); ``pending``: its probe
    :class:`~listgate.store.PendingRecord`. ``key_id``: the key that signed
    (also for ``bad-mac`` / ``retired-key``). ``error``: for ``invalid``, one of
    :data:`ERRORS`. A named tuple rather than a frozen dataclass: forged
    bounce addresses make one per RCPT, and a frozen dataclass costs a
    ``object.__setattr__`` call per field to build.
    """

    kind: str
    member: str | None = None
    token: str | None = None
    key_id: str | None = None
    error: str | None = None
    pending: Any = None

    @property
    def valid(self) -> bool:
        return self.kind != "invalid"


@dataclass(frozen=True)
class _Key:
    id: str
    secret: bytes
    retired: bool
    verify_until: float | None     # None: verifies while listed

    @property
    def keyed(self):
        """HMAC-SHA256 already keyed (copied per MAC: saves hashing the key pads each time)."""
        hm = self.__dict__.get("_keyed")
        if hm is None:
            hm = hmac.new(self.secret, digestmod=hashlib.sha256)
            object.__setattr__(self, "_keyed", hm)
        return hm

    def for_list(self, list_key: str):
        """:attr:`keyed` already fed ``list_key NUL`` (lower case), the start of every MAC for that list."""
        per_list = self.__dict__.get("_per_list")
        if per_list is None:
            per_list = {}
            object.__setattr__(self, "_per_list", per_list)
        hm = per_list.get(list_key)
        if hm is None:
            hm = self.keyed.copy()
            hm.update(f"{list_key.lower()}\x00".encode("utf-8", "surrogateescape"))
            memo.put(per_list, list_key, hm, limit=1024)    # list keys come from the configuration: a backstop
        return hm


class _Keyring:
    def __init__(self, verp_conf):
        # 52 base32 characters carry all 256 bits of SHA-256; more would be padding
        self.mac_length = min(verp_conf.mac_length, 52)
        window = verp_conf.retired_verify_window
        keys = []
        for k in verp_conf.keys:
            if not _KEY_ID_RE.match(k.id):
                raise VerpKeyError(f"VERP key id {k.id!r}: use 1-16 letters, digits, '_' or '-' (it goes in a local part)")
            until = None
            if k.retired and k.get("retired_at") is not None:
                until = k.retired_at + window
            keys.append(_Key(k.id, _read_secret(k.file, k.id), k.retired, until))
        self.keys = tuple(keys)
        # key ids compared case-insensitively: the whole local part may be case-folded
        self.by_id = {k.id.lower(): k for k in keys}
        signing = [k for k in keys if not k.retired]
        if not signing:
            raise VerpKeyError("every VERP key is retired; one must sign")
        self.signer = signing[0]
        # (list_key, extension) -> (key, "member" result) of signatures verified with this ring.
        # Exact: the MAC check is a function of the extension, the list key and these keys
        # alone; only the retired key's window depends on the time and is looked at per use.
        # Only verified extensions go in (a forger cannot fill it); a new configuration
        # (reload) builds a new ring, so a removed key stops verifying at once.
        self.verified: dict[tuple[str, str], tuple[_Key, VerpResult]] = {}


def _read_secret(path: str, key_id: str) -> bytes:
    try:
        with open(path, encoding="ascii") as fh:
            text = fh.read().strip()
        secret = bytes.fromhex(text)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise VerpKeyError(f"VERP key {key_id}: {path}: not a readable hex secret ({exc})") from None
    if len(secret) < 16:
        raise VerpKeyError(f"VERP key {key_id}: {path}: secret shorter than 128 bits")
    return secret


# id(verp conf) -> (conf, keyring); holding conf keeps the id from being reused
_keyrings: dict[int, tuple[Any, _Keyring]] = {}


def _keyring(site) -> _Keyring:
    conf = site.conf.verp
    hit = _keyrings.get(id(conf))
    if hit is not None and hit[0] is conf:
        return hit[1]
    ring = _Keyring(conf)
    memo.put(_keyrings, id(conf), (conf, ring), limit=8)    # a few configurations alive at once at most (reloads)
    return ring


def check_keys(site) -> list[str]:
    """Problems with ``site``'s VERP keys (``listgate check``): unreadable or non-hex file,
    secret under 128 bits, key id unfit for a local part. Empty list when all is well."""
    try:
        _Keyring(site.conf.verp)
    except VerpKeyError as exc:
        return [str(exc)]
    return []


def _mac(key: _Key, list_key: str, member: str, length: int) -> str:
    # the MAC input is f"{list_key.lower()}\x00{member.lower()}" (UTF-8, surrogateescape);
    # the list part is already in key.for_list(list_key)
    hm = key.for_list(list_key).copy()
    hm.update(member.lower().encode("utf-8", "surrogateescape"))
    digest = hm.digest()
    # base32 turns each 5 bytes into 8 characters: encode only the prefix we keep
    # (same characters as encoding the whole digest, at a fraction of the cost)
    prefix = digest[: min(len(digest), -(-length // 8) * 5)]
    return _b32(prefix)[:length]


_B32_PAIRS = tuple(a + b for a in "abcdefghijklmnopqrstuvwxyz234567" for b in "abcdefghijklmnopqrstuvwxyz234567")


def _b32(data: bytes) -> str:
    """Lower-case RFC 4648 base32 of ``data``, without padding characters.

    Equal to ``base64.b32encode(data).decode().lower()`` up to its first ``=``
    (the last group is completed with zero bits, as there); two characters per
    table lookup instead of base64's Python loop over padded bytes.
    """
    if len(data) % 5:
        data += bytes(5 - len(data) % 5)
    pairs = _B32_PAIRS
    out = []
    for i in range(0, len(data), 5):
        c = int.from_bytes(data[i:i + 5], "big")
        out.append(pairs[c >> 30] + pairs[(c >> 20) & 1023] + pairs[(c >> 10) & 1023] + pairs[c & 1023])
    return "".join(out)


# id(list config) -> (config, "name@domain"); holding the config keeps the id from being reused
_list_keys: dict[int, tuple[Any, str]] = {}


def _list_key(lc) -> str:
    hit = _list_keys.get(id(lc))
    if hit is not None and hit[0] is lc:
        return hit[1]
    key = f"{lc.name}@{lc.domain}"
    memo.put(_list_keys, id(lc), (lc, key), limit=256)     # the lists of a few configurations (reloads) at most
    return key


def member_bounce_address(site, lc, member_address: str) -> str:
    """The envelope sender for list ``lc``'s mail to ``member_address``.

    Returns ``L-bounces+<local>=<domain>.<keyid>.<mac>@D`` signed with the
    current signing key, or the plain ``L-bounces@D`` when the member cannot be
    embedded within 64 octets (see the module docstring). Raises
    :class:`VerpKeyError` if the signing key file is unreadable, ValueError if
    ``member_address`` has no ``@``.
    """
    parts = split_address(member_address)
    if parts is None:
        raise ValueError(f"not an address: {member_address!r}")
    local, domain = parts
    plain = make(lc.name, lc.domain, "bounces")
    if not _DOT_ATOM_RE.match(local) or not _DOMAIN_RE.match(domain):
        return plain
    ring = _keyring(site)
    key = ring.signer
    mac = _mac(key, _list_key(lc), f"{local}@{domain}", ring.mac_length)
    address = make(lc.name, lc.domain, "bounces", f"{local}={domain}.{key.id}.{mac}")
    if len(address.rpartition("@")[0].encode("ascii")) > MAX_LOCAL_PART:
        return plain
    return address


def probe_bounce_address(lc, token: str) -> str:
    """``L-bounces+<token>@D``: the envelope sender of a probe. ValueError if ``token`` is not token-shaped."""
    if not is_token(token):
        raise ValueError(f"not a token: {token!r}")
    return make(lc.name, lc.domain, "bounces", token)


def decode(site, lc, extension: str, *, store=None) -> VerpResult:
    """What the extension of ``L-bounces+<extension>@D`` means for list ``lc``.

    Never yields a member for a wrong MAC, an unknown key id or a retired key
    past its window; MACs are compared with :func:`hmac.compare_digest`. A
    probe token is looked up with ``store.peek_pending`` (``store`` defaults to
    ``open_store(site, list_key)``): unknown, expired or not a ``probe`` →
    ``invalid``/``unknown-token``.

    Raises :class:`listgate.store.StoreUnavailable` when the store cannot be
    read (callers answer 4xx), :class:`VerpKeyError` when a key file is unreadable.
    """
    ext = (extension or "").strip()
    if not ext or len(ext) > 1000:
        return VerpResult("invalid", error="malformed")
    low = ext.lower()
    if "=" not in ext:
        if is_token(low):
            return _decode_probe(site, lc, low, store)
        return VerpResult("invalid", error="malformed")
    ring = _keyring(site)
    signed = _decode_signed(ring, lc, ext)
    if signed is not None:
        return signed
    if lc.accept_unsigned_verp or lc.verp_mode == "xverp":
        member = _member_of(ext)
        return VerpResult("unsigned", member=member) if member else VerpResult("invalid", error="malformed")
    # neither a known key nor accepted unsigned: say which it looks like
    labels = ext.rpartition("=")[2].split(".")
    if len(labels) >= 3 and _is_mac(labels[-1].lower(), ring.mac_length):
        return VerpResult("invalid", error="unknown-key")
    if _member_of(ext):
        return VerpResult("invalid", error="unsigned-not-accepted")
    return VerpResult("invalid", error="malformed")


def _is_mac(text: str, length: int) -> bool:
    return len(text) == length and bool(_B32_RE.match(text))


def _member_of(text: str) -> str | None:
    """``local=domain`` → ``local@domain`` if both parts are plausible, else None."""
    local, eq, domain = text.rpartition("=")
    domain = domain.lower()
    if not eq or not _DOT_ATOM_RE.match(local) or not _DOMAIN_RE.match(domain):
        return None
    return f"{local}@{domain}"


VERIFIED_CACHE_MAX = 4096        # verified extensions kept per keyring; a full cache is emptied


def _decode_signed(ring: _Keyring, lc, ext: str) -> VerpResult | None:
    """A verified/refused result if ``ext`` names one of our key ids, else None."""
    list_key = _list_key(lc)
    hit = ring.verified.get((list_key, ext))
    if hit is not None:
        key, result = hit
        if key.verify_until is not None and clock.now() > key.verify_until:
            return VerpResult("invalid", key_id=key.id, error="retired-key")
        return result
    rest, dot, mac = ext.rpartition(".")
    if not dot:
        return None
    low_rest = rest.lower()
    for kid, key in ring.by_id.items():
        if not low_rest.endswith("." + kid):
            continue
        member = _member_of(rest[: -len(kid) - 1])
        if member is None:
            return VerpResult("invalid", key_id=key.id, error="malformed")
        expected = _mac(key, list_key, member, ring.mac_length)
        if not hmac.compare_digest(expected.encode("ascii"), mac.lower().encode("ascii", "replace")):
            return VerpResult("invalid", key_id=key.id, error="bad-mac")
        result = VerpResult("member", member=member, key_id=key.id)
        memo.put(ring.verified, (list_key, ext), (key, result), limit=VERIFIED_CACHE_MAX)
        if key.verify_until is not None and clock.now() > key.verify_until:
            return VerpResult("invalid", key_id=key.id, error="retired-key")
        return result
    return None


def _decode_probe(site, lc, token: str, store) -> VerpResult:
    if store is None:
        from .store import open_store
        store = open_store(site, _list_key(lc))
    record = store.peek_pending(token)
    if record is None or record.type != "probe":
        return VerpResult("invalid", token=token, error="unknown-token")
    return VerpResult("probe", token=token, pending=record)
