"""Every message the list application writes: replies, confirmations, owner notices, bounce mail.

Two kinds of call:

* *builders* return an :class:`email.message.EmailMessage` made with
  :func:`listgate.messages.make_notice` (``From``/``To``/``Date``/``Message-ID``,
  ``Auto-Submitted: auto-generated`` (RFC 3834), UTF-8 body): the bounce life
  cycle (:mod:`listgate.app.bounces`) collects them and queues them inside
  its store transaction. Samples and evidence are raw messages (bytes), attached as ``message/rfc822``
  (or byte-exact when they do not survive re-serialising).
* *senders* (:func:`send`, :func:`reply`, :func:`confirmation`, :func:`to_owners`,
  :func:`tell_owners`, :func:`forward_to_owners`) build and put the message in ``virgin`` at once;
  they return the qfile id and raise :class:`~listgate.queue.QueueError` when
  it cannot be stored durably.

Envelope senders: mail to a person who wrote to us (confirmations, replies)
goes out from ``L-bounces@D`` so a bounce of it reaches the bounce life
cycle; owner and moderator mail goes out from the null reverse-path
(:func:`owner_deliveries`) so a failing owner mailbox cannot loop. Every
notice about the list carries its ``List-Id`` (RFC 2919, :func:`list_id`).

Every subject and body comes from a named template (:mod:`listgate.app.texts`:
the list's and the site's overrides, then the built-in text).
"""
from __future__ import annotations

import email.header
from email.message import EmailMessage
from typing import Iterable, Sequence

from .. import addresses, messages
from ..bounce import reports
from ..config import format_duration
from ..messages import make_notice
from . import texts

# Owner notices attach at most this many pieces of evidence (newest first):
# enough to judge, small enough to read.
MAX_EVIDENCE = 3


def address(lc, role: str = "post", extension: str | None = None) -> str:
    """One of the list's addresses, e.g. ``L-request@D`` (:func:`listgate.addresses.make`)."""
    return addresses.make(lc.name, lc.domain, role, extension)


def confirm_address(lc, token: str) -> str:
    """``L-confirm+TOKEN@D``."""
    return address(lc, "confirm", token)


def list_label(lc) -> str:
    """``<name.domain>``: the list's identifier in ``List-Id`` (RFC 2919 section 2, dot-atom text)."""
    return f"<{lc.name}.{lc.domain}>"


def list_id(lc) -> str:
    """``"description" <name.domain>`` (RFC 2919 section 2: the list-label is dot-atom text)."""
    label = list_label(lc)
    desc = " ".join(str(lc.description or "").replace('"', "").replace("\\", "").split())
    if not desc:
        return label
    if not desc.isascii():
        return f"{email.header.Header(desc, 'utf-8').encode()} {label}"
    return f'"{desc}" {label}'


def _list_headers(lc, reply_to: str | None = None) -> dict:
    headers = {"List-Id": list_id(lc)}
    if reply_to:
        headers["Reply-To"] = reply_to
    return headers


# -- the owners ------------------------------------------------------------------

def owner_recipients(lc, moderators: bool = False) -> list[str]:
    """The owners (``moderators=True``: the moderators, or the owners if the list names none)."""
    return list(lc.moderators) if moderators and lc.moderators else list(lc.owners)


def owner_deliveries(lc, moderators: bool = False) -> list[dict]:
    """One delivery per owner (or moderator), with the null reverse-path.

    Owner notices go out from ``<>`` (RFC 5321 section 4.5.5): if an owner's
    mailbox fails, no bounce comes back to ``L-bounces@D`` to be forwarded to
    the owners again (a loop).
    """
    return [{"rcpt": r, "sender": ""} for r in owner_recipients(lc, moderators)]


def owner_notice(lc, subject: str, body: str, *, samples: Iterable[bytes] = (), moderators: bool = False,
                 reply_to: str | None = None) -> EmailMessage:
    """A notice from ``L-owner@D`` to the owners (or moderators): the one builder of owner mail."""
    return make_notice(sender=address(lc, "owner"), to=owner_recipients(lc, moderators), subject=subject,
                       body=body, domain=lc.domain, samples=samples, headers=_list_headers(lc, reply_to))


def to_owners(site, lc, subject: str, body: str, *, samples=(), kind: str = "owner_notice",
              moderators: bool = False, reply_to: str | None = None) -> str:
    """Queue an :func:`owner_notice` to the owners (or moderators); returns the virgin qfile id."""
    msg = owner_notice(lc, subject, body, samples=samples, moderators=moderators, reply_to=reply_to)
    return messages.queue_virgin(site, lc, msg, owner_deliveries(lc, moderators), kind=kind)


def tell_owners(site, lc, name: str, *, kind: str, samples=(), moderators: bool = False,
                reply_to: str | None = None, **fields) -> str:
    """Queue notice ``name`` (:mod:`listgate.app.texts`, filled with ``fields``) to the owners
    (or moderators); returns the virgin qfile id."""
    text = texts.render(name, lc, **fields)
    return to_owners(site, lc, text.subject, text.body, samples=samples, kind=kind, moderators=moderators,
                     reply_to=reply_to)


def forward_to_owners(site, lc, msg: bytes, envelope_sender: str | None) -> str:
    """Mail to ``L-owner@D``: the message, unchanged, to every owner (null envelope sender).

    A report about the site's own mail (TLS or DMARC report, a feedback report
    that is not a complaint: :func:`listgate.bounce.reports.for_postmaster`)
    goes to the site's postmaster instead. Returns what was done, with the qfile id.
    """
    meta = {"envelope_sender_original": envelope_sender}
    why = reports.for_postmaster(msg)
    if why:
        qid = messages.queue_virgin(site, lc, msg, [{"rcpt": reports.postmaster_address(site), "sender": ""}],
                                    kind="postmaster_forward", meta=meta)
        return f"{why}: forwarded to the postmaster as {qid}"
    qid = messages.queue_virgin(site, lc, msg, owner_deliveries(lc), kind="owner_forward", meta=meta)
    return f"forwarded to owners as {qid}"


def to_postmaster(lc, postmaster: str, msg: bytes, *, recipient: str, envelope_sender: str,
                  reason: str) -> EmailMessage:
    """Forward a report about the site's own mail (not a member's failure) to the postmaster.

    ``reason`` says what it is (a TLS report, an auth-failure feedback
    report, a TLS/MTA-STS/DANE failure of our MTA; :mod:`listgate.bounce.reports`).
    """
    text = texts.render("postmaster_report", lc, recipient=recipient, reason=reason, reason_short=reason[:80],
                        envelope_sender=envelope_sender or "<>")
    return make_notice(sender=address(lc, "owner"), to=postmaster, subject=text.subject, body=text.body,
                       domain=lc.domain, samples=[msg], headers=_list_headers(lc))


# -- replies and confirmations to people who wrote to the list ---------------------

def send(site, lc, to: str, subject: str, body: str, *, kind: str, reply_to: str | None = None,
         in_reply_to: str | None = None, samples=()) -> str:
    """One message from ``L-request@D`` to ``to``, envelope sender ``L-bounces@D``; returns the qfile id."""
    headers = {"Reply-To": reply_to} if reply_to else None
    msg = make_notice(sender=address(lc, "request"), to=to, subject=subject, body=body,
                      domain=lc.domain, headers=headers, in_reply_to=in_reply_to, samples=samples)
    return messages.queue_virgin(site, lc, msg, [{"rcpt": to, "sender": address(lc, "bounces")}], kind=kind)


def reply(site, lc, to: str, name: str, *, kind: str, reply_to: str | None = None,
          in_reply_to: str | None = None, samples=(), **fields) -> str:
    """:func:`send` notice ``name`` (:mod:`listgate.app.texts`, filled with ``fields``) to ``to``."""
    text = texts.render(name, lc, **fields)
    return send(site, lc, to, text.subject, text.body, kind=kind, reply_to=reply_to, in_reply_to=in_reply_to,
                samples=samples)


def confirmation(site, lc, to: str, token: str, action: str, *, in_reply_to: str | None = None) -> str:
    """Ask ``to`` to confirm ``action`` (text like "subscribe x@y to demo@D") by replying."""
    return reply(site, lc, to, "confirm", kind="confirmation", reply_to=confirm_address(lc, token),
                 in_reply_to=in_reply_to, action=action, confirm=confirm_address(lc, token), token=token)


# -- the bounce life cycle's mail (builders) ----------------------------------------

def _score(value: float) -> str:
    return f"{value:g}"


def probe(lc, member_address: str, probe_address: str, *, score: float,
          sample: bytes | None, message_id: str) -> EmailMessage:
    """The probe: ``From`` is the probe address (the envelope sender carries the same token).

    ``sample``: the last bouncing message, attached. ``message_id`` is chosen
    by the caller so the probe's pending record can name it (a DSN that quotes
    it identifies the probe even without VERP).
    """
    text = texts.render("probe", lc, member=member_address, score=_score(score),
                        threshold=_score(lc.bounce_score_threshold))
    return make_notice(sender=probe_address, to=member_address, subject=text.subject, body=text.body, domain=lc.domain, samples=[sample] if sample else (),
                       headers=_list_headers(lc), message_id=message_id)


def disabled_notice(lc, member_address: str, token: str, *, notice: int, notices: int,
                    removal_in: float | None) -> EmailMessage:
    """Notice ``notice`` of ``notices`` to a member disabled by bounce.

    It names the re-enable confirmation address ``L-confirm+TOKEN@D`` (also as
    ``Reply-To``, so a plain reply confirms). ``removal_in``: seconds until
    removal if nothing happens (None: unknown).
    """
    confirm = confirm_address(lc, token)
    note = f"in about {format_duration(removal_in)}" if removal_in else "after the last notice"
    text = texts.render("disabled", lc, member=member_address, confirm_address=confirm, token=token,
                        notice=notice, notices=notices, removal_note=note)
    return make_notice(sender=address(lc, "owner"), to=member_address, subject=text.subject, body=text.body,
                       domain=lc.domain, headers=_list_headers(lc, reply_to=confirm))


def removed_notice(lc, member_address: str) -> EmailMessage:
    """The last notice to a member removed for bouncing (0 warnings configured)."""
    text = texts.render("removed", lc, member=member_address)
    return make_notice(sender=address(lc, "owner"), to=member_address, subject=text.subject,
                       body=text.body, domain=lc.domain, headers=_list_headers(lc))


def owner_member_notice(lc, member_address: str, what: str, reason: str,
                        evidence: Sequence[bytes]) -> EmailMessage:
    """Tell the owners that bounce processing ``what`` (``disabled``/``removed``) a member.

    ``evidence``: raw bouncing messages, newest first; the first
    :data:`MAX_EVIDENCE` are attached.
    """
    samples = list(evidence)[:MAX_EVIDENCE]
    text = texts.render("owner_member", lc, what=what, member=member_address, reason=reason, count=len(samples))
    return owner_notice(lc, text.subject, text.body, samples=samples)


def owner_incident(lc, incident_domain: str, status: str, members: Sequence[str], window: float,
                   sample: bytes | None) -> EmailMessage:
    """Tell the owners once that a domain incident is under way (bounces not scored)."""
    text = texts.render("owner_incident", lc, incident_domain=incident_domain, status=status,
                        count=len(members), window=format_duration(window),
                        members="\n".join(f"    {m}" for m in members))
    return owner_notice(lc, text.subject, text.body, samples=[sample] if sample else ())


def owner_complaint(lc, member_address: str, action: str, report: bytes) -> EmailMessage:
    """Tell the owners about a spam complaint (ARF, RFC 5965) and what was done."""
    text = texts.render("owner_complaint", lc, member=member_address, action=action)
    return owner_notice(lc, text.subject, text.body, samples=[report])


def unrecognized(lc, msg: bytes, *, recipient: str, envelope_sender: str, reason: str) -> EmailMessage:
    """Forward a message the engine could not attribute (or a human reply) to the owners."""
    text = texts.render("unrecognized", lc, recipient=recipient, reason=reason,
                        envelope_sender=envelope_sender or "<>")
    return owner_notice(lc, text.subject, text.body, samples=[msg])
