"""Automatic responses (RFC 3834): vacation and out-of-office replies.

They are never bounces, even when they reach a VERP address: the member's
address works. Signals, strongest first:

* ``Auto-Submitted: auto-replied`` (RFC 3834 section 5.1/5.2); any other value
  but ``no`` (``auto-generated``, ``auto-notified``) also marks a machine
  response — the caller checks for bounces first, since MTAs put
  ``auto-generated``/``auto-replied`` on bounces too;
* de-facto headers: ``X-Autoreply``, ``X-Autorespond``, ``X-Autoresponder``,
  ``X-Auto-Reply``, ``X-Vacation``, ``Precedence: auto_reply``,
  ``X-Precedence: auto_reply``, Exchange's ``X-MS-Exchange-Inbox-Rules-Loop``
  and ``X-Auto-Response-Suppress`` together with an auto-reply subject;
* an auto-reply subject ("Automatic reply:", "Auto:", "Out of Office",
  "Autoreply", "Vacation", "Abwesenheitsnotiz", "Réponse automatique",
  "Automatyczna odpowiedź", "Thank you for your e-mail" ...);
* ``Precedence: bulk`` or ``junk`` on mail that is not a bounce: responders
  mark their answers so (RFC 3834 section 3.1.8 asks them not to answer
  such mail, and they label their own the same way); a person's reply does
  not carry it.
"""
from __future__ import annotations

import re
from email.message import Message

from . import message as m

_FLAG_HEADERS = ("X-Autoreply", "X-Autorespond", "X-Autoresponder", "X-Auto-Reply", "X-Vacation")
_SUBJECT_RE = re.compile(
    r"^\s*(?:automatic\s+reply|auto(?:matic)?[\s-]*(?:reply|response|antwort)|autoreply|auto:|out\s+of\s+(?:the\s+)?office"
    r"|vacation|on\s+vacation|away\s+from|abwesen|r[ée]ponse\s+automatique|respuesta\s+autom[áa]tica"
    r"|risposta\s+automatica|resposta\s+autom[áa]tica|automatisch|absence|ausencia|fuera\s+de\s+la\s+oficina"
    r"|i\s+am\s+(?:out|away)|i'm\s+(?:out|away)"
    r"|\[?automatyczna\s+odpowied|automatisch\s+antwoord|automatiskt\s+svar|automaattinen\s+vastaus"
    r"|thank\s+you\s+for\s+your\s+(?:e-?mail|message))",
    re.IGNORECASE,
)


def autoreply_reason(msg: Message) -> str | None:
    """Why ``msg`` is an automatic response, or None if nothing says so."""
    auto = m.header(msg, "Auto-Submitted").lower()
    if auto.startswith("auto-replied"):
        return "Auto-Submitted: auto-replied (RFC 3834)"
    for name in _FLAG_HEADERS:
        if m.header(msg, name) or m.headers(msg, name):
            return f"{name} header"
    for name in ("Precedence", "X-Precedence"):
        if m.header(msg, name).lower().replace("-", "_") == "auto_reply":
            return f"{name}: auto_reply"
    subject = m.decoded_header(msg, "Subject")
    if _SUBJECT_RE.search(subject):
        return f"auto-reply subject {subject[:60]!r}"
    if auto and not auto.startswith("no"):
        return f"Auto-Submitted: {auto.split(';')[0]} (RFC 3834: a machine response)"
    precedence = m.header(msg, "Precedence").lower()
    if precedence in ("bulk", "junk"):
        return f"Precedence: {precedence} (a responder's own mark, RFC 3834 section 3.1.8)"
    if m.header(msg, "X-MS-Exchange-Inbox-Rules-Loop"):
        return "X-MS-Exchange-Inbox-Rules-Loop (an Exchange inbox rule answered)"
    return None
