"""Members whose domain is gone: a hard bounce checked against the DNS, and a probe at once.

The milter and the LMTP server handle bounces at end of message and never
wait on the DNS (:mod:`listgate.dns`), so the check is made here, in the
runner's periodic tasks (:mod:`listgate.runner.tasks`), once per list:

* **Who**: members, ``enabled``, with a ``hard`` bounce event that counted
  (``scored`` or ``same_day``) in the last day, no outstanding probe, not
  covered by an incident (:mod:`listgate.app.site_incidents`: the probe
  would say nothing while it is open), on a list with ``bounce_processing``
  and a site with ``dns.check_domains``.
* **Question**: :meth:`listgate.dns.Resolver.mail_domain` on the member's
  domain. ``null_mx`` (RFC 7505 section 3) or ``nxdomain``: the event
  ``dead_domain`` is recorded with the DNS answer, and the member is probed
  now (:func:`listgate.app.probes.send_probe`: the score starts over, as at
  the threshold) instead of after days of bounces; the probe's bounce
  disables as usual. Any other answer changes nothing.
* **How often**: each (member, UTC day) is asked at most once
  (``store.remember``). An ``unknown`` answer (timeout, SERVFAIL) is not an
  answer: the claim is given back (remembered for 0 seconds) and the member
  is asked again at the next run.
"""
from __future__ import annotations

import secrets

from .. import clock, messages
from ..bounce.classify import Failure
from ..config.schema import DAY
from ..log import events
from ..store import open_store
from . import attribution, probes, site_incidents
from .bounce_run import Run
from .bounces import BounceEngine

log = events("listgate.app.dead_domains")

DEAD = ("null_mx", "nxdomain")
# Hard bounce events that counted for the member (attributed, not an incident).
_COUNTED = ("scored", "same_day")
_REMEMBER = "dead_domain_check"


def _candidates(store, since: float) -> dict[str, object]:
    """Member key -> their newest counted hard bounce event since ``since``."""
    found: dict[str, object] = {}
    for event in store.events(since=since, actions=_COUNTED):     # newest first
        if event.bounce_class == "hard" and event.address and event.address not in found:
            found[event.address] = event
    return found


def run(site, lc, engine: BounceEngine | None = None) -> list[str]:
    """Check the domains of ``lc``'s members with a recent hard bounce; returns one line per probe sent.

    Raises :class:`~listgate.store.StoreUnavailable` or
    :class:`~listgate.queue.QueueError` as the bounce engine does (the
    caller skips the list; nothing is committed for the member at hand).
    """
    if not site.conf.dns.check_domains or not lc.bounce_processing:
        return []
    engine = engine or BounceEngine(site)
    store = open_store(site, messages.list_key(lc))
    now = clock.now()
    day = clock.day(now)
    claim = secrets.token_hex(8)        # this run's claims: only this run may give them back
    done: list[str] = []
    for key, event in sorted(_candidates(store, now - DAY).items()):
        member = store.get_member(key)
        if member is None or member.delivery_status != "enabled":
            continue
        domain = member.address.rpartition("@")[2].lower()
        if not domain or domain.startswith("["):       # an address literal has no DNS to ask
            continue
        if any(r.payload.get("member") == key for r in store.pending("probe")):
            continue
        if site_incidents.covering(store, lc, key) is not None:
            continue
        if not store.remember(_REMEMBER, f"{key} {day}", DAY, owner=claim):
            continue                                    # asked today already
        answer = site.resolver.mail_domain(domain)
        if answer.status == "unknown":
            store.remember(_REMEMBER, f"{key} {day}", 0, owner=claim)   # give the claim back
            log.info("domain_check_postponed", list=messages.list_key(lc), member=key, reason=answer.reason)
            continue
        if answer.status not in DEAD:
            continue
        if _probe(engine, lc, key, event, answer):
            done.append(f"{key}: {answer.reason}; probe sent")
    return done


def _probe(engine: BounceEngine, lc, key: str, event, answer) -> bool:
    """Record ``dead_domain`` and probe ``key`` in one transaction; False if the member changed meanwhile."""
    run = Run(engine, lc)
    failure = Failure(address=key, bounce_class="hard", status=event.status,
                      diagnostic=f"{event.detail}; DNS: {answer.reason}", attribution="dns",
                      reason=answer.reason)
    with run.store.transaction():
        # Re-read under the write lock: a bounce or a person may have acted since.
        member = run.store.get_member(key)
        if member is None or member.delivery_status != "enabled" or probes.outstanding_probe(run, key):
            return False
        probes.send_probe(run, member, attribution.summary(failure, "dns"))
        run.store.save_member(member)
        run.record(key, "dead_domain", failure, attribution="dns",
                   detail=f"{answer.reason}; probe sent (last hard bounce: {event.status or '-'} {event.detail})")
        run.flush()
    return True
