"""Signed member VERP and probe bounce addresses (DESIGN.md, "Address scheme").

Forms, for list ``L`` at domain ``D`` (the ``+`` is Postfix's
``recipient_delimiter``):

* member VERP, signed and dated: ``L-bounces+<local>=<domain>.<keyid>.<day><mac>@D``.
  ``day`` is the UTC day number of signing (POSIX days) modulo 32768, three
  lower-case base32 characters (RFC 4648 section 6 alphabet, most
  significant first); ``mac`` is HMAC-SHA256 (RFC 2104, stdlib :mod:`hmac`)
  keyed with the VERP key ``keyid`` over ``list_key NUL member NUL day`` with
  the list key and member address lower-cased, written in lower-case base32
  and cut to ``verp.mac_length`` characters. Lower case throughout, so an MTA
  that folds the case of local parts does not break the signature. Like
  BATV's ``prvs`` addresses (draft-levine-smtp-batv), an address is valid
  from its day for ``verp.max_age`` (default 14 days, more than an MTA's
  maximal queue lifetime): older ones decode as ``expired`` and are refused
  at RCPT like forged ones. One day of clock skew ahead is tolerated.
* undated, as signed before dated addresses existed:
  ``L-bounces+<local>=<domain>.<keyid>.<mac>@D``, MAC over ``list_key NUL
  member`` (the last label is exactly ``mac_length`` long, so the two forms
  never overlap). They verify only while ``verp.accept_undated_until`` (a
  date, set for one window after the upgrade) has not passed; otherwise
  they decode as ``undated`` and are refused.
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
configuration (:class:`Keyring`, kept as ``Site.verp_keys``; a
:class:`listgate.config.Watcher` reload reads them again). Every signature
is checked when it arrives, and a retired key's window at that moment.

Envelope ids (RFC 3461 section 4.4, ``MAIL FROM ... ENVID=``, at most 100
characters, returned in a DSN's ``Original-Envelope-Id``), signed with the
same keys:

* a post to a member: ``m.<day>.<keyid>.<mac>``, MAC over ``"envid" NUL "m"
  NUL list_key NUL member NUL day``. It does not carry the member (addresses
  run to 254 octets): :func:`envid_member` checks it against the recipients a
  DSN names, so it attributes exactly the members who cannot get VERP. It
  expires with ``verp.max_age`` like a VERP address.
* a probe: ``p.<token>.<keyid>.<mac>``, MAC over ``"envid" NUL "p" NUL
  list_key NUL token``; the token's pending record is what expires.

Long addresses: RFC 5321 section 4.5.3.1.1 limits a local part to 64 octets.
When the signed local part would be longer, the member's local part is not
a plain ASCII dot-atom (quoted strings, spaces, non-ASCII; RFC 5322 section
3.2.3) that survives being embedded, or its domain is not a host name (an
address literal ``[192.0.2.1]``, non-ASCII), :func:`member_bounce_address` returns the
plain ``L-bounces@D`` (logged at debug, ``verp_not_used``, with the reason):
that member's bounces are then attributed by their DSN
(``Final-Recipient``) or a detector instead of by VERP. Nothing is hashed or
truncated, so a VERP address always names its member exactly. A dotless
domain (``erin@localhost``) and a ``+`` in the member's local part
(``root+alice@localhost``) are embedded like any other.
"""
from __future__ import annotations

import base64
import hmac
import re
from dataclasses import dataclass
from typing import Any, NamedTuple

from . import clock
from .addresses import list_key, make, split_address
from .log import events
from .store.tokens import is_token

log = events("listgate.verp")

__all__ = ["VerpResult", "VerpKeyError", "Keyring", "member_bounce_address", "probe_bounce_address", "decode", "check_keys",
           "post_envid", "probe_envid", "envid_member", "envid_probe_token", "xtext",
           "MAX_LOCAL_PART", "KINDS", "ERRORS"]

MAX_LOCAL_PART = 64           # RFC 5321 section 4.5.3.1.1
KINDS = ("member", "probe", "unsigned", "invalid")
ERRORS = ("bad-mac", "retired-key", "unknown-key", "malformed", "unsigned-not-accepted", "unknown-token",
          "expired", "undated")
DAY_CHARS = 3                 # base32 characters of the signing day
_DAY_MOD = 32 ** DAY_CHARS    # day numbers wrap every ~90 years
_B32 = "abcdefghijklmnopqrstuvwxyz234567"
_SKEW_DAYS = 1                # a signing day this far ahead of ours still verifies (hosts' clocks)

# RFC 5322 section 3.2.3 dot-atom of atext, minus '@' (implicitly) and '=' kept
# legal: we split the member's local part from its domain at the *last* '='.
_DOT_ATOM_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
# A host name of one label or more (RFC 1035 section 2.3.1 labels): a member at a dotless
# domain (``erin@localhost`` on a local system) is legal and gets VERP like any other.
_DOMAIN_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)(?:\.(?!-)[a-z0-9-]{1,63}(?<!-))*$")
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
    :data:`ERRORS`.
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


class Keyring:
    """The VERP keys of one configuration (``verp`` section): ``signer``, ``by_id``, ``mac_length``.

    Built once per loaded configuration (``Site.verp_keys``); a reload builds
    a new one, so a key removed from the list stops verifying at once. Raises
    :class:`VerpKeyError` for an unreadable or short key file, a key id unfit
    for a local part, or when every key is retired.
    """

    def __init__(self, verp_conf):
        # 52 base32 characters carry all 256 bits of SHA-256; more would be padding
        self.mac_length = min(verp_conf.mac_length, 52)
        self.max_age_days = max(1, int(verp_conf.max_age // 86400))
        self.accept_undated_until = verp_conf.accept_undated_until
        window = verp_conf.retired_verify_window
        keys = []
        for k in verp_conf.keys:
            if not _KEY_ID_RE.match(k.id):
                raise VerpKeyError(f"VERP key id {k.id!r}: use 1-16 letters, digits, '_' or '-' (it goes in a local part)")
            until = None
            if k.retired and k.get("retired_at") is not None:
                until = k.retired_at + window
            keys.append(_Key(k.id, _read_secret(k.file, k.id), k.retired, until))
        # key ids compared case-insensitively: the whole local part may be case-folded
        self.by_id = {k.id.lower(): k for k in keys}
        signing = [k for k in keys if not k.retired]
        if not signing:
            raise VerpKeyError("every VERP key is retired; one must sign")
        self.signer = signing[0]


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


def check_keys(site) -> list[str]:
    """Problems with ``site``'s VERP keys (``listgate check``): unreadable or non-hex file,
    secret under 128 bits, key id unfit for a local part. Empty list when all is well."""
    try:
        Keyring(site.conf.verp)
    except VerpKeyError as exc:
        return [str(exc)]
    return []


def _mac(key: _Key, list_key: str, member: str, length: int, day: str | None = None) -> str:
    """HMAC-SHA256 over ``list_key NUL member`` (each lower-cased, UTF-8), then ``NUL day`` for
    a dated address, lower-case base32 without padding (RFC 4648 section 6), cut to ``length``."""
    text = f"{list_key.lower()}\x00{member.lower()}" + (f"\x00{day}" if day is not None else "")
    return _hmac_b32(key, text, length)


def _hmac_b32(key: _Key, text: str, length: int) -> str:
    digest = hmac.digest(key.secret, text.encode("utf-8", "surrogateescape"), "sha256")
    # base32 turns each 5 bytes into 8 characters on their own: encode only the groups that
    # the first ``length`` characters come from (b32encode is Python code, run per member)
    return base64.b32encode(digest[:-(-length // 8) * 5]).decode("ascii").rstrip("=").lower()[:length]


def day_code(ts: float | None = None) -> str:
    """The signing day of ``ts`` (default: now): POSIX day number mod 32768 as 3 base32 characters."""
    n = int((clock.now() if ts is None else ts) // 86400) % _DAY_MOD
    return "".join(_B32[(n >> shift) & 31] for shift in range(5 * (DAY_CHARS - 1), -1, -5))


def day_age(code: str, ts: float | None = None) -> int | None:
    """Whole days from signing day ``code`` to ``ts`` (default now); None if ``code`` is not one.

    A day up to one ahead (another host's clock) counts as age 0.
    """
    if len(code) != DAY_CHARS or any(c not in _B32 for c in code):
        return None
    n = 0
    for c in code:
        n = n * 32 + _B32.index(c)
    age = (int((clock.now() if ts is None else ts) // 86400) - n) % _DAY_MOD
    return 0 if age >= _DAY_MOD - _SKEW_DAYS else age


def member_bounce_address(site, lc, member_address: str, *, log_plain: bool = False) -> str:
    """The envelope sender for list ``lc``'s mail to ``member_address``.

    Returns ``L-bounces+<local>=<domain>.<keyid>.<day><mac>@D`` signed with
    the current signing key and today's day, or the plain ``L-bounces@D`` when the member cannot be
    embedded within 64 octets (see the module docstring). Raises
    :class:`VerpKeyError` if the signing key file is unreadable, ValueError if
    ``member_address`` has no ``@``. ``log_plain``: log the plain fallback and its
    reason at debug (the fan-out asks, once per member and post).
    """
    parts = split_address(member_address)
    if parts is None:
        raise ValueError(f"not an address: {member_address!r}")
    local, domain = parts
    plain = make(lc.name, lc.domain, "bounces")

    def fallback(reason: str) -> str:
        if log_plain:
            log.debug("verp_not_used", "plain bounce address for this member", list=plain,
                      member=member_address, reason=reason)
        return plain
    if not _DOT_ATOM_RE.match(local):
        return fallback("local part not a plain ASCII dot-atom")
    if not _DOMAIN_RE.match(domain):
        return fallback("domain not a host name")
    ring = site.verp_keys
    key = ring.signer
    day = day_code()
    mac = _mac(key, list_key(lc), f"{local}@{domain}", ring.mac_length, day)
    address = make(lc.name, lc.domain, "bounces", f"{local}={domain}.{key.id}.{day}{mac}")
    if len(address.rpartition("@")[0].encode("ascii")) > MAX_LOCAL_PART:
        return fallback(f"VERP local part over {MAX_LOCAL_PART} octets")
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
    ring = site.verp_keys
    signed = _decode_signed(ring, lc, ext)
    if signed is not None:
        return signed
    if lc.accept_unsigned_verp or lc.verp_mode == "xverp":
        member = _member_of(ext)
        return VerpResult("unsigned", member=member) if member else VerpResult("invalid", error="malformed")
    # neither a known key nor accepted unsigned: say which it looks like
    labels = ext.rpartition("=")[2].split(".")
    if len(labels) >= 3 and (_is_mac(labels[-1].lower(), ring.mac_length)
                             or _is_mac(labels[-1].lower(), ring.mac_length + DAY_CHARS)):
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


def _decode_signed(ring: Keyring, lc, ext: str) -> VerpResult | None:
    """A verified/refused result if ``ext`` names one of our key ids, else None."""
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
        mac = mac.lower()
        day = None
        if len(mac) == ring.mac_length + DAY_CHARS:
            day, mac = mac[:DAY_CHARS], mac[DAY_CHARS:]
        expected = _mac(key, list_key(lc), member, ring.mac_length, day)
        if not hmac.compare_digest(expected.encode("ascii"), mac.encode("ascii", "replace")):
            return VerpResult("invalid", key_id=key.id, error="bad-mac")
        if key.verify_until is not None and clock.now() > key.verify_until:
            return VerpResult("invalid", key_id=key.id, error="retired-key")
        if day is None:
            until = ring.accept_undated_until
            if until is None or clock.now() > until:
                return VerpResult("invalid", member=member, key_id=key.id, error="undated")
        else:
            age = day_age(day)
            if age is None or age > ring.max_age_days:
                return VerpResult("invalid", member=member, key_id=key.id, error="expired")
        return VerpResult("member", member=member, key_id=key.id)
    return None


def _decode_probe(site, lc, token: str, store) -> VerpResult:
    if store is None:
        from .store import open_store
        store = open_store(site, list_key(lc))
    record = store.peek_pending(token)
    if record is None or record.type != "probe":
        return VerpResult("invalid", token=token, error="unknown-token")
    return VerpResult("probe", token=token, pending=record)


# -- envelope ids (RFC 3461 section 4.4) -----------------------------------------------------------

MAX_ENVID = 100               # RFC 3461 section 4.4


def _envid_mac(key: _Key, kind: str, lc, value: str, length: int, day: str = "") -> str:
    return _hmac_b32(key, f"envid\x00{kind}\x00{list_key(lc).lower()}\x00{value.lower()}\x00{day}", length)


def post_envid(site, lc, member_address: str) -> str:
    """The ENVID of a post to ``member_address``: ``m.<day>.<keyid>.<mac>`` (module docstring).

    Raises :class:`VerpKeyError` if the signing key file is unreadable."""
    ring = site.verp_keys
    day = day_code()
    return f"m.{day}.{ring.signer.id}.{_envid_mac(ring.signer, 'm', lc, member_address, ring.mac_length, day)}"


def probe_envid(site, lc, token: str) -> str:
    """The ENVID of probe ``token``: ``p.<token>.<keyid>.<mac>``. ValueError if not token-shaped."""
    if not is_token(token):
        raise ValueError(f"not a token: {token!r}")
    ring = site.verp_keys
    return f"p.{token}.{ring.signer.id}.{_envid_mac(ring.signer, 'p', lc, token, ring.mac_length)}"


def _envid_key(ring: Keyring, key_id: str) -> _Key | None:
    key = ring.by_id.get(key_id.lower())
    if key is None or (key.verify_until is not None and clock.now() > key.verify_until):
        return None
    return key


def _envid_parts(envid: str | None, kind: str) -> list[str] | None:
    parts = (envid or "").strip().lower().split(".")
    return parts if len(parts) == 4 and parts[0] == kind and len(envid) <= MAX_ENVID else None


def envid_probe_token(site, lc, envid: str | None) -> str | None:
    """The probe token a DSN's ``Original-Envelope-Id`` carries, if it is one we signed, else None."""
    parts = _envid_parts(envid, "p")
    if parts is None or not is_token(parts[1]):
        return None
    ring = site.verp_keys
    key = _envid_key(ring, parts[2])
    if key is None:
        return None
    expected = _envid_mac(key, "p", lc, parts[1], ring.mac_length)
    return parts[1] if hmac.compare_digest(expected.encode("ascii"), parts[3].encode("ascii", "replace")) else None


def envid_member(site, lc, envid: str | None, candidates) -> str | None:
    """The one of ``candidates`` (addresses a DSN names) that post ENVID ``envid`` was signed for.

    None when ``envid`` is not a post ENVID of ours, is older than ``verp.max_age``,
    or names none of them. Candidates are compared lower-cased.
    """
    parts = _envid_parts(envid, "m")
    if parts is None:
        return None
    ring = site.verp_keys
    key = _envid_key(ring, parts[2])
    age = day_age(parts[1])
    if key is None or age is None or age > ring.max_age_days:
        return None
    for address in candidates:
        if not address:
            continue
        expected = _envid_mac(key, "m", lc, address, ring.mac_length, parts[1])
        if hmac.compare_digest(expected.encode("ascii"), parts[3].encode("ascii", "replace")):
            return address
    return None


def xtext(text: str) -> str:
    """``text`` as RFC 3461 section 4 xtext: ``+`` and ``=``, and anything outside ``!``..``~``,
    become ``+HH`` (upper-case hex of each UTF-8 octet)."""
    out = []
    for byte in text.encode("utf-8"):
        ch = chr(byte)
        out.append(ch if 33 <= byte <= 126 and ch not in "+=" else f"+{byte:02X}")
    return "".join(out)
