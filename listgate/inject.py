"""End of message: hand list mail over to listgate, durably, or not at all.

The one core behind both front ends that see whole messages: the milter (at
SMTP end of message, :mod:`listgate.milter`) and ``listgate inject`` (Exim's
pipe transport). Both have already routed each recipient with
:func:`listgate.routing.decide_rcpt`; :func:`store_message` takes the message
and those decisions and

* writes posts, ``-request``/``-join``/``-leave``, ``-confirm+TOKEN`` and
  ``-owner`` mail to the ``in`` queue, ONE qfile per (list, role, extension)
  with the metadata of docs/ARCHITECTURE.md ("Queues and qfile metadata");
* hands mail for ``L-bounces[+EXT]@D`` to
  :meth:`listgate.bounce.engine.BounceEngine.handle_bounce`, which classifies
  and scores it inline and queues its follow-up work;
* recognises a retried SMTP transaction of a message already accepted (same
  list and role, same Message-ID, within ``milter.duplicate_window``) and does
  not queue it twice. The qfile is written before the record of acceptance
  (``ListStore.remember``), so a failure never leaves a record without its
  qfile (see :func:`_queue`); the milter leaves the records to a writer
  thread that group-commits them (:class:`AcceptanceRecords`).

Only when every part has been stored may the caller say yes (SMTP 250, exit
0). :class:`NotStored` means nothing more can be stored now: answer 451 4.3.0
/ exit 75 and let the client retry; retries are idempotent because of the
duplicate check (qfiles stored before the failure are recognised as
duplicates on the retry).
"""
from __future__ import annotations

import hashlib
import logging
import re
import threading
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email import policy as email_policy
from typing import Iterable, Sequence

from . import clock
from .config import Site
from .log import kv
from .queue import QueueError, Switchboard
from .store import StoreUnavailable, open_store

log = logging.getLogger("listgate.inject")

# ListStore.remember() kind for "this (role, message) was accepted".
ACCEPTED_KIND = "accepted"
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
    ``duplicate`` (a retried transaction of a message already queued),
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


def bare(address: str) -> str:
    """``"<a@b>"`` → ``"a@b"``; ``"<>"`` → ``""`` (the null sender, RFC 5321 section 4.5.5)."""
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1].strip()
    return address


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


def message_key(msg: bytes) -> str:
    """What identifies a message across SMTP retries.

    The Message-ID (RFC 5322 section 3.6.4) when there is one; otherwise a
    SHA-256 over the body and the author's From/Date/Subject (the trace fields
    the MTA adds differ from one attempt to the next, these do not).
    """
    headers = BytesHeaderParser(policy=email_policy.compat32).parsebytes(msg)
    mid = headers.get("Message-ID")
    if mid is not None:
        mid = " ".join(str(mid).split())
        if mid:
            return mid
    digest = hashlib.sha256()
    for name in ("From", "Date", "Subject"):
        digest.update(str(headers.get(name, "")).encode("utf-8", "surrogateescape") + b"\0")
    sep = re.search(rb"\r?\n\r?\n", msg)
    digest.update(msg[sep.end():] if sep else b"")
    return "sha256:" + digest.hexdigest()


def _dup_key(role: str, extension: str | None, mkey: str, sender: str) -> str:
    # A retry comes from the same envelope sender: with it in the key, nobody can
    # suppress another sender's post by sending first with its Message-ID.
    return f"{role}:{extension or ''}:{sender.lower()}:{mkey}"


def look_ahead(site: Site, routed: Sequence[Routed], message_id: bytes, sender: str) -> dict:
    """Start the milter's duplicate looks as soon as the Message-ID field arrives.

    The MTA keeps sending the body meanwhile (header and body callbacks need
    no reply), so the look costs the end of message nothing. ``message_id``
    is the field's raw value. Returns ``prelooks`` for :func:`store_message`;
    a look whose key turns out not to match the message's is simply not used.
    """
    mkey = " ".join(message_id.decode("ascii", "surrogateescape").split())
    out: dict = {}
    if not mkey:
        return out
    window = site.conf.milter.duplicate_window
    for action, address, _ in _groups(routed):
        if action == "accept" and address.role != "bounces":
            key = _dup_key(address.role, address.extension, mkey, sender)
            out[(address.list_key, key)] = RECORDS.start(site, address.list_key, key, window)
    return out


def _groups(routed: Iterable[Routed]) -> list[tuple[str, object, list[str]]]:
    """(action, address, rcpts) per distinct (action, list, role, extension), in first-seen order."""
    out: dict[tuple, tuple[str, object, list[str]]] = {}
    for r in routed:
        action = r.decision.action
        if action not in ("accept", "discard"):
            raise ValueError(f"recipient {r.rcpt} was routed to {action!r}, not accept/discard")
        a = r.decision.address
        key = (action, a.list_key, a.role, a.extension)
        if key not in out:
            out[key] = (action, a, [])
        rcpt = bare(r.rcpt)
        if rcpt not in out[key][2]:
            out[key][2].append(rcpt)
    # Queue qfiles first, bounces last: a retry after a failed bounce then only
    # repeats the bounce (the qfiles are recognised as duplicates).
    return sorted(out.values(), key=lambda g: g[1].role == "bounces")


def store_message(site: Site, msg: bytes, sender: str, routed: Sequence[Routed], *,
                  mta_queue_id: str | None = None, client_address: str | None = None,
                  client_name: str | None = None, switchboard: Switchboard | None = None,
                  record_later: bool = False, prelooks: dict | None = None) -> list[Stored]:
    """Store ``msg`` (raw bytes, byte-exact) for every routed list recipient.

    ``sender`` is the envelope sender without angle brackets (``""`` for the
    null sender of a DSN, RFC 5321 section 4.5.5). Returns one :class:`Stored`
    per (list, role, extension), qfiles first. ``record_later``: leave the
    acceptance records to :data:`RECORDS`'s writer thread (the milter; see
    :class:`AcceptanceRecords`); ``prelooks``: looks started by :func:`look_ahead`. Raises :class:`NotStored` (retry)
    when the store or queue cannot be written; parts stored before the failure
    stay stored and are recognised as duplicates on the retry.
    """
    arrival = clock.now()
    try:
        sb = switchboard if switchboard is not None else _in_queue(site)  # (an empty one is falsy)
    except QueueError as exc:  # the queue directory cannot even be made: retry later, like a full disk
        raise NotStored(f"in queue: {exc}") from exc
    results: list[Stored] = []
    mkey: str | None = None
    for action, address, rcpts in _groups(routed):
        item = Stored(address.list_key, address.role, address.extension, rcpts)
        lc = site.lists.get(address.list_key)
        if lc is None:
            raise NotStored(f"list {address.list_key} is no longer configured")
        if action == "discard":
            item.outcome = "discarded"
        elif address.role == "bounces":
            _bounce(site, lc, msg, address, sender, mta_queue_id, item)
        else:
            mkey = mkey or message_key(msg)
            meta = {
                "list": address.list_key, "role": address.role, "extension": address.extension,
                "envelope_sender": sender, "recipients": rcpts, "mta_queue_id": mta_queue_id,
                "client_address": client_address, "client_name": client_name,
                "arrival": arrival, "message_key": mkey,
            }
            _queue(site, sb, msg, meta, mkey, item, record_later, prelooks or {})
        log.info("%s %s", item.outcome, kv(list=item.list_key, role=item.role, qfile=item.qfile,
                                           queue_id=mta_queue_id, message_key=mkey, detail=item.detail or None))
        results.append(item)
    return results


_IN_QUEUES: dict[tuple[str, int], Switchboard] = {}


def _in_queue(site: Site) -> Switchboard:
    """The site's ``in`` queue, one instance per process: its recycle pool and the
    group commit of its directory fsyncs are shared by the milter's threads (and
    no mkdir/listdir per message)."""
    key = (site.queue_dir, site.conf.runner.max_attempts)
    sb = _IN_QUEUES.get(key)
    if sb is None:
        sb = _IN_QUEUES[key] = Switchboard.for_site(site, "in")
    return sb


@dataclass(eq=False)
class _Request:
    """A look (is ``key`` accepted?) or, with ``qfile``, a record for the writer thread."""

    site: Site
    list_key: str
    key: str
    ttl: float
    sb: Switchboard | None = None
    qfile: str | None = None
    fresh: bool | None = None
    error: Exception | None = None
    done: bool = False


class AcceptanceRecords:
    """The milter's acceptance records (``ListStore.remember``): one writer thread.

    A record only serves to recognise a *retried* transaction, which comes
    after the client's timeout, long after the first attempt. So the milter
    answers as soon as the qfile is durable and leaves the record to the
    writer (:meth:`later`), which group-commits every record queued meanwhile,
    per list in one transaction (one fsync for the lot), the way a database's
    log writer batches commits. Until a record is written it is *pending*
    here and this process sees it at once. The cost: if the process dies in
    the few milliseconds between a qfile and its record, a later retry of that
    message is stored twice (at-least-once, never lost).

    Looks (:meth:`look`) go through the writer too, batched, before the records
    of the same round: the store has no read-only check (``remember`` takes
    SQLite's write lock, and SQLite makes a writer that finds it taken sleep
    and poll: 1, 2, 5, 10 ... ms), so one thread taking turns is faster than
    many threads contending. ``listgate inject`` (one message per process)
    looks and records synchronously instead.
    """

    def __init__(self):
        self._cond = threading.Condition()
        self._records: list[_Request] = []
        self._looks: list[_Request] = []
        self._pending: set[tuple[str, str]] = set()
        self._thread: threading.Thread | None = None

    def _wake(self) -> None:
        # caller holds self._cond
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="listgate-records", daemon=True)
            self._thread.start()
        self._cond.notify_all()

    def start(self, site: Site, list_key: str, key: str, ttl: float) -> _Request:
        """Start a look (see :meth:`look`) and return at once; :meth:`result` waits for it."""
        req = _Request(site, list_key, key, ttl)
        with self._cond:
            if (list_key, key) in self._pending:
                req.fresh, req.done = False, True
                return req
            self._looks.append(req)
            self._wake()
        return req

    def result(self, req: _Request) -> bool:
        """Wait for a look started with :meth:`start`. Raises what the store raised."""
        with self._cond:
            self._cond.wait_for(lambda: req.done)
        if req.error is not None:
            raise req.error
        return bool(req.fresh)

    def look(self, site: Site, list_key: str, key: str, ttl: float) -> bool:
        """True if ``key`` is not accepted yet (pending here or in the list's store).

        Raises what the store raises (StoreUnavailable, ...).
        """
        return self.result(self.start(site, list_key, key, ttl))

    def later(self, site: Site, sb: Switchboard, list_key: str, key: str, ttl: float, qfile: str) -> None:
        """Queue the record of ``qfile``; the writer takes the qfile back if a
        concurrent transaction of the same message was recorded first."""
        with self._cond:
            self._pending.add((list_key, key))
            self._records.append(_Request(site, list_key, key, ttl, sb, qfile))
            self._wake()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued record is written (or given up); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending, timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._records or self._looks)
                records, self._records = self._records, []
                looks, self._looks = self._looks, []
            try:
                # looks first: a milter thread waits on each, records wait for nobody. A
                # look racing a record of the same key queued after it is the concurrent
                # case that _record settles by taking the later qfile back.
                for items in _by_list(looks):
                    self._look(items)
                with self._cond:
                    for r in looks:
                        r.done = True
                    self._cond.notify_all()
                for items in _by_list(records):
                    self._record(items)
            except BaseException as exc:  # a bug here must not leave a milter thread waiting forever
                for r in looks:
                    if r.fresh is None and r.error is None:
                        r.error = exc
                raise
            finally:
                with self._cond:
                    for r in records:
                        self._pending.discard((r.list_key, r.key))
                    for r in looks:
                        r.done = True
                    self._cond.notify_all()

    @staticmethod
    def _record(items: list[_Request]) -> None:
        taken_back: list[_Request] = []
        try:
            store = open_store(items[0].site, items[0].list_key)
            with store.transaction():
                taken_back = [r for r in items if not store.remember(ACCEPTED_KIND, r.key, r.ttl)]
        except Exception as exc:  # noqa: BLE001 - the messages are stored; only their records are missing
            log.warning("stored without duplicate record %s", kv(list=items[0].list_key, count=len(items), error=exc))
            return
        for r in taken_back:
            take_back(r.sb, r.qfile)

    @staticmethod
    def _look(items: list[_Request]) -> None:
        try:
            store = open_store(items[0].site, items[0].list_key)
            for r, fresh in zip(items, _look_up(store, [(r.key, r.ttl) for r in items])):
                r.fresh = fresh
        except Exception as exc:  # noqa: BLE001 - handed to the waiting thread, which tempfails
            for r in items:
                r.error = exc


def _by_list(requests: list[_Request]) -> list[list[_Request]]:
    groups: dict[str, list[_Request]] = {}
    for r in requests:
        groups.setdefault(r.list_key, []).append(r)
    return list(groups.values())


class _Rollback(Exception):
    """Leaves a store transaction without writing (a read under the write lock)."""


def _look_up(store, keys: list[tuple[str, float]]) -> list[bool]:
    """For each (key, ttl): True if not accepted yet. Writes nothing (rolled back)."""
    fresh: list[bool] = []
    try:
        with store.transaction():
            fresh = [store.remember(ACCEPTED_KIND, key, ttl) for key, ttl in keys]
            raise _Rollback
    except _Rollback:
        pass
    return fresh


RECORDS = AcceptanceRecords()


def take_back(sb: Switchboard, qfile: str) -> None:
    """Remove a qfile that turned out to be a duplicate (if no runner holds it yet)."""
    held = sb.take(qfile)
    if held is not None:
        sb.finish(held)
        log.info("duplicate taken back %s", kv(qfile=qfile))


def _queue(site: Site, sb: Switchboard, msg: bytes, meta: dict, mkey: str, item: Stored,
           record_later: bool, prelooks: dict) -> None:
    """One qfile in ``in`` plus the acceptance record.

    The store is not locked while the qfile is written and fsync'd (that would
    serialise every post to a list behind two fsyncs):

    1. look: is the message already accepted, here (pending) or in the store?
       (``remember`` rolled back: nothing written). The qfile is written and
       fdatasync'd under its temporary name (:meth:`Switchboard.stage`, which
       no runner reads) while the look is answered, and removed unseen if the
       message is a duplicate;
    2. commit the qfile (rename, directory fsync: durable): a failure here
       leaves nothing behind;
    3. record the acceptance, now or (``record_later``) by :data:`RECORDS`'s
       writer. If a concurrent transaction of the same message recorded it
       first, our qfile is the duplicate and is taken back. If the record
       cannot be written, the message is stored all the same (only a later
       retry of it would not be recognised).
    """
    window = site.conf.milter.duplicate_window
    key = _dup_key(item.role, item.extension, mkey, meta.get("envelope_sender") or "")
    staged = None
    try:
        look = None
        if record_later:
            look = prelooks.get((item.list_key, key)) or RECORDS.start(site, item.list_key, key, window)
        staged = sb.stage(msg, meta, arrival=meta["arrival"])
        if look is not None:
            fresh = RECORDS.result(look)
        else:
            store = open_store(site, item.list_key)
            [fresh] = _look_up(store, [(key, window)])
        if not fresh:
            item.outcome = "duplicate"
            return
        item.qfile = staged.commit()
    except (StoreUnavailable, QueueError, OSError, KeyError) as exc:
        raise NotStored(f"{item.list_key}: {exc}") from exc
    finally:
        if staged is not None:
            staged.discard()  # a duplicate, or a failure: nothing stored (no-op once committed)
    item.outcome = "queued"
    if record_later:
        RECORDS.later(site, sb, item.list_key, key, window, item.qfile)
        return
    try:
        fresh = store.remember(ACCEPTED_KIND, key, window)
    except (StoreUnavailable, OSError) as exc:
        log.warning("stored without duplicate record %s", kv(list=item.list_key, qfile=item.qfile, error=exc))
        return
    if not fresh:
        take_back(sb, item.qfile)
        item.outcome, item.qfile = "duplicate", None


def _bounce(site: Site, lc, msg: bytes, address, sender: str, mta_queue_id: str | None, item: Stored) -> None:
    from .bounce.engine import BounceEngine  # the engine pulls in flufl.bounce: only load it for bounces

    try:
        outcome = BounceEngine(site).handle_bounce(lc, msg, address, envelope_sender=sender,
                                                   mta_queue_id=mta_queue_id)
    except (StoreUnavailable, QueueError, OSError) as exc:
        raise NotStored(f"{item.list_key}: bounce not registered: {exc}") from exc
    item.outcome = "bounce"
    item.detail = "; ".join(str(a) for a in getattr(outcome, "actions", ()) or ())
