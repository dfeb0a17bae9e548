"""Confirmations: the one place a pending record takes effect.

:func:`complete` carries out a confirmed ``subscription``,
``unsubscription``, ``change_of_address``, ``re_enable`` (through the bounce
life cycle, :meth:`listgate.app.bounces.BounceEngine.re_enable`) or
``held_message`` (:func:`listgate.app.moderation.moderate`). Its callers
authorise first: the ``L-confirm+TOKEN`` reply (:mod:`listgate.app.commands`)
and ``listgate pending confirm`` (an admin's act). Each change commits in one
store transaction together with the mail it sends (welcome, goodbye, owner
notice): a failure to queue the mail leaves the record pending.
"""
from __future__ import annotations

from ..store import open_store
from . import notices, texts
from .moderation import moderate


def complete(site, lc, rec, *, moderation: tuple[str, str] = ("approve", "")) -> str:
    """Carry out pending record ``rec`` (already authorised by the caller); returns a summary.

    The one place a confirmation takes effect, for the ``L-confirm+TOKEN``
    reply and for ``listgate pending confirm``: ``subscription``,
    ``unsubscription``, ``change_of_address``, ``re_enable`` (through the
    bounce engine) and ``held_message`` (``moderation`` = (approve|reject|discard,
    reason)). Raises UnknownToken if the record was taken meanwhile,
    AlreadyMember/NotAMember, StoreUnavailable, or ValueError for a ``probe``
    record (probes are confirmed only by bouncing).
    """
    store = open_store(site, notices.address(lc))
    lname = notices.address(lc)
    token = rec.token
    if rec.type == "held_message":
        return moderate(site, lc, token, *moderation)
    if rec.type == "re_enable":
        from .bounces import BounceEngine  # the engine pulls in flufl.bounce: only load it when needed
        member = BounceEngine(site).re_enable(lc, token)
        notices.send(site, lc, member.address, f"Delivery of {lname} enabled",
                     texts.RE_ENABLED.format(list=lname, address=member.address), kind="reply")
        return f"re-enabled {member.address}"
    if rec.type in ("subscription", "unsubscription"):
        joining = rec.type == "subscription"
        with store.transaction():
            store.confirm_pending(token, rec.type)
            address = rec.payload["address"]
            if joining:
                store.add_member(address, rec.payload.get("display_name") or "")
                notices.send(site, lc, address, f"Welcome to {lname}",
                             texts.WELCOME.format(list=lname, leave=notices.address(lc, "leave")), kind="welcome")
            else:
                store.remove_member(address)
                notices.send(site, lc, address, f"You left {lname}", texts.GOODBYE.format(list=lname),
                             kind="goodbye")
            event = "joined" if joining else "left"
            if lc.notify_owner_on_join if joining else lc.notify_owner_on_leave:
                notices.to_owners(site, lc, f"{address} {event} {lname}",
                                  texts.OWNER_EVENT.format(address=address, event=event, list=lname))
        return f"{'subscribed' if joining else 'unsubscribed'} {address}"
    if rec.type == "change_of_address":
        with store.transaction():
            store.confirm_pending(token, "change_of_address")
            old, new = rec.payload["old"], rec.payload["new"]
            store.change_address(old, new)
            body = texts.ADDRESS_CHANGED.format(list=lname, old=old, new=new)
            for to in (old, new):
                notices.send(site, lc, to, f"Your subscription to {lname} moved", body, kind="reply")
        return f"moved {old} to {new}"
    raise ValueError(f"a {rec.type} record cannot be confirmed")
