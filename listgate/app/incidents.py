"""Incidents: failures that are not the members' own, so they are not scored.

A domain incident (DESIGN.md, "Bounce life cycle"): when at least
``bounce_domain_incident.members`` distinct members at one domain fail with one status within
``bounce_domain_incident.window`` (counting the current bounce), the bounce
is recorded as ``incident`` and not scored, and so is every later one at
that domain with that status while the condition holds; the owners are told
once (``store.remember``, for max(window, 1 day)). Decision: bounces scored
*before* the incident was recognised keep their score. Each was at most one
daily increment for fewer than ``members`` members, and undoing them would
need the weights as they were then; the probe still protects those members.

Called by :class:`listgate.app.bounces.BounceEngine` inside its transaction,
with its per-call context ``run`` (see :mod:`listgate.app.probes`).
"""
from __future__ import annotations

import logging

from .. import addresses
from ..bounce.classify import Failure
from ..config.schema import DAY
from ..store import Member
from . import notices

log = logging.getLogger("listgate.app.incidents")

# Events that describe a member's failure (what the domain-incident rule counts).
_INCIDENT_ACTIONS = ("scored", "same_day", "recorded", "residual", "probe_sent",
                     "probe_outstanding", "incident")


def domain_of(address: str) -> str:
    """The domain of ``address`` (lower case), '' if it has none."""
    parts = addresses.split_address(address)
    return parts[1] if parts else ""


def domain_incident(run, member: Member, failure: Failure, msg: bytes) -> bool:
    """True if ``failure`` of ``member`` is part of a domain incident (module docstring); tells the owners once."""
    conf = run.lc.bounce_domain_incident
    domain = domain_of(member.key)
    if not failure.status or not domain:
        return False
    seen = {member.key}
    suffix = "@" + domain
    for event in run.store.events(since=run.now - conf.window):
        if (event.status == failure.status and event.action in _INCIDENT_ACTIONS and event.address
                and event.address.lower().endswith(suffix)):
            seen.add(event.address)
    if len(seen) < conf.members:
        return False
    if run.store.remember("bounce_incident", f"{domain} {failure.status}", max(conf.window, DAY)):
        run.send(notices.owner_incident(run.lc, domain, failure.status, sorted(seen), conf.window, msg),
                 run.to_owners(), "owner_notice")
        log.warning("domain incident list=%s domain=%s status=%s members=%d",
                    run.key, domain, failure.status, len(seen))
    return True
