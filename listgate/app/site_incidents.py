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
the incident (no second notice); a 2xx at hand-over clears it and the paused
qfiles resume. (An incident seen only from bounces also clears at the first
2xx after the pause: if the domain still fails, its bounces open it again.)

State lives in the list's bounce events (no new table): ``site_incident``
(opened, or still failing) and ``site_incident_cleared``, detail
``scope SCOPE: reason``. An incident whose last event is older than
:data:`HORIZON` is over (nothing was delivered to clear it, and nothing failed).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from .. import addresses, clock, messages
from ..bounce.reports import postmaster_address
from ..config.schema import DAY
from ..store import BounceEvent, open_store

log = logging.getLogger("listgate.app.site_incidents")

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
    subject = (status or "").split(".")[1:2]
    if subject in (["1"], ["2"]):
        return None
    return f"our MTA refused ({status or 'no enhanced status'}): {code} {text}".strip()


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
    last_failure_at: float
    reason: str
    retry: float

    @property
    def resume_at(self) -> float:
        """When one delivery is let through again (POSIX seconds)."""
        return self.last_failure_at + self.retry

    @property
    def paused(self) -> bool:
        return clock.now() < self.resume_at


def _scope_reason(detail: str) -> tuple[str, str]:
    m = re.match(r"scope (\S+): ?(.*)", detail or "", re.DOTALL)
    return (m.group(1), m.group(2)) if m else ("", detail or "")


def open_incidents(store, lc) -> dict[str, Incident]:
    """The list's open incidents by scope (read from its events)."""
    now = clock.now()
    found: dict[str, Incident] = {}
    closed: set[str] = set()
    for event in store.events(since=now - HORIZON, actions=(OPENED, CLEARED)):   # newest first
        scope, reason = _scope_reason(event.detail)
        if not scope or scope in closed:
            continue
        if event.action == CLEARED:
            closed.add(scope)
        elif scope in found:
            found[scope].opened_at = event.at
        else:
            found[scope] = Incident(scope, event.at, event.at, reason, lc.bounce_site_incident.retry)
    return found


def covering(store, lc, address: str) -> Incident | None:
    """The open incident that covers ``address`` (all, or its domain), or None."""
    found = open_incidents(store, lc)
    return found.get(ALL) or found.get(scope_of(address))


def open_incident(site, lc, store, scope: str, reason: str, evidence: list[str], sample: bytes | None, *,
                  send=None, tell_owners: bool = True) -> bool:
    """Open (or refresh) the incident ``scope`` of list ``lc``; True if it was newly opened.

    Newly opened: the postmaster (and the owners unless ``tell_owners`` is False: the
    domain rule has told them) get one notice with ``reason``, ``evidence`` lines and
    ``sample`` attached. ``send(msg, deliveries, kind)`` queues it with the caller's
    transaction (the bounce engine's); without it, it is queued here, in a
    transaction of its own. Raises StoreUnavailable / QueueError.
    """
    with store.transaction():
        new = scope not in open_incidents(store, lc)
        what = "opened" if new else "still failing"
        store.add_event(BounceEvent(at=clock.now(), address=None, bounce_class="site", attribution="site",
                                    action=OPENED, detail=f"scope {scope}: {what}: {reason}"[:500]))
        if new:
            _notify(site, lc, scope, reason, evidence, sample, send, tell_owners)
            log.warning("site incident opened list=%s scope=%s reason=%r", messages.list_key(lc), scope, reason)
    return new


def clear(site, lc, scope: str, why: str) -> bool:
    """Clear incident ``scope`` if it is still open; True if this call cleared it."""
    store = open_store(site, messages.list_key(lc))
    with store.transaction():
        if scope not in open_incidents(store, lc):
            return False
        store.add_event(BounceEvent(at=clock.now(), address=None, bounce_class="site", attribution="site",
                                    action=CLEARED, detail=f"scope {scope}: {why}"[:500]))
    log.warning("site incident cleared list=%s scope=%s why=%r", messages.list_key(lc), scope, why)
    return True


def _notify(site, lc, scope: str, reason: str, evidence: list[str], sample: bytes | None, send,
            tell_owners: bool) -> None:
    from . import notices  # notices imports nothing from here; kept local to avoid a cycle at import
    postmaster = postmaster_address(site)
    rcpts = [postmaster] + (notices.owner_recipients(lc) if tell_owners else [])
    what = "every recipient" if scope == ALL else f"recipients at {scope}"
    body = (f"listgate sees a site incident on {notices.address(lc)}: {reason}.\n\n"
            f"Failures it covers are recorded, not scored; nobody is probed or disabled for them.\n"
            f"Delivery to {what} is paused: the mail stays queued. Every "
            f"{lc.bounce_site_incident.retry:g} seconds one delivery is tried; the incident clears\n"
            f"itself when one succeeds, and the paused mail goes out then.\n\n"
            f"Evidence:\n" + "\n".join(f"    {line}" for line in evidence) + "\n\n"
            f"See `listgate bounces show {notices.address(lc)}`.\n")
    msg = messages.make_notice(sender=notices.address(lc, "owner"), to=rcpts,
                               subject=f"{lc.name}: site incident, delivery paused ({what})",
                               body=body, domain=lc.domain, samples=[sample] if sample else ())
    deliveries = [{"rcpt": r, "sender": ""} for r in dict.fromkeys(rcpts)]
    if send is not None:
        send(msg, deliveries, "postmaster_notice")
    else:
        messages.queue_virgin(site, lc, msg, deliveries, kind="postmaster_notice")
