"""Incidents: failures that are not the members' own, so they are not scored.

Two kinds. A *domain incident* (one remote domain failing for its members)
and a *site incident* (our own MTA, or one cause across many domains); both
pause fan-out to what they cover (:mod:`listgate.app.site_incidents` keeps
that state; this module holds the rules that recognise them).

A domain incident (DESIGN.md, "Bounce life cycle"): when at least
``bounce_domain_incident.members`` distinct members at one domain fail with one status within
``bounce_domain_incident.window`` (counting the current bounce), the bounce
is recorded as ``incident`` and not scored, and so is every later one at
that domain with that status while the condition holds; the owners are told
once (``store.remember``, for max(window, 1 day)).

Bounces scored *before* an incident was recognised (the first members of the
domain, or of the share, to fail) are taken back when it opens: their
``scored`` / ``probe_sent`` events of the same status (and text, for the share
rule) within the window are struck and each score is recomputed from the
remaining events, as ``listgate bounces strike`` does (a struck probe is
withdrawn). So an incident scores nobody, from its first failure on.

Called by :class:`listgate.app.bounces.BounceEngine` inside its transaction,
with its per-call context ``run`` (see :mod:`listgate.app.probes`).
"""
from __future__ import annotations


from .. import addresses
from ..bounce.classify import Failure
from ..config.schema import DAY
from ..store import Member, UnknownToken
from . import notices, site_incidents
from ..log import events

log = events("listgate.app.incidents")

# Events that raised a score (taken back when an incident explains them).
_SCORED = ("scored", "probe_sent")
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
        log.warning("domain_incident", list=run.key, domain=domain, status=failure.status, members=len(seen))
    # Pause fan-out to the domain until a delivery there succeeds (the owners were told above).
    site_incidents.open_incident(run.site, run.lc, run.store, domain,
                                 f"{len(seen)} members at {domain} failing with {failure.status}",
                                 [f"{a}: {failure.status} {failure.diagnostic}" for a in sorted(seen)][:20], msg,
                                 send=run.send, tell_owners=False, from_bounces=True)
    _unscore(run, [e for e in run.store.events(since=run.now - conf.window, actions=_SCORED)
                   if e.status == failure.status and e.address and e.address.lower().endswith(suffix)])
    return True


def site_incident(run, member: Member, failure: Failure, msg: bytes) -> bool:
    """True if ``failure`` is covered by an open site or domain incident, or opens one by
    :func:`share_incident` (then it is recorded, not scored)."""
    incident = site_incidents.covering(run.store, run.lc, member.key)
    if incident is None:
        return share_incident(run, member, failure, msg)
    if incident.trial:   # the delivery let through as a trial failed: the pause starts over
        site_incidents.open_incident(run.site, run.lc, run.store, incident.scope,
                                     f"{member.key}: {failure.status} {failure.diagnostic}", [], msg,
                                     send=run.send, from_bounces=True)
    return True


def share_incident(run, member: Member, failure: Failure, msg: bytes) -> bool:
    """Rule (b) of a site incident: failures with one status and one text (addresses and the
    reporting host taken out) from at least ``bounce_site_incident.share`` of the enabled
    members across at least ``.domains`` domains within ``.window`` (one post's failures
    come within minutes, so this is the post rule and the day rule at once). True if
    ``failure`` is part of one; the incident (scope all) is opened or refreshed."""
    conf = run.lc.bounce_site_incident
    text = site_incidents.normalized_text(failure.diagnostic)
    if not failure.status:
        return False
    seen = {member.key}
    alike = [e for e in run.store.events(since=run.now - conf.window, actions=_INCIDENT_ACTIONS)
             if e.status == failure.status and e.address and site_incidents.normalized_text(e.detail) == text]
    seen.update(e.address for e in alike)
    domains = {domain_of(a) for a in seen}
    enabled = len(run.store.members("enabled"))
    if len(domains) < conf.domains or len(seen) < max(2, conf.share * enabled):
        return False
    site_incidents.open_incident(
        run.site, run.lc, run.store, site_incidents.ALL,
        f"{len(seen)} of {enabled} members across {len(domains)} domains refused with one text ({failure.status})",
        [f"{a}: {failure.status} {failure.diagnostic}" for a in sorted(seen)][:20], msg, send=run.send,
        from_bounces=True)
    _unscore(run, [e for e in alike if e.action in _SCORED])
    return True


def _unscore(run, events) -> None:
    """Strike ``events`` (scored before the incident was seen) and recompute their members'
    scores from the remaining events; a struck ``probe_sent`` withdraws that member's probe."""
    from .bounce_admin import recompute   # bounce_admin reads incidents through site_incidents
    for event in events:
        if event.id is None or event.action not in _SCORED:
            continue
        run.store.strike_event(event.id)
        member = run.store.get_member(event.address)
        if member is None:
            continue
        if event.action == "probe_sent":
            for rec in run.store.pending("probe"):
                if rec.payload.get("member") == member.key:
                    try:
                        run.store.confirm_pending(rec.token, "probe")
                    except UnknownToken:
                        pass
        member.bounce_score, member.last_bounce_day, member.last_bounce_at = recompute(
            run.lc, run.store.events(member.key))
        run.store.save_member(member)
        log.info("incident_score_taken_back", list=run.key, member=member.key, bounce_event=event.id)
