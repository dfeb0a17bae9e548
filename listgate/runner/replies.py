"""Confirmations, command replies and owner/moderator notices, via :mod:`listgate.messages`.

Envelope senders: mail to a person who wrote to us (confirmations, replies)
goes out from ``L-bounces@D`` so a bounce of it reaches the bounce engine;
owner and moderator notices go out from the null reverse-path
(:func:`listgate.messages.owner_deliveries`) so a failing owner mailbox cannot
loop. Every message carries ``Auto-Submitted: auto-generated`` (RFC 3834).
"""
from __future__ import annotations

from .. import addresses, messages
from . import texts


def address(lc, role: str = "post", extension: str | None = None) -> str:
    return addresses.make(lc.name, lc.domain, role, extension)


def confirm_address(lc, token: str) -> str:
    """``L-confirm+TOKEN@D``."""
    return address(lc, "confirm", token)


def send(site, lc, to: str, subject: str, body: str, *, kind: str, reply_to: str | None = None,
         in_reply_to: str | None = None, samples=()) -> str:
    """One message from ``L-request@D`` to ``to``; returns the virgin qfile id.

    Raises ``QueueError`` when it cannot be queued durably.
    """
    headers = {"Reply-To": reply_to} if reply_to else None
    msg = messages.make_notice(sender=address(lc, "request"), to=to, subject=subject, body=body,
                               domain=lc.domain, headers=headers, in_reply_to=in_reply_to, samples=samples)
    return messages.queue_virgin(site, lc, msg, [{"rcpt": to, "sender": address(lc, "bounces")}], kind=kind)


def confirmation(site, lc, to: str, token: str, action: str, *, in_reply_to: str | None = None) -> str:
    """Ask ``to`` to confirm ``action`` (text like "subscribe x@y to demo@D") by replying."""
    body = texts.CONFIRM.format(action=action, confirm=confirm_address(lc, token), request=address(lc, "request"))
    return send(site, lc, to, f"confirm {token}", body, kind="confirmation",
                reply_to=confirm_address(lc, token), in_reply_to=in_reply_to)


def to_owners(site, lc, subject: str, body: str, *, samples=(), kind: str = "owner_notice",
              moderators: bool = False, reply_to: str | None = None) -> str:
    """A notice to the list's owners (``moderators=True``: to its moderators, or owners if none)."""
    rcpts = list(lc.moderators) if moderators and lc.moderators else list(lc.owners)
    headers = {"Reply-To": reply_to} if reply_to else None
    msg = messages.make_notice(sender=address(lc, "owner"), to=rcpts, subject=subject, body=body,
                               domain=lc.domain, samples=samples, headers=headers)
    return messages.queue_virgin(site, lc, msg, [{"rcpt": r, "sender": ""} for r in rcpts], kind=kind)
