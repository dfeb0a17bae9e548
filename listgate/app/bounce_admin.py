"""What an owner does about bounce info: look, reset, strike a wrongly scored event.

Used by ``listgate bounces list|reset|strike`` (:mod:`listgate.cli.bounces`).
Each change commits in one store transaction and is recorded as a bounce
event (``bounce_reset``, ``struck``), so the history says who changed what.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from .. import clock, messages
from ..store import BounceEvent, Member, NotAMember, UnknownToken, open_store
from . import probes, site_incidents

# Events after which the score starts from zero (the probe reset it, a person or a
# confirmation cleared it, the member was disabled or came back).
RESET_ACTIONS = ("probe_sent", "dead_domain", "disabled", "re_enabled", "bounce_cleared", "bounce_reset", "removed")
SCORED_ACTIONS = ("scored", "probe_sent")


@dataclass
class Row:
    """One line of ``listgate bounces list``."""

    address: str
    score: float
    state: str
    last_bounce: float | None
    next_action: str


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def next_action(lc, store, member: Member) -> str:
    """What the bounce life cycle will do next for ``member``, in words."""
    if not lc.bounce_processing:
        return "none: bounce processing is off"
    if site_incidents.covering(store, lc, member.key) is not None:
        return "none while a site incident covers this address"
    if member.delivery_status == "by_bounce" and member.notices_left is not None:
        due = (member.last_notice_at or 0) + lc.bounce_you_are_disabled_warnings_interval
        what = "disabled notice" if member.notices_left > 0 else "removal"
        return f"{what} at {_utc(due)}"
    if member.delivery_status != "enabled":
        return f"none: delivery {member.delivery_status}"
    if any(r.payload.get("member") == member.key for r in store.pending("probe")):
        return "waiting for the probe (a bounce of it disables)"
    left = lc.bounce_score_threshold - member.bounce_score
    return f"probe after {left:g} more" if member.bounce_score else "none"


def rows(site, lc) -> list[Row]:
    """Every member with a score, or not enabled."""
    store = open_store(site, messages.list_key(lc))
    return [Row(m.address, m.bounce_score, m.delivery_status, m.last_bounce_at, next_action(lc, store, m))
            for m in store.members() if m.bounce_score or m.delivery_status != "enabled"]


def recompute(lc, events: list[BounceEvent]) -> tuple[float, str | None, float | None]:
    """(score, last_bounce_day, last_bounce_at) from a member's events (newest first, as the store gives
    them): the weights of ``scored`` events since the last reset, stale gaps restarting the score."""
    score, last_at = 0.0, None
    last_day = last_scored = None
    for event in reversed(events):
        if event.action in RESET_ACTIONS:
            score, last_at = 0.0, None
        if event.action in SCORED_ACTIONS:
            last_scored = event.at
            last_day = clock.day(event.at)
        if event.action != "scored":
            continue
        if last_at is not None and event.at - last_at > lc.bounce_info_stale_after:
            score = 0.0
        score += float(lc.bounce_weights.get(event.bounce_class, 0.0) or 0.0)
        last_at = event.at
    return score, last_day, last_scored


def strike(site, lc, event_id: int) -> tuple[BounceEvent, Member | None]:
    """Strike event ``event_id`` (UnknownEvent if there is none) and recompute its member's score;
    striking a ``probe_sent`` or ``dead_domain`` also withdraws that member's pending probe."""
    store = open_store(site, messages.list_key(lc))
    with store.transaction():
        was = store.strike_event(event_id)
        member = store.get_member(was.address) if was.address else None
        if member is None:
            return was, None
        if was.action in ("probe_sent", "dead_domain"):
            for rec in store.pending("probe"):
                if rec.payload.get("member") == member.key:
                    try:
                        store.confirm_pending(rec.token, "probe")
                    except UnknownToken:
                        pass
        member.bounce_score, member.last_bounce_day, member.last_bounce_at = recompute(lc, store.events(member.key))
        store.save_member(member)
    return was, member


def reset(site, lc, address: str | None, *, enable: bool = False) -> list[Member]:
    """Clear the bounce score of ``address`` (NotAMember if unknown), or of every member when None;
    with ``enable``, members disabled by bounce are enabled and their notices and token go."""
    store = open_store(site, messages.list_key(lc))
    changed = []
    with store.transaction():
        if address is not None:
            member = store.get_member(address)
            if member is None:
                raise NotAMember(f"{address} is not a member of {messages.list_key(lc)}")
            targets = [member]
        else:
            targets = store.members()
        for member in targets:
            by_bounce = member.delivery_status == "by_bounce"
            if not member.bounce_score and not (enable and by_bounce) and address is None:
                continue
            was = f"score {member.bounce_score:g}, {member.delivery_status}"
            member.bounce_score, member.last_bounce_day, member.last_bounce_at = 0.0, None, None
            if enable and by_bounce:
                if member.re_enable_token:
                    try:
                        store.confirm_pending(member.re_enable_token, "re_enable")
                    except UnknownToken:
                        pass
                probes.clear_bounce_info(member)
                member.delivery_status, member.status_changed_at = "enabled", clock.now()
            store.save_member(member)
            store.add_event(BounceEvent(at=clock.now(), address=member.key, bounce_class="none", attribution="admin",
                                        action="bounce_reset", detail=f"reset by an admin (was {was})"))
            changed.append(member)
    return changed
