"""RFC 5965 Abuse Reporting Format: feedback reports (complaints).

A feedback report is ``multipart/report; report-type=feedback-report``
(RFC 5965 section 2) with a ``message/feedback-report`` part holding
``Feedback-Type`` (abuse, fraud, virus, other, not-spam ...),
``Original-Rcpt-To`` (optional: the complaining recipient) and
``Original-Mail-From``, followed by the reported message or its headers.
The complaining member is ``Original-Rcpt-To``, else the ``To`` of the
returned message.

Only ``abuse``, ``fraud`` and ``virus`` are complaints
(:func:`listgate.bounce.reports.is_complaint`); an ``auth-failure``
(RFC 6591), ``not-spam`` or ``other`` report is a report for the postmaster.

Feedback loops older than RFC 5965 send no ``message/feedback-report``
part, only the reported message: Microsoft's JMRP marks the complaining
recipient with ``X-HmXmrOriginalRecipient`` (on the report when it forwards
the message "as is", or on the attached ``message/rfc822``), and AOL's
former feedback loop marked its reports ``X-Loop: scomp`` (complainer: the
``To`` of the attached message). They are read as ``abuse`` reports.
"""
from __future__ import annotations

from dataclasses import dataclass
from email.message import Message
from email.parser import HeaderParser
from email.policy import compat32

from . import message as m
from .reports import is_complaint

_JMRP_HEADER = "X-HmXmrOriginalRecipient"


@dataclass(frozen=True)
class FeedbackReport:
    feedback_type: str            # lower case, 'abuse' when absent (RFC 5965 3.1 requires it)
    addresses: tuple[str, ...]    # complaining recipients (may be empty)
    user_agent: str
    notes: tuple[str, ...]

    @property
    def is_complaint(self) -> bool:
        """Whether a recipient complained (abuse, fraud, virus), RFC 5965 section 3.1."""
        return is_complaint(self.feedback_type)


def _fields(part: Message) -> Message:
    try:
        payload = part.get_payload()
    except Exception:
        payload = None
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        return payload[0]   # compat32 parsed message/* as an embedded header block
    try:
        return HeaderParser(policy=compat32).parsestr(m.text_of(part).strip() + "\n")
    except Exception:
        return Message()


def find_feedback_report(msg: Message) -> FeedbackReport | None:
    """The ARF report in ``msg`` or None. Never raises."""
    is_report = m.content_type(msg) == "multipart/report" and m.param(msg, "report-type") == "feedback-report"
    fields = None
    for part in m.walk(msg, skip_returned=True):
        if m.content_type(part) == "message/feedback-report":
            fields = _fields(part)
            break
    if fields is None:
        if not is_report:
            return _legacy_feedback_loop(msg)
        fields = Message()
    notes = []
    if not is_report:
        notes.append("message/feedback-report part outside a feedback-report multipart/report (tolerated)")
    addresses = m.addresses_in(fields, "Original-Rcpt-To")
    if not addresses:
        original = m.returned_message(msg)
        if original is not None:
            addresses = m.addresses_in(original, "To")
            if addresses:
                notes.append("complaining recipient taken from the To of the reported message")
    feedback_type = (m.header(fields, "Feedback-Type").split() or ["abuse"])[0].lower()
    return FeedbackReport(feedback_type, tuple(dict.fromkeys(addresses)),
                          m.header(fields, "User-Agent"), tuple(notes))


def _legacy_feedback_loop(msg: Message) -> FeedbackReport | None:
    """A pre-ARF feedback-loop report (JMRP, AOL scomp; module docstring), or None."""
    original = m.returned_message(msg)
    for where, note in ((msg, "the report"), (original, "the attached message")):
        if where is not None and m.header(where, _JMRP_HEADER):
            addresses = m.addresses_in(where, _JMRP_HEADER)
            return FeedbackReport("abuse", tuple(dict.fromkeys(addresses)), "JMRP",
                                  (f"Microsoft JMRP complaint without a feedback-report part ({_JMRP_HEADER} on {note})",))
    if "scomp" in m.header(msg, "X-Loop").lower() and original is not None:
        addresses = m.addresses_in(original, "To")
        return FeedbackReport("abuse", tuple(dict.fromkeys(addresses)), "scomp",
                              ("AOL feedback-loop complaint without a feedback-report part (X-Loop: scomp)",))
    return None
