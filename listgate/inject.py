"""End of message: hand list mail over to listgate, durably, or not at all.

The one core behind the front ends that see whole messages: the milter (at
SMTP end of message, :mod:`listgate.milter`), ``listgate inject`` (Exim's
pipe transport) and the LMTP server. Each has already routed each recipient with
:func:`listgate.routing.decide_rcpt`; :func:`store_message` takes the message
and those decisions and

* writes posts, ``-request``/``-join``/``-leave``, ``-confirm+TOKEN`` and
  ``-owner`` mail to the ``in`` queue, ONE qfile per (list, role, extension)
  with the metadata of docs/ARCHITECTURE.md ("Queues and qfile metadata");
* hands mail for ``L-bounces[+EXT]@D`` to
  :meth:`listgate.app.bounces.BounceEngine.handle_bounce` with routing's
  VERP decision (``decision.verp``: nothing is decoded twice), which
  classifies and scores it inline and queues its follow-up work.

The grouping rule (:func:`groups`) lives here only. :func:`store_message`
stops at the first part it cannot store (one answer per transaction: milter,
``listgate inject``); :func:`store_each` tries every part and returns each
one's result (one answer per recipient: LMTP, :mod:`listgate.lmtp`).

Only when every part has been stored may the caller say yes (SMTP 250, exit
0). :class:`NotStored` means nothing more can be stored now: answer 451 4.3.0
/ exit 75 and let the client retry. A retried transaction of a message
already stored (the client lost our 250) is stored again; the runner drops
the second copy (:mod:`listgate.runner.duplicates`), so nothing at SMTP time
waits for a duplicate look or record.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from . import clock
from .addresses import bare
from .config import Site
from .log import events
from .queue import QueueError, Switchboard
from .store import StoreUnavailable

log = events("listgate.inject")

# The start of a header field: RFC 5322 section 2.2 field name (printable
# US-ASCII except colon), then the colon.
_FIELD_RE = re.compile(rb"^[!-9;-~]+[ \t]*:")


class NotStored(Exception):
    """The message could not be stored durably now (store or queue unavailable,
    full disk, list gone during the transaction). Nothing of the failed part was
    committed; the sender must retry (SMTP ``451 4.3.0``, sysexits 75)."""


class Unusable(ValueError):
    """The input is not a message listgate can hold (empty, no header section)
    (sysexits 65, SMTP ``554 5.6.0``)."""


@dataclass(frozen=True)
class Routed:
    """One recipient of the transaction and what routing decided for it.

    ``rcpt`` is the recipient as the MTA gave it (kept for ``delrcpt``);
    ``decision`` a :class:`listgate.routing.RcptDecision` whose ``action`` is
    ``accept`` or ``discard`` and whose ``address`` is the ListAddress.
    """

    rcpt: str
    decision: object


@dataclass
class Stored:
    """What happened to the mail for one (list, role, extension).

    ``outcome``: ``queued`` (qfile ``qfile`` in the ``in`` queue),
    ``bounce`` (the bounce engine took it; ``detail`` says what it did) or
    ``discarded`` (routing said to drop it).
    """

    list_key: str
    role: str
    extension: str | None
    recipients: list[str] = field(default_factory=list)
    outcome: str = ""
    qfile: str | None = None
    detail: str = ""


def check_message(msg: bytes) -> None:
    """Raise :class:`Unusable` unless ``msg`` starts with a header section.

    An mbox ``From `` line first (Exim's pipe transport default
    ``message_prefix``) is allowed; :func:`strip_envelope_line` removes it.
    """
    if not msg or not msg.strip():
        raise Unusable("empty message")
    first = strip_envelope_line(msg).split(b"\n", 1)[0]
    if not _FIELD_RE.match(first):
        raise Unusable("the message does not start with a header field (RFC 5322 section 2.2)")


def strip_envelope_line(msg: bytes) -> bytes:
    """Remove a leading mbox ``From sender date`` line, if any."""
    if msg.startswith(b"From "):
        _, nl, rest = msg.partition(b"\n")
        return rest if nl else b""
    return msg


@dataclass(frozen=True)
class Group:
    """The recipients of one (action, list, role, extension): one qfile, one bounce
    engine call, or one discard. ``decision`` is the first recipient's (one list
    address has one decision); ``routed`` the transaction's :class:`Routed` entries
    in this group, as given (an LMTP server answers each of them)."""

    action: str
    address: object
    decision: object
    routed: tuple[Routed, ...]

    @property
    def rcpts(self) -> list[str]:
        """The recipients without angle brackets, each once, in RCPT order."""
        return list(dict.fromkeys(bare(r.rcpt) for r in self.routed))


def groups(routed: Iterable[Routed]) -> list[Group]:
    """One :class:`Group` per distinct (action, list, role, extension), in first-seen
    order, bounces last. Raises ValueError for a recipient routed to anything but
    ``accept``/``discard`` (the front end should have answered it at RCPT)."""
    out: dict[tuple, list[Routed]] = {}
    for r in routed:
        action = r.decision.action
        if action not in ("accept", "discard"):
            raise ValueError(f"recipient {r.rcpt} was routed to {action!r}, not accept/discard")
        a = r.decision.address
        out.setdefault((action, a.list_key, a.role, a.extension), []).append(r)
    made = [Group(key[0], rs[0].decision.address, rs[0].decision, tuple(rs)) for key, rs in out.items()]
    # Queue qfiles first, bounces last: a retry after a failed bounce then only
    # repeats the bounce (the runner drops the qfiles' second copies).
    return sorted(made, key=lambda g: g.address.role == "bounces")


def store_message(site: Site, msg: bytes, sender: str, routed: Sequence[Routed], *,
                  mta_queue_id: str | None = None, client_address: str | None = None,
                  client_name: str | None = None) -> list[Stored]:
    """Store ``msg`` (raw bytes, byte-exact) for every routed list recipient.

    ``sender`` is the envelope sender without angle brackets (``""`` for the
    null sender of a DSN, RFC 5321 section 4.5.5). Returns one :class:`Stored`
    per (list, role, extension), qfiles first. Raises :class:`NotStored` (retry)
    at the first part that cannot be stored; parts stored before the failure
    stay stored, and the runner drops the copies the retry stores again. For
    the milter and ``listgate inject``: one answer for the whole transaction.
    """
    envelope = dict(mta_queue_id=mta_queue_id, client_address=client_address, client_name=client_name)
    sb, arrival = _begin(site)
    return [_store_group(site, sb, msg, sender, g, arrival, envelope) for g in groups(routed)]


def store_each(site: Site, msg: bytes, sender: str, routed: Sequence[Routed], *,
               mta_queue_id: str | None = None, client_address: str | None = None,
               client_name: str | None = None) -> list[tuple[Group, Stored | NotStored]]:
    """Like :func:`store_message`, but every group on its own: ``(group, Stored)``
    when its part is durable, ``(group, NotStored)`` when it must be retried; a
    failed part does not stop the others. For LMTP, which answers each
    recipient (RFC 2033 section 4.2)."""
    envelope = dict(mta_queue_id=mta_queue_id, client_address=client_address, client_name=client_name)
    todo = groups(routed)
    try:
        sb, arrival = _begin(site)
    except NotStored as exc:
        return [(g, exc) for g in todo]
    out: list[tuple[Group, Stored | NotStored]] = []
    for g in todo:
        try:
            out.append((g, _store_group(site, sb, msg, sender, g, arrival, envelope)))
        except NotStored as exc:
            out.append((g, exc))
    return out


def _begin(site: Site) -> tuple[Switchboard, float]:
    """The ``in`` queue and the arrival time of this transaction's qfiles."""
    try:
        return _in_queue(site), clock.now()
    except QueueError as exc:  # the queue directory cannot even be made: retry later, like a full disk
        raise NotStored(f"in queue: {exc}") from exc


def _store_group(site: Site, sb: Switchboard, msg: bytes, sender: str, group: Group, arrival: float,
                 envelope: dict) -> Stored:
    address = group.address
    item = Stored(address.list_key, address.role, address.extension, group.rcpts)
    lc = site.lists.get(address.list_key)
    if lc is None:
        raise NotStored(f"list {address.list_key} is no longer configured")
    if group.action == "discard":
        item.outcome = "discarded"
    elif address.role == "bounces":
        _bounce(site, lc, msg, group.decision, sender, envelope["mta_queue_id"], item)
    else:
        meta = {
            "list": address.list_key, "role": address.role, "extension": address.extension,
            "envelope_sender": sender, "recipients": item.recipients, **envelope, "arrival": arrival,
        }
        _queue(sb, msg, meta, item)
    if item.outcome != "bounce":      # a bounce is logged once, by the bounce life cycle (event=bounce)
        log.info("intake", list=item.list_key, role=item.role, outcome=item.outcome, qfile=item.qfile,
                 queue_id=envelope["mta_queue_id"], detail=item.detail or None)
    return item


_IN_QUEUES: dict[str, Switchboard] = {}


def _in_queue(site: Site) -> Switchboard:
    """The site's ``in`` queue, one instance per process: the group commit of its
    directory fsyncs is shared by the milter's threads (and no mkdir per message)."""
    sb = _IN_QUEUES.get(site.queue_dir)
    if sb is None:
        sb = _IN_QUEUES[site.queue_dir] = Switchboard.for_site(site, "in")
    else:
        sb.max_attempts = site.conf.runner.max_attempts  # a reload may have changed it
    return sb


def forget_in_queues() -> None:
    """Drop this process's ``in`` queue instances (their directories may be gone:
    tests that reuse a path)."""
    _IN_QUEUES.clear()


def _queue(sb: Switchboard, msg: bytes, meta: dict, item: Stored) -> None:
    """One qfile in ``in``, durable when this returns (:meth:`Switchboard.enqueue`)."""
    try:
        item.qfile = sb.enqueue(msg, meta, arrival=meta["arrival"])
    except (QueueError, OSError) as exc:
        raise NotStored(f"{item.list_key}: {exc}") from exc
    item.outcome = "queued"


def _bounce(site: Site, lc, msg: bytes, decision, sender: str, mta_queue_id: str | None, item: Stored) -> None:
    from .app.bounces import BounceEngine  # the engine pulls in flufl.bounce: only load it for bounces

    try:
        outcome = BounceEngine(site).handle_bounce(lc, msg, decision.address, verp_result=decision.verp,
                                                   envelope_sender=sender, mta_queue_id=mta_queue_id)
    except (StoreUnavailable, QueueError, OSError) as exc:
        raise NotStored(f"{item.list_key}: bounce not registered: {exc}") from exc
    item.outcome = "bounce"
    item.detail = "; ".join(str(a) for a in getattr(outcome, "actions", ()) or ())
