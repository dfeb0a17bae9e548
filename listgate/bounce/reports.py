"""Reports about the site's own mail, not about a member: they go to the postmaster.

Three mechanisms, each read from the message alone (never raises):

* **Feedback types** (RFC 5965 section 3.1, RFC 6591, RFC 6650): only
  ``abuse``, ``fraud`` and ``virus`` reports say a recipient complained
  about our mail (:data:`COMPLAINT_FEEDBACK_TYPES`). ``auth-failure`` (a
  DMARC/DKIM/SPF failure report, RFC 6591 / RFC 7489 section 7.3),
  ``not-spam`` and ``other`` describe our authentication or the reporter's
  filters: never a complaint, never scored.
* **Aggregate reports** (:func:`find_site_report`): SMTP TLS reports
  (RFC 8460 section 5.3: ``multipart/report; report-type="tlsrpt"``, an
  ``application/tlsrpt+json`` or ``application/tlsrpt+gzip`` part, the
  ``TLS-Report-Domain`` / ``TLS-Report-Submitter`` header fields) and DMARC
  aggregate reports (RFC 7489 section 7.2.1.1: subject ``Report Domain: D
  Submitter: S Report-ID: ID`` with an XML report attached as
  ``application/gzip``, ``application/zip`` or ``text/xml``). Mail
  servers send them to the addresses a domain publishes (``rua=``), but
  they also reach list addresses: the bounce address (our envelope sender)
  and ``-owner``.
* **Transport security failures** (:func:`transport_problem`): our own MTA
  gave up because TLS could not be had or verified as our policy requires
  (Postfix ``smtp_tls_security_level`` encrypt/verify/dane and its MTA-STS
  policy plugins, RFC 8461; DANE, RFC 7672; Exim's ``hosts_require_tls`` /
  DANE; Exchange Online's DANE and MTA-STS codes 5.7.321-5.7.325). The
  member's address is not in question: class ``site`` (weight 0).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from email.message import Message

from . import message as m

# RFC 5965 section 7.3 registry: the types that mean "a recipient complained".
COMPLAINT_FEEDBACK_TYPES = ("abuse", "fraud", "virus")


def is_complaint(feedback_type: str) -> bool:
    """Whether an RFC 5965 ``Feedback-Type`` (lower case) is a member's complaint."""
    return (feedback_type or "abuse").lower() in COMPLAINT_FEEDBACK_TYPES


@dataclass(frozen=True)
class SiteReport:
    kind: str        # 'tlsrpt' (RFC 8460) or 'dmarc-aggregate' (RFC 7489)
    domain: str      # the reported policy domain ('' if not said)
    reason: str


# RFC 7489 section 7.2.1.1 and RFC 8460 section 5.3 share this subject form.
_REPORT_SUBJECT_RE = re.compile(r"^\s*(?:\[[^\]]*\]\s*)?Report\s+Domain:\s*(\S+)\s+Submitter:\s*\S+", re.I)
_TLSRPT_TYPES = ("application/tlsrpt+json", "application/tlsrpt+gzip")
_DMARC_TYPES = ("application/gzip", "application/x-gzip", "application/zip", "application/x-zip-compressed",
                "text/xml", "application/xml")


def find_site_report(msg: Message) -> SiteReport | None:
    """An RFC 8460 TLS report or RFC 7489 aggregate report in ``msg``, or None."""
    subject = m.decoded_header(msg, "Subject")
    subject_match = _REPORT_SUBJECT_RE.match(subject)
    domain = m.header(msg, "TLS-Report-Domain") or (subject_match.group(1) if subject_match else "")
    is_tlsrpt = m.content_type(msg) == "multipart/report" and m.param(msg, "report-type") == "tlsrpt"
    if is_tlsrpt or m.header(msg, "TLS-Report-Submitter"):
        return SiteReport("tlsrpt", domain, "SMTP TLS report (RFC 8460)")
    parts = [(m.content_type(p), m.param(p, "filename", "content-disposition") or m.param(p, "name"))
             for p in m.walk(msg, skip_returned=True)]
    if any(ctype in _TLSRPT_TYPES for ctype, _ in parts):
        return SiteReport("tlsrpt", domain, "SMTP TLS report (RFC 8460): an application/tlsrpt part")
    if subject_match and any(ctype in _DMARC_TYPES or name.endswith((".xml", ".xml.gz", ".zip"))
                             for ctype, name in parts):
        return SiteReport("dmarc-aggregate", domain, "DMARC aggregate report (RFC 7489 section 7.2)")
    return None


# Our MTA could not get (or verify) the TLS its policy requires. Each
# alternative names one MTA family's wording or a registered result type
# (RFC 8460 section 4.3, IANA "STARTTLS Validation Result Types").
_TRANSPORT_RE = re.compile(
    # Postfix smtp(8): TLS levels encrypt, verify, secure, dane
    r"TLS\s+is\s+required,\s+but\s+(?:was\s+not\s+offered|host\s+\S+\s+refused\s+to\s+start\s+TLS|our\s+TLS\s+engine)"
    r"|Server\s+certificate\s+not\s+(?:verified|trusted)|server\s+certificate\s+verification\s+failed"
    r"|MTA-STS\s+policy|\bMTA-STS\b.{0,40}\b(?:fail|invalid|mismatch|not\s+match)"
    r"|no\s+(?:valid|usable)\s+TLSA\s+records?|TLSA\s+(?:record|lookup)s?\s+(?:\S+\s+)?(?:fail|error|invalid|mismatch)"
    r"|\bDANE\b.{0,60}\b(?:fail|error|invalid|required|validation)|dane[- ]required|tlsa-invalid|dnssec-invalid"
    # Exim smtp transport: hosts_require_tls, hosts_require_dane
    r"|TLS\s+session(?:\s+failure|:\s*\(SSL_connect\))|a\s+TLS\s+session\s+is\s+required"
    r"|TLS\s+(?:negotiation|handshake)\s+failed|STARTTLS\s+(?:negotiation\s+)?failed"
    # Exchange Online outbound SMTP DANE / MTA-STS (5.7.321 .. 5.7.325) and RFC 8460 result types
    r"|starttls-not-supported|certificate-host-mismatch|certificate-expired|sts-policy-(?:invalid|fetch-error)"
    r"|\b5\.7\.32[1-5]\b",
    re.IGNORECASE,
)


def transport_problem(text: str) -> str | None:
    """The TLS / MTA-STS / DANE failure wording in ``text`` (the words), or None."""
    found = _TRANSPORT_RE.search(text or "")
    return " ".join(found.group(0).split()) if found else None


def postmaster_address(site) -> str:
    """The site's ``postmaster`` key, else ``postmaster@HOSTNAME`` (RFC 5321 section 4.5.1)."""
    return site.conf.get("postmaster") or f"postmaster@{site.conf.hostname}"


def for_postmaster(raw: bytes) -> str | None:
    """Why ``raw`` (mail to a list's ``-owner`` address) is a report for the postmaster, or None.

    A non-complaint feedback report, an RFC 8460 TLS report or an RFC 7489
    aggregate report; never raises.
    """
    from .arf import find_feedback_report   # arf imports this module

    try:
        msg = m.parse(raw)
        site_report = find_site_report(msg)
        if site_report is not None:
            return site_report.reason
        arf = find_feedback_report(msg)
    except Exception:
        return None
    if arf is not None and not arf.is_complaint:
        return f"feedback report (RFC 5965), Feedback-Type: {arf.feedback_type}: not a complaint"
    return None
