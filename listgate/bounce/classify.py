"""What a bounce says: per failing address, class, status, diagnostic and why.

The contract is in :mod:`listgate.bounce` (``__init__`` docstring). Order of
evidence for one inbound message:

1. RFC 5965 feedback report (ARF, also pre-ARF JMRP/scomp loops) →
   ``kind='arf'``, one ``complaint`` per complaining recipient — for
   ``abuse``/``fraud``/``virus`` only; any other Feedback-Type
   (``auth-failure``, ``not-spam``, ``other``) and RFC 8460 TLS reports or
   RFC 7489 aggregate reports (:mod:`.reports`) → ``kind='report'``, class
   ``report``, ``is_bounce=False``: for the postmaster, never scored.
2. RFC 3464 DSN → ``kind='dsn'``, one failure per recipient block, classed by
   :func:`listgate.bounce.status.classify_failure` (Action, Status,
   Diagnostic-Code); several recipients with different outcomes are kept
   apart. Amazon SES JSON notifications (:mod:`.formats`) are read here too.
3. Our detectors for the formats flufl.bounce lacks (:mod:`.formats`), then
   flufl.bounce's (:mod:`.detectors`), for non-standard bounces →
   ``kind='non-standard'``; each reported address is classed from the status
   code / SMTP reply found in the bounce text next to it (``heuristic``
   rules of :mod:`.status`), else from the detector's own verdict
   (permanent → ``hard``, temporary → ``delayed``: its temporaries are delay
   warnings).
4. RFC 3834 auto-replies (:mod:`.autoreply`) → ``kind='autoreply'``,
   ``is_bounce=False``. Checked after 1-3 because MTAs mark real bounces
   ``Auto-Submitted`` too.
5. Something that looks like a bounce (null-ish sender such as
   MAILER-DAEMON/postmaster, a bounce subject) but names no address: one
   failure with ``address=None`` (``unknown`` unless a status code in the
   text decides), ``attribution='heuristic'``.
6. Anything else (a human reply) → ``kind='not-a-bounce'``, no failures.

``is_bounce`` is True for every report about the delivery of our mail (DSN,
ARF, non-standard bounce), also when it only reports ``delayed`` or
``delivered``: the engine scores only :data:`FAILURE_CLASSES` (and acts on
``complaint`` per config). It is False for auto-replies and human mail.

VERP first: when the caller decoded the envelope recipient to a member or a
probe (``verp_address``, the *member's* address), every failure of the
message is attributed to that member (``attribution='verp'`` or
``'probe'``), whatever address the report names (forwarding, aliases): one
VERP'd message went to exactly one member. A report naming several
recipients is then reduced to its most severe outcome
(hard > policy > soft > complaint > unknown > delayed > others), and the
address the report named is kept in ``reason``. VERP says only *who*: the
message is read the same way with or without it (same steps 1-6, same
detectors, same :mod:`.status` rules), so ``listgate classify`` on a file and
the engine on the same bounce to a VERP address reach the same class.

A failure whose text says our own MTA could not get the TLS its policy
requires (TLS, MTA-STS, DANE: :func:`.reports.transport_problem`) is class
``site``: a problem of the list host, not of the member (weight 0).

Never raises on bad input; the limits on how much is parsed are in
:mod:`.message`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

from . import message as m
from .arf import find_feedback_report
from .autoreply import autoreply_reason
from .detectors import run_detectors
from .dsn import find_report
from .formats import find_ses_notification, prose_verdict, run_own_detectors
from .reports import find_site_report, transport_problem
from .status import classify_failure, gave_up, is_warning
from ..log import events

log = events("listgate.bounce")

CLASSES = ("hard", "soft", "delayed", "delivered", "relayed", "expanded",
           "autoreply", "complaint", "policy", "unknown", "site", "report")
FAILURE_CLASSES = ("hard", "soft", "policy")
KINDS = ("dsn", "arf", "autoreply", "non-standard", "not-a-bounce", "report")
ATTRIBUTIONS = ("verp", "probe", "dsn", "heuristic", "none")  # plus 'detector:<name>'

# Most severe first: what a VERP'd report with several recipients reduces to.
_SEVERITY = ("hard", "policy", "soft", "complaint", "unknown", "site", "delayed",
             "relayed", "expanded", "delivered", "autoreply", "report")

_BOUNCE_FROM_RE = re.compile(r"mailer-daemon|post_?master|mail\s*delivery|maildelivery|mail-daemon"
                             r"|\bmmdf\b|\bmdaemon\b|mail\s+administrator|smtp\s+gateway", re.I)
_BOUNCE_SUBJECT_RE = re.compile(
    r"undeliver|undelivered|delivery\s+(?:status\s+notification|failure|failed|problem|report|notification)"
    r"|failure\s+notice|returned\s+mail|mail\s+delivery\s+(?:failed|failure|system|subsystem)|non[- ]?delivery"
    r"|could\s+not\s+be\s+delivered|delivery\s+has\s+failed|message\s+not\s+delivered|rejected|bounced?"
    r"|mail\s+system\s+error|nondeliverable|warning:\s+could\s+not|delayed\s+mail|unzustellbar|non\s+remis",
    re.I,
)


@dataclass(frozen=True)
class Failure:
    """What a report says about one address (see the contract in :mod:`listgate.bounce`)."""

    address: str | None
    bounce_class: str
    status: str | None
    diagnostic: str
    attribution: str
    reason: str


@dataclass(frozen=True)
class Classification:
    """What one inbound message is (see the contract in :mod:`listgate.bounce`)."""

    is_bounce: bool
    kind: str
    failures: tuple[Failure, ...]
    message_id: str | None
    original_message_id: str | None
    notes: tuple[str, ...]

    @property
    def scored(self) -> tuple[Failure, ...]:
        """The failures in :data:`FAILURE_CLASSES` (the ones a bounce score may count)."""
        return tuple(f for f in self.failures if f.bounce_class in FAILURE_CLASSES)


def classify(msg: bytes, *, envelope_recipient: str | None = None,
             verp_address: str | None = None, verp_kind: str = "verp") -> Classification:
    """Classify one inbound message (raw bytes as received; str is accepted).

    ``envelope_recipient``: the RCPT it came to (only recorded in notes).
    ``verp_address``: the member (or probed member) address the caller
    decoded from a VERP or probe envelope recipient; ``verp_kind`` is
    ``'verp'`` or ``'probe'`` and becomes the failures' attribution.
    Never raises: an internal error yields an ``unknown`` failure so the
    message goes to the owners as unrecognised rather than being lost.
    """
    try:
        result = _classify(msg, verp_address, verp_kind)
    except Exception as exc:  # last line of defence: bad input must never crash a front end
        log.exception("bounce_classification_failed")
        result = Classification(
            True, "non-standard",
            (Failure(verp_address, "unknown", None, "", verp_kind if verp_address else "none",
                     f"internal error while classifying: {exc!r}"),),
            None, None, (f"internal error: {exc!r}",))
    if envelope_recipient:
        result = replace(result, notes=result.notes + (f"envelope recipient {envelope_recipient}",))
    return result


def _classify(raw: bytes, verp_address: str | None, verp_kind: str) -> Classification:
    msg = m.parse(raw)
    message_id = m.header(msg, "Message-ID") or None
    original = m.returned_message(msg)
    original_id = (m.header(original, "Message-ID") if original is not None else "") \
        or m.header(msg, "In-Reply-To") or None
    notes: list[str] = []
    try:
        defects = len(msg.defects)
    except Exception:
        defects = 0
    if defects:
        notes.append(f"{defects} MIME defect(s) tolerated")

    def done(is_bounce: bool, kind: str, failures: list[Failure]) -> Classification:
        failures = _site_side(failures, msg)
        if verp_address and failures:
            failures = _attribute_to_member(failures, verp_address, verp_kind)
        return Classification(is_bounce, kind, tuple(failures), message_id, original_id, tuple(notes))

    arf = find_feedback_report(msg)
    if arf is not None:
        notes.extend(arf.notes)
        reason = f"ARF feedback report (RFC 5965), Feedback-Type: {arf.feedback_type}"
        addresses = arf.addresses or (None,)
        if not arf.is_complaint:
            return done(False, "report", [Failure(a, "report", None, arf.feedback_type, "dsn" if a else "none",
                                                  reason + ": not a complaint, for the postmaster") for a in addresses])
        return done(True, "arf", [
            Failure(a, "complaint", None, arf.feedback_type, "dsn" if a else "none", reason) for a in addresses])

    site_report = find_site_report(msg)
    if site_report is not None:
        return done(False, "report", [Failure(None, "report", None, site_report.domain, "none",
                                              site_report.reason + ": for the postmaster")])

    report = find_report(msg)
    if report is not None and report.records:
        notes.extend(report.notes)
        return done(True, "dsn", _dsn_failures(report))
    if report is not None:
        notes.append("delivery-status part without recipient blocks; trying detectors")
    ses = find_ses_notification(msg)
    if ses is not None:
        notes.append(ses.note)
        return done(ses.is_bounce, ses.kind, [Failure(a, cls, status, _trim(diag), "detector:amazonses", reason)
                                              for a, cls, status, diag, reason in ses.failures])

    auto = autoreply_reason(msg)
    looks_like_bounce = _looks_like_bounce(msg)
    text = None
    own = run_own_detectors(msg)
    found = own or run_detectors(msg)
    if found is not None and not (auto and not _bounce_from(msg)):
        text = m.without_returned_text(m.body_text(msg))
        notes.append(f"{'our' if found is own else 'flufl.bounce'} detector {found.name!r} recognised the format")
        bogus = [a for a in found.permanent + found.temporary if m.address_of(a) is None]
        if bogus:
            notes.append(f"ignored {len(bogus)} detector match(es) that are not addresses")
        failures = [_detected_failure(text, a, found.name, permanent=True, verdict=found.verdict)
                    for a in found.permanent if a not in bogus]
        failures += [_detected_failure(text, a, found.name, permanent=False)
                     for a in found.temporary if a not in found.permanent and a not in bogus]
        if failures:
            return done(True, "non-standard", failures)
        found = None

    if auto and not _bounce_from(msg):
        if found is not None:
            notes.append(f"detector {found.name!r} matched, but the headers say auto-reply")
        return done(False, "autoreply", [
            Failure(None, "autoreply", None, "", "none", auto + ": not a bounce, never scored")])

    if looks_like_bounce:
        text = m.without_returned_text(m.body_text(msg))
        notes.append("no detector recognised it; bounce by its headers")
        return done(True, "non-standard", [_heuristic_failure(text, None, "heuristic")])

    notes.append("no report, no bounce format, no auto-reply marks: a human reply or other mail")
    return done(False, "not-a-bounce", [])


def _dsn_failures(report) -> list[Failure]:
    failures = []
    single = len(report.records) == 1
    for rec in report.records:
        # The human-readable part explains a lone recipient's failure when the
        # DSN has no Diagnostic-Code (common with Exchange and qmail gateways).
        diag = rec.diagnostic or (report.human_text if single else "")
        # The SMTP stage is in the human-readable part ("... (in reply to MAIL FROM
        # command)"), rarely in the Diagnostic-Code: read it there, near this recipient.
        human = m.without_returned_text(report.human_text)
        context = human if single else _near(human, rec.address or "")
        bounce_class, reason, status = classify_failure(
            rec.action, rec.status, diag, context=context,
            report_is_final=(gave_up(diag) and not is_warning(diag)) if not rec.action else None)
        if bounce_class is None:
            if rec.action in ("failed", "failure", "fail", "error"):
                bounce_class, reason = "hard", f"Action: {rec.action} without a status code"
            else:
                bounce_class, reason = "unknown", f"Action {rec.action or '(none)'!r} and no status code"
        failures.append(Failure(rec.address, bounce_class, status, _trim(rec.diagnostic or diag),
                                "dsn" if rec.address else "none", "DSN: " + reason))
    return failures


def _near(text: str, address: str, before: int = 200, after: int = 600) -> str:
    """The text around the first mention of ``address`` (where MTAs quote its SMTP reply)."""
    i = text.lower().find(address.lower()) if address else -1
    if i < 0:
        return ""
    return text[max(0, i - before): i + len(address) + after]


def _detected_failure(text: str, address: str, detector: str, *, permanent: bool,
                      verdict: tuple[str, str] | None = None) -> Failure:
    attribution = f"detector:{detector}"
    if not permanent:
        bounce_class, reason, status = classify_failure("", None, _near(text, address) or text,
                                                        report_is_final=False)
        if bounce_class in (None, "soft"):
            bounce_class, reason = "delayed", f"detector {detector!r} reports a delay warning"
        return Failure(address, bounce_class, status, _trim(_near(text, address, 0, 300)), attribution, reason)
    final = not is_warning(text)
    for snippet in (_near(text, address), text):
        if not snippet:
            continue
        bounce_class, reason, status = classify_failure("", None, snippet, report_is_final=final)
        if bounce_class is not None:
            return Failure(address, bounce_class, status, _trim(_diagnostic_line(snippet, status)),
                           attribution, f"{reason} (from the bounce text)")
    if verdict is not None:
        return Failure(address, verdict[0], None, _trim(_near(text, address, 0, 300)), attribution, verdict[1])
    return Failure(address, "hard", None, _trim(_near(text, address, 0, 300)), attribution,
                   f"detector {detector!r} reports a permanent failure; no status code in the text")


def _heuristic_failure(text: str, address: str | None, attribution: str) -> Failure:
    bounce_class, reason, status = classify_failure("", None, text, report_is_final=not is_warning(text))
    if bounce_class is None and prose_verdict(text):
        bounce_class, reason = prose_verdict(text)
        return Failure(address, bounce_class, None, _trim(text[:300]), attribution, reason)
    if bounce_class is None:
        return Failure(address, "unknown", None, _trim(text[:300]), attribution,
                       "a bounce by its headers, but no status code or known format")
    return Failure(address, bounce_class, status, _trim(_diagnostic_line(text, status)), attribution,
                   f"{reason} (from the bounce text)")


def _diagnostic_line(text: str, status: str | None) -> str:
    """The line of ``text`` that carries ``status`` (or the first 5xx/4xx reply)."""
    for line in text.splitlines():
        if (status and status in line) or re.match(r"\s*[45]\d\d[ -]", line):
            return line.strip()
    return text.strip()[:300]


def _trim(text: str, limit: int = 500) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _looks_like_bounce(msg) -> bool:
    """Whether the headers say "delivery failure report" (From MAILER-DAEMON, bounce subject)."""
    # Not Return-Path <>: RFC 3834 section 3.3 gives auto-replies a null sender too.
    if _bounce_from(msg):
        return True
    return bool(_BOUNCE_SUBJECT_RE.search(m.decoded_header(msg, "Subject")))


def _bounce_from(msg) -> bool:
    return bool(_BOUNCE_FROM_RE.search(m.header(msg, "From")))


def _attribute_to_member(failures: list[Failure], member: str, kind: str) -> list[Failure]:
    """VERP first: one VERP'd message went to one member; reduce to its worst outcome."""
    def rank(f: Failure) -> int:
        return _SEVERITY.index(f.bounce_class) if f.bounce_class in _SEVERITY else len(_SEVERITY)

    worst = min(failures, key=rank)
    reason = worst.reason
    if worst.address and worst.address.lower() != member.lower():
        reason += f"; the report names {worst.address}"
    if len(failures) > 1:
        reason += f"; most severe of {len(failures)} reported outcomes"
    return [replace(worst, address=member, attribution=kind, reason=reason)]


def _site_side(failures: list[Failure], msg) -> list[Failure]:
    """Failures whose text says our MTA could not get the TLS it requires → class ``site``.

    The failure's own diagnostic is read; the report's prose too when it
    reports one failure only (it then explains that one).
    """
    if not any(f.bounce_class in FAILURE_CLASSES + ("unknown",) for f in failures):
        return failures
    prose = m.without_returned_text(m.body_text(msg)) if len(failures) == 1 else ""
    out = []
    for f in failures:
        words = transport_problem(f.diagnostic + "\n" + prose) if f.bounce_class in FAILURE_CLASSES + ("unknown",) else None
        out.append(replace(f, bounce_class="site", reason=f"our MTA could not get the TLS it requires ({words!r}): "
                           f"a problem of the list host, not of the address; was: {f.reason}") if words else f)
    return out
