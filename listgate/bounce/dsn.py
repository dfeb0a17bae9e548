"""RFC 3464 delivery status notifications: per-recipient records, tolerantly.

A DSN is ``multipart/report; report-type=delivery-status`` (RFC 3462/6522)
whose ``message/delivery-status`` part holds one block of per-message fields
and then one block per recipient (RFC 3464 section 2.1), blocks separated by
blank lines. Each recipient block carries ``Final-Recipient`` (required),
``Original-Recipient`` (optional: the address as the sender gave it in
``ORCPT``), ``Action`` (required: failed, delayed, delivered, relayed,
expanded), ``Status`` (required: RFC 3463 code) and ``Diagnostic-Code``
(optional: the remote SMTP reply).

Broken DSNs are common, so: the ``report-type`` parameter is not required
(any ``message/delivery-status`` part counts), a delivery-status body sent as
``text/plain`` is recognised by its field names, missing fields are allowed,
and field values with comments or junk are cleaned.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from email.message import Message
from email.parser import HeaderParser
from email.policy import compat32

from . import message as m
from .status import normalize_action, normalize_status

_FIELDS_RE = re.compile(r"^(?:final-recipient|original-recipient)\s*:", re.IGNORECASE | re.MULTILINE)
_BLANK_RE = re.compile(r"\r?\n[ \t]*\r?\n")
MAX_RECIPIENTS = 500   # recipient blocks read from one report


@dataclass(frozen=True)
class RecipientRecord:
    """One per-recipient block of a DSN (RFC 3464 section 2.3)."""

    address: str | None          # Original-Recipient, else Final-Recipient, else X-Actual-Recipient
    final_recipient: str | None
    original_recipient: str | None
    action: str                  # normalised first word, '' when absent
    status: str | None           # '5.1.1', None when absent or unreadable
    diagnostic: str              # Diagnostic-Code without its type ('smtp; '), unfolded


@dataclass(frozen=True)
class Report:
    """The delivery-status information found in one message."""

    records: tuple[RecipientRecord, ...]
    human_text: str              # the human-readable part(s), for explanations
    well_formed: bool            # a real message/delivery-status part was found
    notes: tuple[str, ...]


def _status_blocks(part: Message) -> list[Message]:
    """The field blocks of a delivery-status part, whatever shape the parser left it in.

    compat32 normally splits message/delivery-status into one header block
    per blank-line-separated group already; a part it left as text (bad
    transfer encoding, no blank line after the part headers) is split here.
    """
    try:
        payload = part.get_payload()
    except Exception:
        return []
    if isinstance(payload, list):
        return [block for block in payload if isinstance(block, Message)]
    return _blocks(m.text_of(part))


def _blocks(text: str) -> list[Message]:
    parser = HeaderParser(policy=compat32)
    out = []
    for chunk in _BLANK_RE.split(text.strip()):
        chunk = chunk.strip("\r\n")
        if not chunk:
            continue
        try:
            out.append(parser.parsestr(chunk + "\n"))
        except Exception:
            continue
    return out


def _unfold(value: str) -> str:
    return " ".join(value.split())


def _record(block: Message) -> RecipientRecord | None:
    final = m.header(block, "Final-Recipient")
    original = m.header(block, "Original-Recipient")
    actual = m.header(block, "X-Actual-Recipient")
    action = normalize_action(m.header(block, "Action"))
    if not (final or original or actual or action):
        return None  # a per-message block
    diagnostic = _unfold(m.header(block, "Diagnostic-Code"))
    kind, sep, rest = diagnostic.partition(";")
    if sep and len(kind) < 20 and " " not in kind.strip():
        diagnostic = rest.strip()   # drop the diagnostic-type ("smtp; ", "X-Postfix; ")
    final_a, original_a = m.address_of(final), m.address_of(original)
    return RecipientRecord(
        address=original_a or final_a or m.address_of(actual),
        final_recipient=final_a,
        original_recipient=original_a,
        action=action,
        status=normalize_status(m.header(block, "Status")),
        diagnostic=diagnostic[:1000],
    )


def find_report(msg: Message) -> Report | None:
    """The delivery-status report in ``msg``, or None if it has none.

    Never raises. Per-recipient records come in report order, at most
    :data:`MAX_RECIPIENTS`.
    """
    status_parts: list[Message] = []
    text_parts: list[Message] = []
    for part in m.walk(msg, skip_returned=True):
        ctype = m.content_type(part)
        if ctype == "message/delivery-status":
            status_parts.append(part)
        elif ctype.startswith(("text/", "multipart/")):
            try:
                if not part.is_multipart():  # incl. a multipart whose boundary did not match
                    text_parts.append(part)
            except Exception:
                continue
    notes: list[str] = []
    blocks: list[Message] = []
    well_formed = bool(status_parts)
    if status_parts:
        for part in status_parts:
            blocks.extend(_status_blocks(part))
    else:
        # A delivery-status body mislabelled as text/plain: recognise it by
        # its field names (both a recipient field and Action or Status).
        for part in text_parts:
            text = m.text_of(part)
            first = _FIELDS_RE.search(text)
            if first and re.search(r"^(?:action|status)\s*:", text, re.I | re.M):
                blocks.extend(_blocks(text[first.start():]))
                notes.append("delivery-status fields found in a text part (broken DSN)")
        if not blocks:
            return None
    records: list[RecipientRecord] = []
    for block in blocks:
        rec = _record(block)
        if rec is not None:
            records.append(rec)
        if len(records) >= MAX_RECIPIENTS:
            notes.append(f"only the first {MAX_RECIPIENTS} recipients read")
            break
    human = m.body_text(msg)
    if well_formed and not m.param(msg, "report-type"):
        notes.append("multipart/report without report-type (tolerated)")
    return Report(tuple(records), human[:4000], well_formed, tuple(notes))
