"""What every store backend does alike: address keys, the evidence cap, row shapes.

One place for the rules both :mod:`listgate.store.sqlite` and
:mod:`listgate.store.postgres` apply before anything reaches SQL, so the two
backends cannot drift apart.
"""
from __future__ import annotations

import json

from typing import Iterable

from .. import clock
from ..addresses import bare, match_key, normalize
from ..config import valid_address
from .base import DELIVERY_MODES, DELIVERY_STATUSES, PENDING_TYPES, DigestPost, DigestState, Member, PendingRecord
from .tokens import is_token

EVIDENCE_KEEP = 5                 # bouncing messages kept per member (newest)
EVIDENCE_MAX_BYTES = 256 * 1024   # per message; longer ones are cut with a note
REMEMBER_PURGE_BATCH = 100        # expired (kind, key) facts dropped per remember() call

MEMBER_COLUMNS = ("address", "key", "display_name", "delivery_status", "subscribed_at", "status_changed_at",
                  "bounce_score", "last_bounce_day", "last_bounce_at", "notices_left", "last_notice_at",
                  "re_enable_token", "delivery_mode", "moderated", "language")
# a members row: the Member's fields, then ``folded`` (match_key(key): what a list matching
# without case looks members up by; indexed, never unique: see ListStore.case_sensitive_local)
STORED_MEMBER_COLUMNS = MEMBER_COLUMNS + ("folded",)
EVENT_COLUMNS = ("at", "address", "bounce_class", "status", "attribution", "message_id", "action", "detail", "id")
PENDING_COLUMNS = ("token", "type", "payload", "created", "expires")
DIGEST_POST_COLUMNS = ("key", "at", "message", "claim", "id")
DIGEST_STATE_COLUMNS = ("volume", "issue", "last_sent", "claim", "claimed_at", "sent")
assert tuple(Member.__dataclass_fields__) == MEMBER_COLUMNS, "rows build Member positionally"
assert tuple(DigestPost.__dataclass_fields__) == DIGEST_POST_COLUMNS, "rows build DigestPost positionally"
assert tuple(DigestState.__dataclass_fields__) == DIGEST_STATE_COLUMNS, "rows build DigestState positionally"


def digest_post(row: tuple) -> DigestPost:
    """A row of :data:`DIGEST_POST_COLUMNS` as a post (the message as bytes whatever the driver gives)."""
    return DigestPost(row[0], row[1], bytes(row[2]), row[3], row[4])


def pending_record(row: tuple) -> PendingRecord:
    """A row of :data:`PENDING_COLUMNS` (payload as JSON text) as a fresh record."""
    return PendingRecord(token=row[0], type=row[1], payload=json.loads(row[2]), created=row[3], expires=row[4])


def member_key(address: str) -> str | None:
    """``normalize(address)``, None for a malformed address."""
    try:
        return normalize(address)
    except ValueError:
        return None


def member_values(member: Member) -> list:
    """The values of :data:`STORED_MEMBER_COLUMNS` for ``member``."""
    return [*(getattr(member, c) for c in MEMBER_COLUMNS), folded(member.key)]


def member_lookup(address: str, case_sensitive: bool) -> tuple[str, tuple] | None:
    """How a backend finds the member ``address`` names: the SQL after ``WHERE`` (``?``
    placeholders; condition, order, ``LIMIT 1``) and its parameters; None for a malformed address.

    Case-sensitive: the key as typed. Otherwise the folded key, the exact spelling first,
    then the oldest subscription (two spellings exist only in a store made before the rule,
    or one whose list was case-sensitive before).
    """
    key = member_key(address)
    if key is None:
        return None
    if case_sensitive:
        return "key = ? LIMIT 1", (key,)
    return "folded = ? ORDER BY key = ? DESC, subscribed_at, key LIMIT 1", (match_key(key), key)


def folded(key: str) -> str:
    """The ``folded`` column of a members row whose key is ``key`` (also what the migrations fill
    in rows made before it: a key that is no address, never written by listgate, keeps its own
    lower case)."""
    try:
        return match_key(key)
    except ValueError:
        return key.lower()


def clean_text(text: str | None) -> str | None:
    """``text`` as every backend can hold it (PostgreSQL's text type): no NUL, no lone surrogate
    (each becomes U+FFFD / '?')."""
    if text is None:
        return None
    return str(text).replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def bare_address(address: str) -> str:
    """``address`` as typed, minus angle brackets and surrounding space; ValueError unless valid
    (an address with a NUL or a lone surrogate is not: no backend could match it again)."""
    plain = bare(address or "")
    if not valid_address(plain) or clean_text(plain) != plain:
        raise ValueError(f"malformed address {address!r}")
    return plain


def new_member(address: str, display_name: str = "", status: str = "enabled") -> Member:
    """The record ``add_member`` / ``add_members`` write for a new member, subscribed now (listgate.clock).

    ValueError for a malformed address or an unknown delivery status.
    """
    plain = bare_address(address)
    if status not in DELIVERY_STATUSES:
        raise ValueError(f"unknown delivery status {status!r} (one of {', '.join(DELIVERY_STATUSES)})")
    now = clock.now()
    return Member(address=plain, key=normalize(plain), display_name=clean_text(display_name) or "",
                  delivery_status=status, subscribed_at=now, status_changed_at=None if status == "enabled" else now)


def first_of_each_key(members: Iterable[Member], case_sensitive: bool) -> list[Member]:
    """``members`` checked (:func:`check_member`, ValueError) with every later one of a member
    already seen (under the list's case rule: :func:`listgate.addresses.match_key`) left out."""
    seen: set[str] = set()
    kept = []
    for member in members:
        check_member(member)
        key = member.key if case_sensitive else folded(member.key)
        if key not in seen:
            seen.add(key)
            kept.append(member)
    return kept


def truncate_evidence(message: bytes, limit: int = EVIDENCE_MAX_BYTES) -> bytes:
    """``message`` if it fits in ``limit`` bytes, else its head plus a note saying it was cut."""
    if len(message) <= limit:
        return message
    note = f"\n\n[listgate: bounce truncated from {len(message)} to at most {limit} bytes]\n".encode("ascii")
    return message[: max(0, limit - len(note))] + note


def pending_payload(type: str, payload: dict) -> str:
    """``payload`` as the JSON text a pending record keeps (ASCII: \\u escapes keep NUL and lone
    surrogates out of the column); ValueError for an unknown ``type`` or a payload JSON cannot hold."""
    if type not in PENDING_TYPES:
        raise ValueError(f"unknown pending type {type!r} (one of {', '.join(PENDING_TYPES)})")
    try:
        return json.dumps(payload, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"pending payload is not JSON-safe: {exc}") from None


def check_member(member: Member) -> None:
    """ValueError unless ``member``'s delivery status and mode are known ones."""
    if member.delivery_status not in DELIVERY_STATUSES:
        raise ValueError(f"unknown delivery status {member.delivery_status!r}")
    if member.delivery_mode not in DELIVERY_MODES:
        raise ValueError(f"unknown delivery mode {member.delivery_mode!r} (one of {', '.join(DELIVERY_MODES)})")


def restored_pending(record: PendingRecord) -> str:
    """The payload text of a record brought in with its own token; ValueError if it cannot be kept."""
    if not isinstance(record.token, str) or not is_token(record.token):
        raise ValueError(f"not a pending token: {record.token!r}")
    return pending_payload(record.type, record.payload)
