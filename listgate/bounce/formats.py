"""Our detectors for report formats flufl.bounce has none for (beside :mod:`.detectors`).

Each recogniser is one mechanism, read from the message alone; none raises.

Structured: **Amazon SES notifications** (:func:`find_ses_notification`).
SES publishes bounce, complaint and delivery notifications as a JSON object
(Amazon SES Developer Guide, "Amazon SNS notification contents"): top level
``notificationType`` (``eventType`` with event publishing) ``Bounce`` /
``Complaint`` / ``Delivery`` / ``DeliveryDelay``; ``bounce.bounceType``
``Permanent`` / ``Transient`` / ``Undetermined`` with ``bounceSubType``
and ``bouncedRecipients[]`` (``emailAddress``, ``action``, ``status``,
``diagnosticCode``); ``complaint.complainedRecipients[]`` with the
``complaintFeedbackType`` of the ISP's ARF report. By e-mail it comes as the
body of an SNS "email" subscription, or wrapped in the SNS envelope of an
"email-json" subscription (``Type: Notification``, the SES object as the
``Message`` string).

Text: bounces that name the failed address in prose, one table row per MTA
family (:data:`_PROSE`): DragonFly Mail Agent (dma, "There was an error
delivering your mail to <a>"), Openwave/InterMail "Mail System Error -
Returned Mail" notices (au/KDDI ezweb, DTI: "Each of the following
recipients was rejected by a remote mail server", "Recipient: <a>"),
Japanese carriers' notices (au one net's "メールエラー通知"; the 'jpcarrier'
row reads notices from the KDDI/au, NTT DoCoMo and SoftBank domains). Their class comes from the text next to the address
(:mod:`.status`); when that text has no code and no English words the
carriers' own wording decides (:func:`carrier_verdict`).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from email.message import Message

from . import message as m
from .detectors import DetectorResult
from .reports import is_complaint
from .status import classify_failure

# -- Amazon SES ---------------------------------------------------------------

_SES_KEY_RE = re.compile(r'"(?:notificationType|eventType|Type)"\s*:')
# bounceSubType → class when neither status nor diagnostic decides (SES guide, "Bounce types").
_SES_SUBTYPES = {
    "messagetoolarge": "policy", "contentrejected": "policy", "attachmentrejected": "policy",
    "mailboxfull": "soft",
}


@dataclass(frozen=True)
class SesNotification:
    kind: str                 # classification kind: 'non-standard', 'arf' (complaint) or 'report'
    is_bounce: bool
    failures: tuple[tuple[str | None, str, str | None, str, str], ...]  # address, class, status, diagnostic, reason
    note: str


def _json_objects(text: str):
    decoder = json.JSONDecoder()
    for match in _SES_KEY_RE.finditer(text):
        start = text.rfind("{", 0, match.start())
        while start >= 0:
            try:
                value, _ = decoder.raw_decode(text, start)
            except ValueError:
                start = text.rfind("{", 0, start)
                continue
            if isinstance(value, dict):
                yield value
            break


# Sendmail-style folding of lines over its limit ("!" + CRLF + space), which
# long one-line JSON bodies meet on the way; JSON never has a bare line break
# inside a string, so removing line breaks (and such marks) keeps it intact.
_FOLD_RE = re.compile(r"!?\r?\n[ \t]?")


def _ses_object(msg: Message) -> dict | None:
    text = m.body_text(msg)
    if "{" not in text or not _SES_KEY_RE.search(text):
        return None
    for value in list(_json_objects(text)) or _json_objects(_FOLD_RE.sub("", text)):
        if value.get("Type") == "Notification" and isinstance(value.get("Message"), str):
            try:
                value = json.loads(value["Message"])   # SNS "email-json": the SES object as a string
            except ValueError:
                continue
        # SES always sends the "mail" object (the original message's details).
        if isinstance(value, dict) and (value.get("notificationType") or value.get("eventType")) \
                and isinstance(value.get("mail"), dict):
            return value
    return None


def _recipients(block: dict, key: str) -> list[dict]:
    items = block.get(key) if isinstance(block, dict) else None
    return [r for r in items if isinstance(r, dict)] if isinstance(items, list) else []


def _ses_bounce_class(bounce_type: str, sub_type: str, action: str, status, diagnostic: str):
    cls, reason, status = classify_failure(action or "failed", status if isinstance(status, str) else None,
                                           diagnostic)
    if cls in (None, "unknown", "delayed", "delivered"):
        if bounce_type == "undetermined":
            return "unknown", "SES bounceType Undetermined", status
        cls = _SES_SUBTYPES.get(sub_type) or ("soft" if bounce_type == "transient" else "hard")
        reason = f"SES bounceType {bounce_type}, bounceSubType {sub_type or '-'}"
    elif bounce_type == "transient" and cls == "hard":
        # SES calls it transient: the address may work later (a retry was given up).
        cls, reason = "soft", f"SES bounceType Transient ({reason})"
    return cls, reason, status


def find_ses_notification(msg: Message) -> SesNotification | None:
    """An Amazon SES notification in ``msg`` (module docstring), or None."""
    obj = _ses_object(msg)
    if obj is None:
        return None
    kind = str(obj.get("notificationType") or obj.get("eventType"))
    note = f"Amazon SES {kind} notification (JSON)"
    if kind == "Bounce":
        bounce = obj.get("bounce") if isinstance(obj.get("bounce"), dict) else {}
        bounce_type = str(bounce.get("bounceType") or "").lower()
        sub_type = str(bounce.get("bounceSubType") or "").lower()
        failures = []
        for r in _recipients(bounce, "bouncedRecipients"):
            diagnostic = str(r.get("diagnosticCode") or "")
            cls, reason, status = _ses_bounce_class(bounce_type, sub_type, str(r.get("action") or "").lower(),
                                                    r.get("status"), diagnostic)
            failures.append((m.address_of(str(r.get("emailAddress") or "")), cls, status, diagnostic,
                             f"{reason} (Amazon SES notification)"))
        return SesNotification("non-standard", True, tuple(failures) or ((None, "unknown", None, "", note),), note)
    if kind == "Complaint":
        complaint = obj.get("complaint") if isinstance(obj.get("complaint"), dict) else {}
        feedback_type = str(complaint.get("complaintFeedbackType") or "abuse").lower()
        cls = "complaint" if is_complaint(feedback_type) else "report"
        addresses = [m.address_of(str(r.get("emailAddress") or ""))
                     for r in _recipients(complaint, "complainedRecipients")] or [None]
        reason = f"Amazon SES complaint notification, complaintFeedbackType {feedback_type}"
        return SesNotification("arf" if cls == "complaint" else "report", cls == "complaint",
                               tuple((a, cls, None, feedback_type, reason) for a in addresses), note)
    if kind in ("Delivery", "DeliveryDelay"):
        block = obj.get("delivery") or obj.get("deliveryDelay") or {}
        cls = "delivered" if kind == "Delivery" else "delayed"
        addresses = [m.address_of(str(a)) for a in (block.get("recipients") or [])
                     if isinstance(a, str)] if isinstance(block, dict) else []
        addresses += [m.address_of(str(r.get("emailAddress") or "")) for r in _recipients(block, "delayedRecipients")]
        return SesNotification("non-standard", True,
                               tuple((a, cls, None, "", note) for a in addresses if a) or ((None, cls, None, "", note),),
                               note)
    return SesNotification("not-a-bounce", False, (), note + ": not about a delivery failure")


# -- text bounces naming the address in prose --------------------------------

_ADDR = r"<?\s*([^\s<>\"()\[\],;:@]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,})\s*>?"
# name, signature (the format is this MTA's), address pattern(s)
_PROSE = (
    ("dma", re.compile(r"This\s+is\s+the\s+DragonFly\s+Mail\s+Agent", re.I),
     re.compile(r"error\s+delivering\s+your\s+mail\s+to\s+" + _ADDR, re.I)),
    ("intermail", re.compile(r"following\s+recipients\s+(?:was|were)\s+rejected\s+by\s+a\s+remote\s+mail\s+server"
                             r"|following\s+recipients\s+did\s+not\s+receive\s+this\s+message", re.I),
     re.compile(r"^\s*(?:Recipient:\s*)?<\s*([^\s<>\"()\[\],;:@]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,})\s*>\s*$", re.I | re.M)),
    ("jpcarrier", re.compile(r"メールエラー通知|送信できませんでした|配信できませんでした|お届けできませんでした"), None),
)
# Carrier and ISP domains whose notices the 'jpcarrier' row reads (KDDI/au, NTT DoCoMo, SoftBank).
_JP_CARRIER_DOMAINS = re.compile(r"(?:^|[.@])(?:ezweb\.ne\.jp|au\.com|auone-net\.jp|dion\.ne\.jp|docomo\.ne\.jp"
                                 r"|softbank\.ne\.jp|softbank\.jp|vodafone\.ne\.jp|disney\.ne\.jp)>?$", re.I)

# The carriers' wording families, most specific first (no status code in these
# notices). The generic "rejected by a remote mail server" sentence (and its
# Japanese rendering) comes last: it heads notices whose reason line says more.
_VERDICTS = (
    ("soft", re.compile(r"メールボックスが(?:一杯|いっぱい|満杯)|容量(?:が)?(?:オーバー|超過|一杯)|over\s*quota", re.I),
     "the mailbox is full"),
    ("hard", re.compile(r"見つかりません|見つからない|存在しません|存在しない|宛先不明|登録されていません", re.I),
     "the address is unknown"),
    ("soft", re.compile(r"not\s+delivered\s+within\s+\d+\s+days|remote\s+host\s+is\s+not\s+responding", re.I),
     "delivery timed out"),
    ("policy", re.compile(r"rejected\s+by\s+a\s+remote\s+mail\s+server|メールサーバに拒否されました", re.I),
     "refused by the recipient's server without a reason (a carrier's receive filter)"),
)


def carrier_verdict(text: str) -> tuple[str, str] | None:
    """(class, reason) from a Japanese carrier notice's wording, or None."""
    for cls, pattern, why in _VERDICTS:
        found = pattern.search(text or "")
        if found:
            return cls, f"carrier notice wording {found.group(0)!r}: {why}"
    return None


def prose_verdict(text: str) -> tuple[str, str] | None:
    """:func:`carrier_verdict` of ``text`` if one of our prose formats wrote it, else None.

    For a bounce whose address VERP already gave: the class still comes from its text.
    """
    if any(signature.search(text or "") for _, signature, _ in _PROSE):
        return carrier_verdict(text)
    return None


def _sender_domain_is_carrier(msg: Message) -> bool:
    values = m.addresses_in(msg, "From") + [m.header(msg, "Message-ID")]
    return any(_JP_CARRIER_DOMAINS.search(v.strip().rstrip(">")) for v in values if v)


def run_own_detectors(msg: Message) -> DetectorResult | None:
    """The first of our prose detectors (:data:`_PROSE`) that finds an address, or None.

    Never raises. ``DetectorResult.permanent`` holds the addresses;
    ``verdict`` the carriers' wording verdict when there is one.
    """
    try:
        text = m.without_returned_text(m.body_text(msg))
    except Exception:
        return None
    for name, signature, address_re in _PROSE:
        if not signature.search(text):
            continue
        if name == "jpcarrier":
            if not _sender_domain_is_carrier(msg):
                continue
            found = re.findall(_ADDR, text)
            if not found:
                original = m.returned_message(msg)
                found = m.addresses_in(original, "To") if original is not None else []
        else:
            found = address_re.findall(text)
        addresses = tuple(dict.fromkeys(a for a in (m.address_of(x) for x in found) if a))
        if addresses:
            return DetectorResult(name, (), tuple(sorted(addresses)), carrier_verdict(text))
    return None
