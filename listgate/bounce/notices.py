"""The mail the bounce life cycle writes: probes, member notices, owner notices, forwards.

Each function returns an :class:`email.message.EmailMessage` built with
:func:`listgate.messages.make_notice` (``From``/``To``/``Date``/``Message-ID``,
``Auto-Submitted: auto-generated``, UTF-8 body) from a template in
``listgate/templates/bounce_*.txt``; the engine decides the delivery envelope
and queues it. Samples and evidence are raw messages (bytes), attached as
``message/rfc822`` (or byte-exact when they do not survive re-serialising).

Every message carries ``List-Id`` (RFC 2919) so members can filter it.
"""
from __future__ import annotations

from email.message import EmailMessage
from typing import Iterable, Sequence

from .. import addresses
from ..config import format_duration
from ..messages import make_notice, render

# Owner notices attach at most this many pieces of evidence (newest first):
# enough to judge, small enough to read.
MAX_EVIDENCE = 3


def _common(lc) -> dict:
    return {"list": lc.name, "domain": lc.domain,
            "owner_address": addresses.make(lc.name, lc.domain, "owner")}


def _list_headers(lc) -> dict:
    return {"List-Id": f"<{lc.name}.{lc.domain}>"}


def _score(value: float) -> str:
    return f"{value:g}"


def probe(lc, member_address: str, probe_address: str, *, score: float,
          sample: bytes | None, message_id: str) -> EmailMessage:
    """The probe: ``From`` is the probe address (the envelope sender carries the same token).

    ``sample``: the last bouncing message, attached. ``message_id`` is chosen
    by the caller so the probe's pending record can name it (a DSN that quotes
    it identifies the probe even without VERP).
    """
    body = render("bounce_probe", member=member_address, score=_score(score),
                  threshold=_score(lc.bounce_score_threshold), **_common(lc))
    return make_notice(sender=probe_address, to=member_address,
                       subject=f"{lc.name} mailing list: checking your address",
                       body=body, domain=lc.domain, samples=[sample] if sample else (),
                       headers=_list_headers(lc), message_id=message_id)


def disabled_notice(lc, member_address: str, token: str, *, notice: int, notices: int,
                    removal_in: float | None) -> EmailMessage:
    """Notice ``notice`` of ``notices`` to a member disabled by bounce.

    It names the re-enable confirmation address ``L-confirm+TOKEN@D`` (also as
    ``Reply-To``, so a plain reply confirms). ``removal_in``: seconds until
    removal if nothing happens (None: unknown).
    """
    confirm = addresses.make(lc.name, lc.domain, "confirm", token)
    note = f"in about {format_duration(removal_in)}" if removal_in else "after the last notice"
    body = render("bounce_disabled", member=member_address, confirm_address=confirm,
                  notice=notice, notices=notices, removal_note=note, **_common(lc))
    headers = {**_list_headers(lc), "Reply-To": confirm}
    return make_notice(sender=addresses.make(lc.name, lc.domain, "owner"), to=member_address,
                       subject=f"{lc.name} mailing list: delivery to you is disabled (confirm {token})",
                       body=body, domain=lc.domain, headers=headers)


def removed_notice(lc, member_address: str) -> EmailMessage:
    """The last notice to a member removed for bouncing (0 warnings configured)."""
    body = render("bounce_removed", member=member_address,
                  request_address=addresses.make(lc.name, lc.domain, "request"), **_common(lc))
    return make_notice(sender=addresses.make(lc.name, lc.domain, "owner"), to=member_address,
                       subject=f"{lc.name} mailing list: you have been removed",
                       body=body, domain=lc.domain, headers=_list_headers(lc))


def _to_owners(lc, subject: str, body: str, samples: Iterable[bytes]) -> EmailMessage:
    return make_notice(sender=addresses.make(lc.name, lc.domain, "owner"), to=list(lc.owners),
                       subject=subject, body=body, domain=lc.domain, samples=samples,
                       headers=_list_headers(lc))


def owner_member_notice(lc, member_address: str, what: str, reason: str,
                        evidence: Sequence[bytes]) -> EmailMessage:
    """Tell the owners that bounce processing ``what`` (``disabled``/``removed``) a member.

    ``evidence``: raw bouncing messages, newest first; the first
    :data:`MAX_EVIDENCE` are attached.
    """
    samples = list(evidence)[:MAX_EVIDENCE]
    body = render("bounce_owner_member", what=what, member=member_address, reason=reason,
                  count=len(samples), **_common(lc))
    return _to_owners(lc, f"{lc.name}: bounce processing {what} {member_address}", body, samples)


def owner_incident(lc, incident_domain: str, status: str, members: Sequence[str], window: float,
                   sample: bytes | None) -> EmailMessage:
    """Tell the owners once that a domain incident is under way (bounces not scored)."""
    body = render("bounce_owner_incident", incident_domain=incident_domain, status=status,
                  count=len(members), window=format_duration(window),
                  members="\n".join(f"    {m}" for m in members), **_common(lc))
    return _to_owners(lc, f"{lc.name}: bounces from {incident_domain} ({status}) not scored",
                      body, [sample] if sample else ())


def owner_complaint(lc, member_address: str, action: str, report: bytes) -> EmailMessage:
    """Tell the owners about a spam complaint (ARF, RFC 5965) and what was done."""
    body = render("bounce_owner_complaint", member=member_address, action=action, **_common(lc))
    return _to_owners(lc, f"{lc.name}: spam complaint for {member_address}", body, [report])


def unrecognized(lc, msg: bytes, *, recipient: str, envelope_sender: str, reason: str) -> EmailMessage:
    """Forward a message the engine could not attribute (or a human reply) to the owners."""
    body = render("bounce_unrecognized", recipient=recipient, reason=reason,
                  envelope_sender=envelope_sender or "<>", **_common(lc))
    return _to_owners(lc, f"{lc.name}: unrecognised message at the bounce address", body, [msg])


def to_postmaster(lc, postmaster: str, msg: bytes, *, recipient: str, envelope_sender: str,
                  reason: str) -> EmailMessage:
    """Forward a report about the site's own mail (not a member's failure) to the postmaster.

    ``reason`` says what it is (a TLS report, an auth-failure feedback
    report, a TLS/MTA-STS/DANE failure of our MTA; :mod:`listgate.bounce.reports`).
    """
    body = render("bounce_postmaster", recipient=recipient, reason=reason,
                  envelope_sender=envelope_sender or "<>", **_common(lc))
    return make_notice(sender=addresses.make(lc.name, lc.domain, "owner"), to=postmaster,
                       subject=f"{lc.name}: report for the postmaster: {reason[:80]}", body=body,
                       domain=lc.domain, samples=[msg], headers=_list_headers(lc))
