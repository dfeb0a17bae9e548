"""Confirmations: the one place a pending record takes effect.

:func:`complete` carries out a confirmed ``subscription``,
``unsubscription``, ``change_of_address``, ``re_enable`` (through the bounce
life cycle, :meth:`listgate.app.bounces.BounceEngine.re_enable`) or
``held_message`` (:func:`listgate.app.moderation.moderate`). Its callers
authorise first: the ``L-confirm+TOKEN`` reply (:mod:`listgate.app.commands`)
and ``listgate pending confirm`` (an admin's act). Each change commits in one
store transaction together with the mail it sends (welcome, goodbye, owner
notice): a failure to queue the mail leaves the record pending.

Before a subscription or a change of address is offered, :func:`deliverable`
asks the DNS whether the address's domain takes mail at all.

A confirmed change of address or a resubscription proves the address works:
the member starts clean (:func:`start_clean`): bounce score, disabled-by-bounce
state, disabled notices and the old address's ``re_enable`` and ``probe``
records go, the member is enabled, and a bounce event (action
``bounce_cleared``) says why.

A confirmation that bounces cancels its pending record (:func:`cancel_for_bounce`):
nobody can answer it, so no reminder goes to a dead address. A *welcome* that
bounces has no pending record left: the subscription is complete. Decision: it
is that member's bounce like any other. The welcome goes out from the member's
own VERP address (as every mail to a member), so its bounce is attributed
exactly and scored once for the day, and it counts toward the probe; the member
is not removed on the spot. Removing on one bounce is what the bounce life cycle
exists to avoid (a full mailbox, a misread DSN, a site incident on our side), and
the subscriber just proved the address by answering the confirmation (or an
admin vouched for it); if the address is really dead, the probe disables it.
"""
from __future__ import annotations

from .. import clock, messages, verp
from ..store import BounceEvent, UnknownToken, open_store
from . import notices, probes, texts
from .moderation import moderate


def deliverable(site, address: str):
    """Whether mail can reach ``address``'s domain: a :class:`listgate.dns.MailDomain` (``dead`` for a
    null MX, RFC 7505; NXDOMAIN; no MX and no A/AAAA, RFC 5321 section 5.1; ``unknown`` without an
    answer). The one check before a subscription, for ``L-request`` and ``listgate members add``."""
    from ..dns import MailDomain
    domain = address.rpartition("@")[2].strip("[]")
    if not site.conf.dns.check_domains or not domain or address.rpartition("@")[2].startswith("["):
        return MailDomain(domain, "ok")        # not asked to check, or an address literal
    return site.resolver.mail_domain(domain)


def _cancel_bounce_records(store, keys: set[str]) -> list[str]:
    """Remove the pending ``re_enable`` and ``probe`` records of the member keys ``keys``; their types."""
    gone = []
    for rec in store.pending():
        if rec.type in ("re_enable", "probe") and rec.payload.get("member") in keys:
            try:
                store.confirm_pending(rec.token, rec.type)
                gone.append(rec.type)
            except UnknownToken:
                pass  # taken meanwhile
    return gone


def start_clean(store, member, why: str, old_keys=()) -> None:
    """Clear ``member``'s bounce life cycle (module docstring) inside the caller's transaction.

    ``old_keys``: member keys the member had before (a change of address),
    whose pending records go too. Records a ``bounce_cleared`` event whose
    detail says ``why`` and what was cleared; a member with nothing to clear
    gets no event.
    """
    was = (member.delivery_status, member.bounce_score, member.notices_left)
    gone = _cancel_bounce_records(store, {member.key, *old_keys})
    if member.re_enable_token:
        gone.append("re_enable token")
    if member.delivery_status == "enabled" and not member.bounce_score and not gone and member.notices_left is None:
        return
    if member.delivery_status == "by_bounce":
        member.delivery_status = "enabled"
        member.status_changed_at = clock.now()
    probes.clear_bounce_info(member)
    store.save_member(member)
    detail = (f"{why}: bounce state cleared (was {was[0]}, score {was[1]:g}"
              + (f", {was[2]} notices left" if was[2] is not None else "")
              + (f", cancelled {', '.join(sorted(set(gone)))}" if gone else "") + ")")
    store.add_event(BounceEvent(at=clock.now(), address=member.key, bounce_class="none",
                                attribution="confirm", action="bounce_cleared", detail=detail))


def welcome(site, lc, address: str) -> str:
    """Queue the welcome to new member ``address`` from their VERP address (module docstring); the
    qfile id. Sent for a confirmed subscription and for ``listgate members add --welcome``."""
    text = texts.render("welcome", lc, leave=notices.address(lc, "leave"))
    msg = messages.make_notice(sender=notices.address(lc, "request"), to=address, subject=text.subject,
                               body=text.body, domain=lc.domain)
    return messages.queue_virgin(site, lc, msg, [{"rcpt": address,
                                                  "sender": verp.member_bounce_address(site, lc, address)}],
                                 kind="welcome")


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
    token = rec.token
    if rec.type == "held_message":
        return moderate(site, lc, token, *moderation)
    if rec.type == "re_enable":
        from .bounces import BounceEngine  # the engine pulls in flufl.bounce: only load it when needed
        member = BounceEngine(site).re_enable(lc, token)
        notices.reply(site, lc, member.address, "re_enabled", kind="reply", address=member.address)
        return f"re-enabled {member.address}"
    if rec.type in ("subscription", "unsubscription"):
        joining = rec.type == "subscription"
        with store.transaction():
            store.confirm_pending(token, rec.type)
            address = rec.payload["address"]
            existing = store.get_member(address) if joining else None
            if existing is not None and existing.delivery_status == "by_bounce":
                # A member disabled by bounce who subscribes again: the confirmation
                # proved the address works.
                start_clean(store, existing, "resubscription confirmed")
            elif joining:
                store.add_member(address, rec.payload.get("display_name") or "")
                member = store.get_member(address)
                # Records left from an earlier membership of this address (a probe
                # still pending when it was removed) must not act on the new one.
                start_clean(store, member, "subscription confirmed")
                welcome(site, lc, address)
            else:
                leave(site, lc, store, address)
            if joining and lc.notify_owner_on_join:
                notices.tell_owners(site, lc, "owner_joined", kind="owner_notice", address=address)
        return f"{'subscribed' if joining else 'unsubscribed'} {address}"
    if rec.type == "change_of_address":
        with store.transaction():
            store.confirm_pending(token, "change_of_address")
            old, new = rec.payload["old"], rec.payload["new"]
            before = store.get_member(old)      # its key, however the request spelt it
            member = store.change_address(old, new)
            start_clean(store, member, f"change of address from {old} to {new} confirmed",
                        old_keys={before.key} if before is not None else set())
            for to in (old, new):
                notices.reply(site, lc, to, "address_changed", kind="reply", old=old, new=new)
        return f"moved {old} to {new}"
    raise ValueError(f"a {rec.type} record cannot be confirmed")


def leave(site, lc, store, address: str) -> None:
    """Remove member ``address`` inside the caller's transaction: the goodbye mail, and the
    owners' notice when ``notify_owner_on_leave``. The one unsubscription rule, for a confirmed
    ``unsubscription`` and a one-click unsubscribe. Raises NotAMember, StoreUnavailable,
    QueueError (the caller's transaction then rolls back)."""
    store.remove_member(address)
    goodbye(site, lc, address)
    if lc.notify_owner_on_leave:
        notices.tell_owners(site, lc, "owner_left", kind="owner_notice", address=address)


def goodbye(site, lc, address: str) -> str:
    """Queue the goodbye to former member ``address`` (from ``L-request@D``); the qfile id.
    Sent by :func:`leave` and ``listgate members remove --goodbye``."""
    return notices.reply(site, lc, address, "goodbye", kind="goodbye")


def unsubscribe_now(site, lc, address: str) -> bool:
    """One-click unsubscribe (RFC 8058; the signed token is the member's consent, no pending record):
    :func:`leave` in one transaction. Idempotent: False when ``address`` is not a member (any
    more), True when it was removed now. Raises StoreUnavailable, QueueError (nothing changed)."""
    store = open_store(site, notices.address(lc))
    with store.transaction():
        if store.get_member(address) is None:
            return False
        leave(site, lc, store, address)
    return True


# Pending records that wait on a confirmation mailed to an address not (yet) a member,
# and the payload key holding that address.
_CONFIRMED_AT = {"subscription": "address", "change_of_address": "new"}


def cancel_for_bounce(run, address: str) -> list[str]:
    """A bounce from ``address``, not a member: a confirmation sent there cannot be answered,
    so the pending ``subscription`` / ``change_of_address`` records waiting on it are
    cancelled (recorded as ``pending_cancelled``). Called by the bounce engine inside its
    transaction (``run``: see :mod:`listgate.app.probes`). Returns the cancelled types."""
    gone = []
    for rec in run.store.pending():
        key = _CONFIRMED_AT.get(rec.type)
        target = rec.payload.get(key) if key else None
        if not isinstance(target, str) or not run.store.same_address(target, address):
            continue
        try:
            run.store.confirm_pending(rec.token, rec.type)
        except UnknownToken:
            continue
        gone.append(rec.type)
        run.record(address, "pending_cancelled", None, bounce_class="none", attribution="confirm",
                   detail=f"the {rec.type} confirmation to {target} bounced: the request is cancelled")
    return gone
