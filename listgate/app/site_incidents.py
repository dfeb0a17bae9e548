"""Site incidents: failures that are the site's, not the members' (DESIGN.md, "Bounce life cycle" 7).

An incident has a *scope*: :data:`ALL` (every recipient of the list: our
re-injection listener refuses, our MTA does not answer, one text across many
domains) or one domain (a domain incident, :mod:`listgate.app.incidents`).
While an incident is open:

* nobody is scored or probed for a failure it covers (the bounce is recorded
  as ``incident``; a probe bounce does not disable);
* fan-out to what it covers *pauses*: :mod:`listgate.runner.delivery` does
  not hand those recipients over; their qfile waits in ``retry`` (nothing is
  lost, each recipient is handed over once);
* the postmaster (site key ``postmaster``) and the owners are told once, when
  it opens, with the evidence.

It clears by itself: the pause lasts ``bounce_site_incident.retry`` after the
last failure seen; then one delivery is let through. A failure again refreshes
the incident (no second notice). What clears it depends on how it was seen:

* refused at hand-over (our MTA): a 2xx at hand-over clears it at once and the
  paused qfiles resume;
* seen from bounces (a domain incident, one text across many domains): a 2xx at
  hand-over only means our MTA queued the mail, so that delivery is a *trial*
  (event ``site_incident`` "trial"), the others stay paused. If its bounce comes
  back, the incident is refreshed; if none came back when the pause ends, the
  next 2xx at hand-over clears it. So a domain that keeps failing costs one
  recipient's copy per ``retry``, not a post for all its members.

State lives in the list's bounce events (no new table): ``site_incident``
(opened, still failing, or a trial) and ``site_incident_cleared``, detail
``scope SCOPE: what: reason``. An incident whose last event is older than
:data:`HORIZON` is over (nothing was delivered to clear it, and nothing failed).

The postmaster is told once per incident of the *site*, not per list: several
lists on one broken listener (or with members at one failing domain) open one
incident each, each list's owners get their notice, the postmaster one. The
list that told the postmaster is named in a stamp file
``state_dir/site-incidents/SCOPE`` (SCOPE ``all`` or the domain); a later list
skips the postmaster while that list's incident of the same scope is open.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
from dataclasses import dataclass

from .. import addresses, clock, messages
from ..queue.files import fsync_dir, write_synced
from ..bounce.reports import postmaster_address
from ..config.schema import DAY
from ..store import BounceEvent, open_store
from ..log import events

log = events("listgate.app.site_incidents")

ALL = "*"
OPENED, CLEARED = "site_incident", "site_incident_cleared"
HORIZON = 7 * DAY

# Refusals at hand-over that name our own MTA's tables or policy, whatever the status
# (Postfix's smtpd texts: "User unknown in local recipient table", "Relay access
# denied", "... in virtual mailbox table", "Access denied" of a check_*_access map).
_OUR_OWN = re.compile(r"local recipient table|relay recipient table|virtual (mailbox|alias) table|"
                      r"relay access denied|access denied|mail loops back|"
                      r"insufficient system storage|temporary lookup failure|server configuration",
                      re.IGNORECASE)
_ADDRESS = re.compile(r"<[^<>\s]*>|[^\s<>@]+@[^\s<>;:,()]+")
_HOST_SAID = re.compile(r"^.*?\bsaid:\s*", re.IGNORECASE)
_ENGINE_PREFIX = re.compile(r"^(score [0-9.]+|weight of class \w+ is 0):\s*")


def names_our_mta(text: str) -> bool:
    """Whether a reply text names our own MTA's tables or policy (Postfix smtpd wording)."""
    return bool(_OUR_OWN.search(text or ""))


def handover_site_reason(code: int, text: str, status: str | None) -> str | None:
    """Why a refusal by our re-injection listener is the site's, or None if it is about one
    recipient's mailbox or domain (e.g. a recipient verification that reached the remote MX).

    At hand-over our own MTA answers: only enhanced codes X.1.x (address) and X.2.x (mailbox),
    RFC 3463 section 3, without wording that names our own tables, can be the member's.
    """
    if _OUR_OWN.search(text or ""):
        return f"our MTA refused: {code} {text}".strip()
    if address_refusal(status):
        return None
    return f"our MTA refused ({status or 'no enhanced status'}): {code} {text}".strip()


def address_refusal(status: str | None) -> bool:
    """Whether an enhanced status is about an address or mailbox (X.1.x, X.2.x; RFC 3463 section 3)."""
    return (status or "").split(".")[1:2] in (["1"], ["2"])


class HandoverRefusals:
    """One delivery run's refusals at hand-over that name our own tables: the member's, or the site's?

    A refusal that names our own tables (:func:`names_our_mta`) with an address status
    (X.1.x, X.2.x: "User unknown in local recipient table") can be one bad address
    (a local member who does not exist) or our listener refusing everyone. The rule
    (DESIGN.md, "Bounce life cycle" 7): it is the *site's* when at least
    :data:`CORROBORATE` distinct recipients of the run were refused with the same
    normalized text (:func:`normalized_text`) and no recipient was accepted in
    between; it is the *member's* (scored like any 5xx) as soon as another recipient
    of the run was accepted, or when the run ends without a second such refusal and
    the listener still takes a recipient it must take (the postmaster, RFC 5321
    section 4.5.1: :meth:`Deliverer._listener_takes_postmaster`). Refusals with
    another status (5.7.1 "Relay access denied", 5.3.0) are the site's at once.
    """

    CORROBORATE = 2

    def __init__(self):
        self.accepted = False
        self._open: dict[str, list] = {}    # normalized text -> [(rcpt, item)], since the last accept

    def accept(self) -> list:
        """A recipient was accepted: the items waiting for a verdict are the members' (returned)."""
        self.accepted = True
        return self.settle()

    def refuse(self, rcpt: str, text: str, item) -> list | None:
        """A suspect refusal of ``rcpt`` (``item``: the caller's record). Returns every item of that
        text when it is now the site's (corroborated), else None (it waits for a verdict)."""
        waiting = self._open.setdefault(normalized_text(text), [])
        waiting.append((rcpt.lower(), item))
        if len({r for r, _ in waiting}) >= self.CORROBORATE:
            return [i for _, i in self._open.pop(normalized_text(text))]
        return None

    def settle(self) -> list:
        """Every item still waiting for a verdict (and forget them)."""
        items = [i for waiting in self._open.values() for _, i in waiting]
        self._open.clear()
        return items


def normalized_text(diagnostic: str | None) -> str:
    """A failure's text without addresses, the reporting host or the engine's prefixes:
    what is common to one cause across members and domains."""
    text = _ENGINE_PREFIX.sub("", diagnostic or "")
    text = _HOST_SAID.sub("", text)
    return " ".join(_ADDRESS.sub("<>", text).lower().split())


def scope_of(address: str) -> str:
    parts = addresses.split_address(address or "")
    return parts[1].lower() if parts else ""


@dataclass
class Incident:
    scope: str
    opened_at: float          # the event that opened it (or the oldest refresh within HORIZON)
    last_failure_at: float    # its newest event (a failure, or a trial delivery)
    reason: str
    retry: float
    trial: bool = False       # its newest event is a trial delivery (no failure seen since)
    from_bounces: bool = False  # seen from bounces: a 2xx at hand-over is only a trial
    named: frozenset = frozenset()  # addresses its events' evidence names (lower case)

    @property
    def resume_at(self) -> float:
        """When one delivery is let through again (POSIX seconds)."""
        return self.last_failure_at + self.retry

    @property
    def paused(self) -> bool:
        return clock.now() < self.resume_at


_FROM_BOUNCES = "from bounces"
_TRIAL = "trial"


def _scope_reason(detail: str) -> tuple[str, str]:
    m = re.match(r"scope (\S+): ?(.*)", detail or "", re.DOTALL)
    return (m.group(1), m.group(2)) if m else ("", detail or "")


def _what(reason: str) -> str:
    return reason.split(":", 1)[0]


def open_incidents(store, lc) -> dict[str, Incident]:
    """The list's open incidents by scope (read from its events)."""
    now = clock.now()
    found: dict[str, Incident] = {}
    closed: set[str] = set()
    for event in store.events(since=now - HORIZON, actions=(OPENED, CLEARED)):   # newest first
        scope, reason = _scope_reason(event.detail)
        if not scope or scope in closed:
            continue
        what = _what(reason)
        if event.action == CLEARED:
            closed.add(scope)
            continue
        incident = found.get(scope)
        if incident is None:
            incident = found[scope] = Incident(scope, event.at, event.at, reason, lc.bounce_site_incident.retry,
                                               trial=what == _TRIAL)
        incident.opened_at = event.at
        if what != _TRIAL:
            incident.reason = reason          # the oldest failure's words
            incident.named = incident.named | {a.strip("<>").lower() for a in _ADDRESS.findall(reason) if "@" in a}
        incident.from_bounces = incident.from_bounces or _FROM_BOUNCES in what
    return found


def trial_order(incidents: dict[str, Incident], rcpts: list[str]) -> list[int]:
    """Indices of ``rcpts`` in delivery order: recipients named in an open incident's evidence
    last, so the one delivery let through after a pause (the trial) is not the address whose
    refusal opened or refreshed the incident: one bad address cannot keep it open forever."""
    named = set().union(*(i.named for i in incidents.values())) if incidents else set()
    return sorted(range(len(rcpts)), key=lambda i: (rcpts[i] or "").lower() in named)


def covering(store, lc, address: str) -> Incident | None:
    """The open incident that covers ``address`` (all, or its domain), or None."""
    found = open_incidents(store, lc)
    return found.get(ALL) or found.get(scope_of(address))


def open_incident(site, lc, store, scope: str, reason: str, evidence: list[str], sample: bytes | None, *,
                  send=None, tell_owners: bool = True, from_bounces: bool = False) -> bool:
    """Open (or refresh) the incident ``scope`` of list ``lc``; True if it was newly opened.

    ``from_bounces``: seen from bounces, not refused at hand-over (it then clears only
    after a trial delivery drew no failure, module docstring). Newly opened: the postmaster
    (unless another list told them of this scope, module docstring) and the owners (unless
    ``tell_owners`` is False: the domain rule has told them) get one notice with
    ``reason``, ``evidence`` lines and ``sample`` attached. ``send(msg, deliveries, kind)``
    queues it with the caller's transaction (the bounce engine's); without it, it is
    queued here, in a transaction of its own. Raises StoreUnavailable / QueueError.
    """
    with store.transaction():
        new = scope not in open_incidents(store, lc)
        what = ("opened" if new else "still failing") + (f" {_FROM_BOUNCES}" if from_bounces else "")
        store.add_event(BounceEvent(at=clock.now(), address=None, bounce_class="site", attribution="site",
                                    action=OPENED, detail=f"scope {scope}: {what}: {reason}"[:500]))
        if new:
            _notify(site, lc, scope, reason, evidence, sample, send, tell_owners)
            log.warning("site_incident_opened", list=messages.list_key(lc), scope=scope, reason=reason)
    return new


def clear(site, lc, scope: str, why: str) -> bool:
    """A 2xx at hand-over covered by incident ``scope``: True if this call cleared it.

    An incident seen from bounces is not cleared by the first such 2xx: that delivery is
    recorded as a trial (the pause starts over); the next one after the pause, with no
    failure since the trial, clears it (module docstring).
    """
    store = open_store(site, messages.list_key(lc))
    with store.transaction():
        incident = open_incidents(store, lc).get(scope)
        if incident is None:
            return False
        if incident.from_bounces and not (incident.trial and not incident.paused):
            store.add_event(BounceEvent(at=clock.now(), address=None, bounce_class="site", attribution="site",
                                        action=OPENED, detail=f"scope {scope}: {_TRIAL}: {why}"[:500]))
            log.info("site_incident_trial", list=messages.list_key(lc), scope=scope, why=why)
            return False
        store.add_event(BounceEvent(at=clock.now(), address=None, bounce_class="site", attribution="site",
                                    action=CLEARED, detail=f"scope {scope}: {why}"[:500]))
    log.warning("site_incident_cleared", list=messages.list_key(lc), scope=scope, why=why)
    return True


def clear_by_hand(site, lc, scope: str | None = None, who: str = "an admin") -> list[str]:
    """End the list's open incidents (``scope``: only that one) now; the scopes cleared.

    Records ``site_incident_cleared`` as a 2xx at hand-over would; the paused qfiles
    resume at their ``retry_at`` (``listgate queue flush`` makes them due now).
    Raises StoreUnavailable."""
    store = open_store(site, messages.list_key(lc))
    cleared = []
    with store.transaction():
        for found in open_incidents(store, lc):
            if scope is None or found == scope:
                store.add_event(BounceEvent(at=clock.now(), address=None, bounce_class="site", attribution="site",
                                            action=CLEARED, detail=f"scope {found}: cleared by {who}"[:500]))
                cleared.append(found)
    for found in cleared:
        log.warning("site_incident_cleared", list=messages.list_key(lc), scope=found, why=f"cleared by {who}")
    return cleared


def held_for_trial(incidents: dict[str, "Incident"], rcpt: str, trials: set[str]) -> bool:
    """Whether delivery to ``rcpt`` waits: an incident covering it is paused, or one seen from
    bounces already let its one trial delivery through (``trials``: their scopes, in this
    qfile; the first recipient covered is added as the trial)."""
    for scope in (ALL, scope_of(rcpt)):
        incident = incidents.get(scope)
        if incident is None:
            continue
        if incident.paused or scope in trials:
            return True
        if incident.from_bounces and not incident.trial:
            trials.add(scope)     # (after a trial that drew no failure, this 2xx clears it: no need)
    return False


# -- the postmaster is told once per site ----------------------------------------

def _stamp_path(site, scope: str) -> str:
    name = "all" if scope == ALL else scope
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]*", name):
        name = "other"
    return os.path.join(site.state_dir, "site-incidents", name)


def _told_elsewhere(site, lc, scope: str) -> bool:
    """True if another list told the postmaster of ``scope`` and its incident is still open;
    else this list becomes the one that told (stamp written durably). Never raises: a
    stamp that cannot be read or written means the postmaster is told."""
    path = _stamp_path(site, scope)
    here = messages.list_key(lc)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(os.path.join(os.path.dirname(path), ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)          # lists opening at once: one tells
            try:
                with open(path, encoding="utf-8") as fh:
                    stamp = json.load(fh)
                teller, told_at = str(stamp["list"]), float(stamp["at"])
            except (OSError, ValueError, KeyError, TypeError):
                teller, told_at = "", 0.0
            other = site.lists.get(teller) if teller and teller != here else None
            # Told moments ago (the teller's transaction may not have committed yet: lists
            # are delivered in parallel), or the teller's incident is still open.
            if other is not None and (clock.now() - told_at < lc.bounce_site_incident.retry
                                      or scope in open_incidents(open_store(site, teller), other)):
                return True
            tmp = f"{path}.{os.getpid()}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
            try:
                write_synced(fd, json.dumps({"list": here, "at": clock.now()}).encode())
            finally:
                os.close(fd)
            os.replace(tmp, path)
            fsync_dir(os.path.dirname(path))
    except Exception as exc:  # OSError, StoreUnavailable: better a second notice than none
        log.warning("postmaster_stamp_failed", "cannot record when the postmaster was told", path=path, error=exc)
    return False


def _notify(site, lc, scope: str, reason: str, evidence: list[str], sample: bytes | None, send,
            tell_owners: bool) -> None:
    from . import notices, texts  # notices imports nothing from here; kept local to avoid a cycle at import
    rcpts = ([] if _told_elsewhere(site, lc, scope) else [postmaster_address(site)]) \
        + (notices.owner_recipients(lc) if tell_owners else [])
    if not rcpts:
        return
    what = "every recipient" if scope == ALL else f"recipients at {scope}"
    text = texts.render("site_incident", lc, reason=reason, paused=what, retry=f"{lc.bounce_site_incident.retry:g}",
                        evidence="\n".join(f"    {line}" for line in evidence))
    msg = messages.make_notice(sender=notices.address(lc, "owner"), to=rcpts, subject=text.subject,
                               body=text.body, domain=lc.domain, samples=[sample] if sample else ())
    deliveries = [{"rcpt": r, "sender": ""} for r in dict.fromkeys(rcpts)]
    if send is not None:
        send(msg, deliveries, "postmaster_notice")
    else:
        messages.queue_virgin(site, lc, msg, deliveries, kind="postmaster_notice")
