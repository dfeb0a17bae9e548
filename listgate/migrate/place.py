"""Where a Mailman 2.1 record goes in listgate, and what it becomes there.

:func:`candidates` applies the placement rules for records of the site-wide
``data/pending.pck`` (Mailman before 2.1.5), which does not say which list a
record belongs to: a re-enable record names its list; a held-message record
belongs to the list whose ``request.pck`` holds that id; a subscription to
the lists the address is not on; an unsubscription, change of address or
probe to the lists it is on. A record is placed only when exactly one list
qualifies: a token is unique site-wide (a PostgreSQL store keys records by
token alone), and guessing would let a confirmation act on a list nobody
asked about. :func:`pending_record` turns a record into listgate's
(:mod:`listgate.store.base` ``PENDING_TYPES``, payloads as
:mod:`listgate.app` writes them). :func:`queue_target` maps a Mailman queue
entry onto a listgate queue and qfile metadata
(``docs/ARCHITECTURE.md``, "Queues and qfile metadata").
"""
from __future__ import annotations

from typing import Any

from .. import verp
from ..addresses import list_key, make, normalize
from ..store import PendingRecord
from .records import MailmanPending, _plain, probe_message_id
from .unpickle import is_a

PENDING_REQUEST_LIFE = 3 * 86400      # Mailman 2.1 Defaults.PENDING_REQUEST_LIFE: created = expires - this


class Unplaceable(ValueError):
    """The record cannot become a listgate record (the message says why)."""


def candidates(rec: MailmanPending, lists: dict[str, set[str]], held_ids: dict[str, set[int]]) -> list[str]:
    """The lists (Mailman names) a record may belong to. ``lists``: name -> member addresses in
    lower case (Mailman compares addresses without case); ``held_ids``: name -> ids in the list's
    ``request.pck``."""
    if rec.list_name is not None:
        return [rec.list_name]
    if rec.op == "E":
        name = rec.content[0] if rec.content and isinstance(rec.content[0], str) else ""
        return [name.lower()] if name.lower() in lists else []
    if rec.op == "H":
        wanted = rec.content[0] if rec.content else None
        return sorted(n for n, ids in held_ids.items() if wanted in ids)
    key = rec.address().lower() if _key(rec.address()) is not None else None
    if key is None:
        return []
    if rec.op == "S":
        return sorted(n for n, members in lists.items() if key not in members)
    return sorted(n for n, members in lists.items() if key in members)


def pending_record(rec: MailmanPending, now: float, default_lifetime: float,
                   members: dict[str, tuple[str, float]]) -> PendingRecord:
    """The listgate record for a Mailman ``S``/``U``/``C``/``E``/``P`` record, with the same token.

    ``members``: the list's members, lower-cased address -> (listgate member key, bounce score):
    Mailman matched addresses without case, listgate keeps the local part's case.

    ``H`` records are not converted here: their token becomes the hold's
    (see :mod:`listgate.migrate.run`). Raises :class:`Unplaceable`.
    """
    expires = rec.expires if rec.expires is not None else now + default_lifetime
    created = min(now, expires - PENDING_REQUEST_LIFE)
    content = rec.content
    if rec.op == "S":
        desc = content[0] if content else None
        if is_a(desc, "Mailman.UserDesc.UserDesc"):
            address, name = desc.get("address"), desc.get("fullname")
            digest, language = desc.get("digest"), desc.get("language")
        elif content and isinstance(content[0], str):      # converted from Mailman 2.0
            address, name = content[0], ""
            digest = content[2] if len(content) > 2 else 0
            language = content[-1] if len(content) > 3 else ""
        else:
            raise Unplaceable("subscription record without an address")
        _require_address(address)
        payload = {"address": address, "display_name": name if isinstance(name, str) else "",
                   "delivery_mode": "mime_digest" if digest else "regular",
                   "language": language if isinstance(language, str) else ""}
        return PendingRecord(rec.token, "subscription", payload, created, expires)
    if rec.op == "U":
        _require_address(rec.address())
        return PendingRecord(rec.token, "unsubscription", {"address": rec.address()}, created, expires)
    if rec.op == "C":
        if len(content) < 2:
            raise Unplaceable("change of address record without both addresses")
        _require_address(content[0])
        _require_address(content[1])
        return PendingRecord(rec.token, "change_of_address", {"old": content[0], "new": content[1]},
                             created, expires)
    if rec.op in ("E", "P"):
        address = rec.address()
        _require_address(address)
        key, score = members.get(address.lower(), (normalize(address), 0.0))
        if rec.op == "E":
            return PendingRecord(rec.token, "re_enable", {"member": key}, created, expires)
        payload = {"member": key, "address": address, "message_id": probe_message_id(content),
                   "score": score}
        return PendingRecord(rec.token, "probe", payload, created, expires)
    raise Unplaceable(f"op {rec.op!r} is not converted here")


def _key(address: Any) -> str | None:
    try:
        return normalize(address) if isinstance(address, str) else None
    except ValueError:
        return None


def _require_address(address: Any) -> None:
    if _key(address) is None:
        raise Unplaceable(f"malformed address {address!r}")


# Mailman msgdata flags -> listgate role of mail to the list (Mailman 2.1 bin/post, mailcmd)
_ROLE_FLAGS = (("torequest", "request"), ("tojoin", "join"), ("toleave", "leave"), ("toconfirm", "request"),
               ("toowner", "owner"), ("toadmin", "owner"), ("tolist", "post"))
DIRECT = {"in": "in", "commands": "in", "bounces": "bounces", "out": "out", "retry": "retry",
          "virgin": "virgin", "shunt": "shunt"}


def queue_target(site, lc, queue: str, meta: dict, now: float) -> tuple[str, dict]:
    """(listgate queue, metadata) for an entry of Mailman queue ``queue`` for list ``lc``.

    Raises :class:`Unplaceable` for a queue listgate has no counterpart for
    (``archive``, ``news``, ...) or an outgoing entry without recipients.
    """
    if queue not in DIRECT:
        raise Unplaceable(f"Mailman queue {queue!r} has no listgate counterpart (archive, news, maildir ...)")
    target = DIRECT[queue]
    out: dict[str, Any] = {"list": list_key(lc), "mailman21": {"queue": queue, "metadata": _plain(meta)}}
    sender = meta.get("original_sender") or meta.get("envsender")
    if isinstance(sender, str) and sender:
        out["envelope_sender"] = sender
    if target in ("in", "shunt"):
        role = next((r for flag, r in _ROLE_FLAGS if meta.get(flag)), "request" if queue == "commands" else "post")
        out["role"] = role
        if target == "shunt":
            out["reason"] = "shunted by Mailman 2.1 (moved as it was)"
        return target, out
    if target == "bounces":
        out["role"] = "bounces"
        return target, out
    recips = meta.get("recips")
    if not (isinstance(recips, (list, tuple)) and recips and all(isinstance(r, str) for r in recips)):
        raise Unplaceable(f"Mailman {queue} entry without recipients")
    plain = make(lc.name, lc.domain, "bounces")
    deliveries = []
    for rcpt in recips:
        sender_for = plain if (target == "virgin" or lc.verp_mode == "xverp") else verp.member_bounce_address(
            site, lc, rcpt)
        deliveries.append({"rcpt": rcpt, "sender": sender_for})
    out.update(role="post", kind="post" if target != "virgin" else "notice", deliveries=deliveries, done=[],
               recipients_count=len(deliveries))
    if lc.verp_mode == "xverp" and target != "virgin":
        out["xverp"] = True
    if target == "retry":
        out.update(retry_at=now, retries=0, first_deferred_at=now)
    return target, out
