"""Which bounces may score a member: VERP, our ENVID, or a post we really sent them.

Anyone can send a DSN to the plain bounce address ``L-bounces@D`` naming any
member (issue 20, defect 2). So a bounce acts on a member only when it
carries something an outsider cannot make:

* it reached the member's signed VERP address (``listgate.verp``; routing
  checked the MAC and the date at RCPT), or
* its ``Original-Envelope-Id`` (RFC 3464 section 2.2.1, the ``ENVID`` we gave
  in ``MAIL FROM``, RFC 3461 section 4.4) is one we signed for a probe
  (:func:`listgate.verp.envid_probe_token`) or for a post to this member
  (:func:`listgate.verp.envid_member`), or
* for a member who cannot get a VERP sender (local part over 64 octets once
  signed, non-ASCII, quoted: :func:`listgate.verp.member_bounce_address` gives
  them the plain sender) — its returned original is a post this list sent
  while they were a member: its ``Message-ID`` was recorded at fan-out
  (:func:`record_post`) and they were subscribed by then.

A plain-address DSN naming a member who gets VERP is recorded as
``unverified`` (the evidence stays in the event) and never scores. Lists with
``verp_mode: xverp`` send unsigned VERP by choice (their bounce addresses are
forgeable anyway) and keep attributing plain DSNs as before.

Posts are remembered as ``post_sent`` events (``address`` None, the post's
``Message-ID``, ``at`` the fan-out time) for ``verp.max_age``, the life of
the VERP addresses their bounces come back to.
"""
from __future__ import annotations

from dataclasses import dataclass
from email.message import Message

import re

from .. import addresses, clock, verp
from ..addresses import split_address
from ..bounce import message as m
from ..store import BounceEvent, Member
from . import notices

POST_SENT = "post_sent"        # the event action recording a post's fan-out
_MAX_SUMMARY = 600


@dataclass(frozen=True)
class Original:
    """What a bounce or report says about the message it is about (all may be empty)."""

    envid: str                   # Original-Envelope-Id of the DSN's per-message block
    message_id: str              # Message-ID of the returned original
    list_id: str                 # List-Id of the returned original


def read_original(raw: bytes) -> Original:
    """The ``Original-Envelope-Id`` and the returned original's Message-ID and List-Id. Never raises."""
    try:
        msg = m.parse(raw)
        original = m.returned_message(msg)
        return Original(_envelope_id(msg), m.header(original, "Message-ID").strip() if original is not None else "",
                        m.header(original, "List-Id") if original is not None else "")
    except Exception:  # noqa: BLE001 - untrusted mail: unreadable means "nothing proven"
        return Original("", "", "")


def _envelope_id(msg: Message) -> str:
    # RFC 3464 section 2.2.1: a per-message field of the message/delivery-status part
    for part in m.walk(msg, skip_returned=True):
        if m.content_type(part) != "message/delivery-status":
            continue
        payload = part.get_payload()
        blocks = payload if isinstance(payload, list) else [m.parse(m.text_of(part).encode("utf-8", "replace"))]
        for block in blocks:
            if isinstance(block, Message) and m.header(block, "Original-Envelope-Id"):
                return m.header(block, "Original-Envelope-Id").strip()
    return ""


def gets_verp(run, member: Member) -> bool:
    """Whether ``member``'s posts go out with a signed VERP sender (so only VERP or ENVID may score them)."""
    if run.lc.verp_mode != "signed":
        return False
    return verp.member_bounce_address(run.site, run.lc, member.address) != notices.address(run.lc, "bounces")


def record_post(store, lc, message_id: str | None) -> None:
    """Remember that a post with ``message_id`` went out to the list's members now (at fan-out)."""
    if not message_id:
        return
    store.add_event(BounceEvent(at=clock.now(), address=None, bounce_class="none", attribution="fanout",
                                message_id=message_id.strip(), action=POST_SENT,
                                detail=f"post fanned out to the members of {notices.address(lc)}"))


def sent_to(run, member: Member, original: Original) -> bool:
    """Whether ``original`` is a post of this list fanned out while ``member`` was subscribed.

    Its List-Id must be this list's (RFC 2919) and its Message-ID one recorded
    by :func:`record_post` within ``verp.max_age``.
    """
    label = notices.list_label(run.lc).lower()
    if not original.message_id or label not in original.list_id.lower():
        return False
    since = run.now - run.site.conf.verp.max_age
    return any(e.message_id == original.message_id and e.at >= member.subscribed_at
               for e in run.store.events(since=since, actions=(POST_SENT,)))


def quotes_their_copy(run, member: Member, raw: bytes) -> bool:
    """Whether the report ``raw`` quotes the copy of a post that listgate sent to ``member``.

    A post's List-Id and Message-ID are public (every member and every archive
    reader has them), so they prove nothing. What only that member's copy
    carries, and only we can sign: its ``Return-Path`` (added by the member's
    MTA on delivery, RFC 5321 section 4.4) being the member's signed VERP
    address (:func:`listgate.verp.decode`: MAC and date checked), or its
    ``List-Unsubscribe`` carrying the member's signed one-click token
    (:mod:`listgate.web.tokens`). Never raises for bad input.
    """
    try:
        original = m.returned_message(m.parse(raw))
    except Exception:  # noqa: BLE001 - untrusted mail: unreadable means "nothing proven"
        return False
    if original is None:
        return False
    try:
        return _return_path_is(run, member, m.header(original, "Return-Path")) or \
            _unsubscribe_token_is(run, member, m.header(original, "List-Unsubscribe"))
    except verp.VerpKeyError:
        return False


def _return_path_is(run, member: Member, value: str) -> bool:
    parts = split_address(value or "")
    found = run.site.address_table.lookup(*parts) if parts else None
    if found is None or found.role != "bounces" or found.list_key != run.key or not found.extension:
        return False
    result = verp.decode(run.site, run.lc, found.extension, store=run.store)
    return result.kind == "member" and run.store.same_address(result.member, member.address)


def _unsubscribe_token_is(run, member: Member, value: str) -> bool:
    from ..web import tokens
    for token in re.findall(r"/u/([A-Za-z0-9_.=-]+)>", value or ""):
        try:
            found = tokens.verify(run.site, token)
        except tokens.TokenError:
            continue
        if found.lc is run.lc or addresses.list_key(found.lc) == run.key:
            return run.store.same_address(found.member, member.address)
    return False


def summary(failure, attribution: str) -> bytes:
    """A short text report of a failure, for a probe: never the bounce itself (an outsider may have written it)."""
    diagnostic = " ".join((failure.diagnostic or "").split())[:_MAX_SUMMARY]
    return (f"Subject: the last delivery failure for your address\nContent-Type: text/plain; charset=utf-8\n\n"
            f"Recipient: {failure.address or '-'}\nClass: {failure.bounce_class}\nStatus: {failure.status or '-'}\n"
            f"Diagnostic: {diagnostic or '-'}\nAttributed by: {attribution}\n").encode("utf-8")
