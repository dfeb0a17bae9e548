"""Holds and moderation: a held post waits in a ``held_message`` pending record.

A post the posting rule holds (:func:`listgate.app.posting.decide`: a member's
post to a moderated list, a post over ``max_message_size``,
``non_member_action: hold``) is kept whole (base64) in the record's payload;
the moderators get a notice with the post attached whose ``Reply-To`` is
``L-confirm+TOKEN@D``. A moderator's reply (:mod:`listgate.app.commands`),
``listgate held approve|reject|discard`` or ``listgate pending confirm`` acts
on it through :func:`moderate`; a hold that expires is reported to the
moderators (:func:`expired`).
"""
from __future__ import annotations

import base64

from .. import metrics
from ..log import events
from ..store import open_store
from . import mail, posting
from .notices import address, confirm_address, reply, tell_owners

log = events("listgate.app.moderation")


def hold(site, lc, store, msg: bytes, m, meta: dict, reason: str) -> str:
    """Make a ``held_message`` pending record and notify the moderators; returns the token."""
    writer = mail.author(m)
    payload = {
        "message": base64.b64encode(msg).decode("ascii"),
        "author": writer[1] if writer else None,
        "envelope_sender": meta.get("envelope_sender"),
        "subject": mail.header_text(m, "Subject"),
        "message_id": mail.header_text(m, "Message-ID") or None,
        "reason": reason,
        "reply_ok": mail.auto_generated(m, meta.get("envelope_sender")) is None,
        "arrival": meta.get("arrival"),
    }
    rec = store.add_pending("held_message", payload, site.conf.pending.held_message)
    metrics.inc("holds")
    confirm = confirm_address(lc, rec.token)
    tell_owners(site, lc, "held", kind="held_notice", samples=[msg], moderators=True, reply_to=confirm,
                author=payload["author"] or "(unknown)", subject=payload["subject"] or "(no subject)",
                reason=reason, confirm=confirm, token=rec.token)
    log.info("post_held", list=address(lc), token=rec.token, reason=reason)
    return rec.token


def reject_notice(site, lc, to: str | None, subject: str, reason: str, reply_ok: bool) -> None:
    """Tell the author why their post was refused, unless answering could loop (RFC 3834)."""
    if not to or not reply_ok:
        return
    reply(site, lc, to, "rejected", kind="reject", subject=subject or "(no subject)", reason=reason)


def moderate(site, lc, token: str, action: str, reason: str = "") -> str:
    """Act on a held post: ``approve`` (fan out now), ``reject`` (notice to the author) or ``discard``.

    Returns a line for the moderator. Raises :class:`listgate.store.UnknownToken`
    for an unknown or expired token, ValueError for an unknown action.
    """
    if action not in ("approve", "reject", "discard"):
        raise ValueError(f"unknown moderation action {action!r}")
    store = open_store(site, address(lc))
    # The record goes only if the follow-up mail was queued: a failure leaves the post held.
    with store.transaction():
        rec = store.confirm_pending(token, "held_message")
        p = rec.payload
        msg = base64.b64decode(p.get("message", ""))
        if action == "approve":
            qid = posting.queue_post(site, lc, msg, {"envelope_sender": p.get("envelope_sender"),
                                                     "arrival": p.get("arrival")})
            result = f"approved: {p.get('subject') or '(no subject)'} (qfile {qid})"
        elif action == "reject":
            reject_notice(site, lc, p.get("author") or p.get("envelope_sender"), p.get("subject", ""),
                          reason or "rejected by a moderator", bool(p.get("reply_ok")))
            result = f"rejected: {p.get('subject') or '(no subject)'}"
        else:
            result = f"discarded: {p.get('subject') or '(no subject)'}"
    log.info("held_post_moderated", list=address(lc), token=token, action=action)
    return result


def expired(site, lc, rec) -> str:
    """Tell the moderators that held post ``rec`` (evicted, expired) was discarded; returns the qfile id."""
    p = rec.payload
    return tell_owners(site, lc, "held_expired", kind="held_expired", moderators=True,
                       author=p.get("author") or "(unknown)", subject=p.get("subject") or "(no subject)",
                       reason=p.get("reason") or "")
