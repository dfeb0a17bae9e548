"""Delivery status → bounce class: the one place the class rules live.

Inputs are what a report says about one recipient: the DSN ``Action``
(RFC 3464 section 2.3.3), the enhanced status code (RFC 3463) and the
diagnostic text (``Diagnostic-Code`` or the SMTP reply quoted in a
non-standard bounce).

The rules (:func:`classify_failure`), in order:

1. ``Action: delayed | delivered | relayed | expanded`` → that class (not a
   failure: ignored by scoring).
2. Status class 2 → ``delivered``.
3. Status class 4 (RFC 3463 "persistent transient failure"): a report that
   says it failed (``Action: failed``, or a bounce that says it gave up:
   "retry time exceeded", "giving up", "expired" ...) → ``soft``; a report
   that only warns ("will keep trying", "delayed") → ``delayed``.
4. Status class 5 (permanent): is the *address* dead, or was the *message*
   refused? Policy rejections (the list's mail refused for spam, virus,
   DMARC, blocklisting, content, size) must never disable a member — this is
   the case Mailman 2.1.5's probes were invented for. So:

   a. ``5.7.x`` (RFC 3463 section 3.8, "security or policy status") →
      ``policy`` — *unless* the diagnostic says the address itself is bad
      ("user unknown", "no such user", "does not exist", "relay access
      denied" ...), because some MTAs (Exchange, Postfix
      ``reject_unauth_destination``) send 5.7.1 for a recipient they do not
      know or serve: that address will never work → ``hard``.
   b. Status codes that name the message, not the mailbox → ``policy``:
      ``5.6.x`` (media/content, section 3.7), ``5.3.4`` (message too big for
      system), ``5.2.3`` (message length exceeds administrative limit),
      ``5.1.7``/``5.1.8`` (bad *sender* address: ours, not the member's).
   c. Other specific ``5.1.x``/``5.2.x`` (address and mailbox status) →
      ``hard``: the code itself says the mailbox is the problem — unless
      the text names a blocklist/spam/DMARC refusal and no address problem
      (a misused code: "553 5.1.3 ...spamhaus...") → ``policy``.
      ``5.1.0``/``5.2.0`` ("other") are generic, see d.
   d. Generic codes (``5.0.0``, ``5.1.0``, ``5.2.0``, ``5.5.x``, ``5.4.x``, ``5.3.x``, or only a
      5xx SMTP reply): address words in the text → ``hard``; policy words
      (spam, virus, blocklist, DMARC, reputation, RBL names, "content",
      "policy" ...) → ``policy``; otherwise ``hard``.

No status at all and no SMTP code in the text: the caller decides (a
detector's "permanent" set is ``hard``).
"""
from __future__ import annotations

import re

# RFC 3463 section 2: class "." subject "." detail; subject and detail are
# 1-3 digits. Guard against IP addresses and version numbers around it.
ENHANCED_RE = re.compile(r"(?<![\w.])([245])\.(\d{1,3})\.(\d{1,3})(?!\.?\d)")
# An SMTP reply code (RFC 5321 section 4.2) where a bounce quotes a reply:
# line start, or after "said:", "said", "host ...:", "reply:" and the like.
REPLY_RE = re.compile(
    r"(?:^|said:?|reply:?|response:?|error:?|replied:?|responsecode|[:\]<>)]|\(|\s-\s)\s*([245][0-5]\d)(?:[ \-,]|$)",
    re.IGNORECASE | re.MULTILINE,
)

FAILED_ACTIONS = ("failed", "failure", "fail", "error")   # "error": opensmtpd, not RFC 3464
IGNORED_ACTIONS = ("delayed", "delivered", "relayed", "expanded")

# The address itself is bad: the mailbox does not exist or is not served there.
_ADDRESS_WORDS = re.compile(
    r"user(?:name)?\s+(?:is\s+)?unknown|unknown\s+(?:user|recipient|address|mailbox|local[- ]part)"
    r"|no\s+such\s+(?:user|mailbox|recipient|address|account|person)|does\s*n[o']t\s+exist|not\s+exist"
    r"|recipient\s+(?:address\s+)?(?:unknown|not\s+found|invalid)|invalid\s+(?:recipient|mailbox|address|user)"
    r"|mailbox\s+(?:not\s+found|does|unknown|disabled|is\s+disabled)|account\s+(?:is\s+|has\s+been\s+)?(?:disabled|closed|deactivated|expired|suspended)"
    r"|relay(?:ing)?\s+(?:access\s+)?(?:denied|not\s+permitted|prohibited)|not\s+our\s+customer"
    r"|unrouteable\s+address|undeliverable\s+address|addressee\s+unknown|bad\s+destination\s+mailbox"
    r"|host\s+(?:\S+\s+)?(?:not\s+found|unknown)|unknown\s+host|no\s+such\s+(?:domain|host)|domain\s+(?:\S+\s+)?not\s+found"
    r"|not\s+listed\s+in|no\s+mailbox|not\s+a\s+valid\s+(?:user|mailbox|recipient)|user\s+not\s+found|no\s+longer\s+(?:active|valid|available)",
    re.IGNORECASE,
)
# The message (or the list host sending it) was refused.
_POLICY_WORDS = re.compile(
    r"spam|junk|virus|malware|phish|black\s*list|block\s*list|blocked|dmarc|\bspf\b|dkim|reputation"
    r"|\brbl\b|dnsbl|spamhaus|spamcop|barracuda|sorbs|surbl|uribl|\bpolicy\b|policies|content"
    r"|unsolicited|unwanted|\bbulk\b|prohibited|not\s+accepted\s+for\s+policy|sender\s+(?:address\s+)?(?:rejected|denied|blocked)"
    r"|reverse\s+dns|\bptr\b|\brdns\b|(?:message|mail)\s+(?:rejected|refused)|rejected\s+(?:due|for|because)"
    r"|not\s+(?:permitted|allowed)\s+to\s+(?:send|connect|relay)|(?:host|network|ip|client)\s+(?:\S+\s+)?not\s+(?:permitted|allowed)"
    r"|mismatch|protocol\s+violation|sender\s+(?:\S+\s+)?rejected"
    r"|too\s+(?:big|large)|size\s+limit|exceeds?\s+(?:the\s+)?(?:maximum\s+)?(?:message\s+)?size",
    re.IGNORECASE,
)
# Without a status code only unmistakable words may call it policy.
_STRONG_POLICY_WORDS = re.compile(
    r"spam|virus|malware|phish|black\s*list|block\s*list|dmarc|reputation|\brbl\b|dnsbl|spamhaus|spamcop"
    r"|barracuda|sorbs|unsolicited|unwanted|reverse\s+dns|\bptr\b",
    re.IGNORECASE,
)
# The mailbox exists but is full: a temporary condition that was given up on.
_QUOTA_WORDS = re.compile(r"mailbox\s+(?:is\s+)?full|over\s*quota|quota\s+exceeded|exceeded\s+(?:the\s+|its\s+)?(?:storage\s+)?quota"
                          r"|insufficient\s+(?:disk\s+)?space|mailbox\s+size\s+limit", re.IGNORECASE)
# A non-DSN report with a 4.x.x status either gave up or only warns.
_GAVE_UP_WORDS = re.compile(
    r"retry\s+time(?:out)?\s+(?:was\s+)?exceeded|giving\s+up|gave\s+up|given\s+up|expired|too\s+long"
    r"|could\s+not\s+be\s+delivered|couldn't\s+be\s+delivered|undeliverable|permanent|delivery\s+failed"
    r"|has\s+been\s+returned|returned\s+to\s+(?:the\s+)?sender|deleted\s+from\s+(?:the\s+)?queue|failed",
    re.IGNORECASE,
)
# A failure that was temporary until the MTA stopped retrying (no code needed).
_TEMPORARY_WORDS = re.compile(
    r"retry\s+time(?:out)?\s+(?:was\s+)?(?:exceeded|not\s+reached)|retry\s+timeout|giving\s+up|gave\s+up"
    r"|too\s+long\s+in\s+(?:the\s+)?queue|(?:message|delivery)\s+(?:has\s+)?expired|expired\s+in\s+queue"
    r"|could\s+not\s+be\s+delivered\s+(?:within|for|in)\s+\d|delivery\s+time\s+expired|envelope\s+expired|time[ds]?\s*out",
    re.IGNORECASE,
)
_WARNING_WORDS = re.compile(
    r"warning\s+message\s+only|will\s+(?:continue\s+to\s+|keep\s+)?(?:try|trying|retry)|not\s+yet\s+been\s+delivered"
    r"|delivery\s+(?:has\s+been\s+)?delayed|delayed\s+mail|delayed\s+for\s+more\s+than|only\s+a\s+temporary\s+failure|do\s+not\s+need\s+to\s+resend|still\s+trying|will\s+be\s+retried",
    re.IGNORECASE,
)


def find_status(text: str, classes: str = "245") -> str | None:
    """First RFC 3463 enhanced status code in ``text`` ('5.1.1'), or None.

    ``classes``: the status classes to accept (free text looks only for
    failures, "45": a "2.0.13" there is a version number, not a success).
    A specific code wins over a generic ``X.0.0`` found earlier.
    """
    generic = None
    for m in ENHANCED_RE.finditer(text or ""):
        if m.group(1) not in classes:
            continue
        code = ".".join(m.groups())
        if m.group(2) == "0" and m.group(3) == "0":
            generic = generic or code
            continue
        return code
    return generic


def reply_status(code: int, text: str) -> str:
    """The RFC 3463 status of one SMTP reply (``code``, ``text``): the enhanced code
    that starts the text (RFC 2034 section 3) when its class matches the reply
    code's, else ``X.0.0`` from the reply code."""
    m = ENHANCED_RE.match((text or "").lstrip())
    if m and m.group(1) == str(code // 100):
        return ".".join(m.groups())
    return f"{code // 100}.0.0"


def find_reply_code(text: str, classes: str = "245") -> str | None:
    """First SMTP reply code (RFC 5321 section 4.2.1) of ``classes`` quoted in ``text``, or None.

    Bounces quote whole SMTP transcripts; looking for failures ("45") skips
    the 220 greeting and 250 replies before the one that failed.
    """
    for m in REPLY_RE.finditer(text or ""):
        if m.group(1)[0] in classes:
            return m.group(1)
    return None


def normalize_status(value: str) -> str | None:
    """A DSN ``Status`` field value → '5.1.1' (comments and junk dropped), or None."""
    return find_status(value or "")


def normalize_action(value: str) -> str:
    """A DSN ``Action`` value → its first word, lower case ('' if none).

    Some MTAs add comments ("failed (bad address)"); RFC 3464 section 2.3.3.
    """
    words = re.findall(r"[a-z]+", (value or "").lower())
    return words[0] if words else ""


def classify_failure(action: str, status: str | None, diagnostic: str, *,
                     report_is_final: bool | None = None) -> tuple[str | None, str, str | None]:
    """One recipient's outcome → ``(bounce_class, reason, status)``.

    ``action``: normalised DSN action or '' (non-DSN bounce). ``status``:
    enhanced status code or None; when None (or generic) the diagnostic text
    is searched for one, then for an SMTP reply code; a Status with detail 0
    yields to a specific same-class code in the diagnostic. ``report_is_final``:
    for a non-DSN report, whether its text says delivery was given up (None:
    look at ``diagnostic``). Returns class None when nothing decides it (no
    code anywhere): the caller falls back to its detector's verdict.
    """
    diagnostic = diagnostic or ""
    if action in IGNORED_ACTIONS:
        return action, f"Action: {action}", status
    found = find_status(diagnostic, "45")
    # A Status with detail 0 ("other or undefined", RFC 3463 section 3) yields
    # to a specific code of the same class quoted in the diagnostic: the
    # remote server's 5.7.1 says more than the reporting MTA's 5.1.0.
    if status is None or (found and status.endswith(".0") and not found.endswith(".0")
                          and found[0] == status[0]):
        status = found or status
    code_class = status[0] if status else None
    reply = None
    if code_class is None:
        reply = find_reply_code(diagnostic, "45")
        code_class = reply[0] if reply else None
    shown = status or (f"SMTP {reply}" if reply else "")
    if code_class is None:
        return _without_code(action, diagnostic, report_is_final)
    if code_class == "2":
        return "delivered", f"{shown}: success status", status
    if code_class == "4":
        if action in FAILED_ACTIONS:
            return "soft", f"Action: {action} with temporary {shown}: retries given up", status
        final = report_is_final
        if final is None:
            final = bool(_GAVE_UP_WORDS.search(diagnostic)) and not _WARNING_WORDS.search(diagnostic)
        if final:
            return "soft", f"temporary {shown}, report says delivery was given up", status
        return "delayed", f"temporary {shown}, report is a warning", status
    return _permanent(status, shown, diagnostic)


def _without_code(action: str, diagnostic: str, report_is_final: bool | None) -> tuple[str | None, str, str | None]:
    """No status and no SMTP code: only unambiguous wording decides, else None."""
    words = _ADDRESS_WORDS.search(diagnostic)
    if words:
        return "hard", f"no status code; the text says the address is bad ({words.group(0)!r})", None
    words = _TEMPORARY_WORDS.search(diagnostic)
    if words and report_is_final is not False and not _WARNING_WORDS.search(diagnostic):
        return "soft", f"no status code; the text says retries were given up ({words.group(0)!r})", None
    if _WARNING_WORDS.search(diagnostic) and report_is_final is not True:
        return "delayed", "no status code; the report is a delay warning", None
    words = _QUOTA_WORDS.search(diagnostic)
    if words and report_is_final is not False:
        return "soft", f"no status code; the text says the mailbox is full ({words.group(0)!r})", None
    words = _STRONG_POLICY_WORDS.search(diagnostic)
    if words and action not in ("delayed",):
        return "policy", f"no status code; {words.group(0)!r} in text: the message was refused", None
    return None, "no status code", None


def _permanent(status: str | None, shown: str, diagnostic: str) -> tuple[str, str, str | None]:
    subject, detail = None, None
    if status:
        _, subject, detail = status.split(".")
    address_words = _ADDRESS_WORDS.search(diagnostic)
    if subject == "7":
        if address_words:
            return "hard", f"{shown} but the text says the address is bad ({address_words.group(0)!r})", status
        return "policy", f"{shown}: security/policy status (RFC 3463 3.8), the message was refused", status
    if subject == "6" or (subject, detail) in (("3", "4"), ("2", "3")):
        return "policy", f"{shown}: the message (content/size) was refused, not the mailbox", status
    if (subject, detail) in (("1", "7"), ("1", "8")):
        return "policy", f"{shown}: our sender address was refused, not the member's", status
    strong = _STRONG_POLICY_WORDS.search(diagnostic)
    if subject in ("1", "2") and detail != "0":
        if strong and not address_words:
            # e.g. "553 5.1.3 http://www.spamhaus.org/query/..." : a misused address code
            return "policy", f"{shown} but {strong.group(0)!r} in text: the message was refused", status
        return "hard", f"{shown}: permanent address/mailbox status", status
    if address_words:
        return "hard", f"permanent {shown}, text says the address is bad ({address_words.group(0)!r})", status
    policy_words = _POLICY_WORDS.search(diagnostic)
    if policy_words:
        return "policy", f"permanent {shown} + {policy_words.group(0)!r} in text: the message was refused", status
    return "hard", f"permanent {shown}", status


def is_warning(text: str) -> bool:
    """Whether a report's text says it is only a delay warning."""
    return bool(_WARNING_WORDS.search(text or ""))


def gave_up(text: str) -> bool:
    """Whether a report's text says delivery was given up."""
    return bool(_GAVE_UP_WORDS.search(text or ""))
