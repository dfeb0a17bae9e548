"""One call of the bounce life cycle: its context (:class:`Run`) and its result (:class:`BounceOutcome`).

:class:`listgate.app.bounces.BounceEngine` makes a :class:`Run` for each
public call; the life cycle's other modules (probes, incidents, complaints,
dead domains) take it. Events are written to the list's store as they are
recorded; mail is collected and written to ``virgin`` by :meth:`Run.flush`
inside the caller's transaction, so a rolled-back call leaves no mail.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .. import clock, messages, verp
from ..bounce.classify import Classification, Failure
from ..store import BounceEvent, open_store
from . import notices

_DETAIL_MAX = 500       # characters of an event's detail kept (a diagnostic can be long)


@dataclass(frozen=True)
class BounceAction:
    """What the engine did about one address: the same facts as the stored :class:`BounceEvent`.

    ``action``: scored, same_day, recorded, ignored, residual, non_member,
    probe_sent, probe_outstanding, probe_policy, probe_unknown, disabled,
    removed, incident, complaint, forwarded, discarded, postmaster (a report
    forwarded to the site's postmaster).
    """

    address: str | None
    action: str
    bounce_class: str
    status: str | None = None
    attribution: str = ""
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.address or '-'}:{self.action}"


@dataclass
class BounceOutcome:
    """The result of one call: ``actions`` per address, ``queued`` virgin qfile ids."""

    list_key: str
    actions: list[BounceAction] = field(default_factory=list)
    queued: list[str] = field(default_factory=list)
    classification: Classification | None = None

    def summary(self) -> str:
        """``addr:action ...`` for one log line."""
        return " ".join(str(a) for a in self.actions) or "nothing"


class Run:
    """One call's context: the list, its store, events to record and mail to queue.

    The life cycle's other modules (probes, incidents, complaints, dead domains)
    take it; each public call of :class:`BounceEngine` makes one."""

    def __init__(self, engine, lc, message_id: str | None = None):
        self.engine = engine
        self.site = engine.site
        self.lc = lc
        self.key = messages.list_key(lc)
        self.store = open_store(self.site, self.key)
        self.message_id = message_id
        self.now = clock.now()
        self.outcome = BounceOutcome(self.key)
        self._outbox: list[tuple] = []

    def record(self, address: str | None, action: str, failure: Failure | None, *,
               bounce_class: str | None = None, attribution: str | None = None, detail: str = "") -> None:
        cls = bounce_class or (failure.bounce_class if failure else "unknown")
        status = failure.status if failure else None
        attr = attribution or (failure.attribution if failure else "none")
        text = detail or (failure.diagnostic if failure else "")
        text = " ".join((text or "").split())[:_DETAIL_MAX]
        self.store.add_event(BounceEvent(at=self.now, address=address, bounce_class=cls, status=status,
                                         attribution=attr, message_id=self.message_id, action=action,
                                         detail=text))
        self.outcome.actions.append(BounceAction(address, action, cls, status, attr, text))

    def send(self, msg, deliveries: list[dict], kind: str, meta: dict | None = None) -> None:
        self._outbox.append((msg, deliveries, kind, meta))

    def to_member(self, member_address: str) -> list[dict]:
        # The member's own VERP address: a bounce of the notice is attributed
        # to them (and is residual once they are disabled).
        return [{"rcpt": member_address,
                 "sender": verp.member_bounce_address(self.site, self.lc, member_address)}]

    def to_owners(self) -> list[dict]:
        return notices.owner_deliveries(self.lc)

    def flush(self) -> None:
        """Write collected mail to ``virgin``; called inside the transaction, before commit."""
        for msg, deliveries, kind, meta in self._outbox:
            qid = messages.queue_virgin(self.site, self.lc, msg, deliveries, kind=kind, meta=meta)
            self.outcome.queued.append(qid)
        self._outbox.clear()
