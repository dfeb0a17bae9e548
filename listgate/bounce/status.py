"""Delivery status → bounce class: the one place the class rules live.

Inputs are what a report says about one recipient: the DSN ``Action``
(RFC 3464 section 2.3.3), the enhanced status code (RFC 3463) and the
diagnostic text (``Diagnostic-Code`` or the SMTP reply quoted in a
non-standard bounce), plus the text around it where MTAs name the SMTP stage
(:mod:`.stage`). What each enhanced status code is about is a table in
:mod:`.codes` (the IANA registry).

The rules (:func:`classify_failure`), in order:

1. ``Action: delayed | delivered | relayed | expanded`` → that class (not a
   failure: ignored by scoring).
2. Status class 2 → ``delivered``.
3. Status class 4 (RFC 3463 "persistent transient failure"): a report that
   says it failed (``Action: failed``, or a bounce that says it gave up:
   "retry time exceeded", "giving up", "expired" ...) → ``soft``; a report
   that only warns ("will keep trying", "delayed") → ``delayed``.
4. Status class 5 (or a 5xx reply): is the *address* dead, was the *message*
   or our *host* refused, or is it a *temporary* condition reported as
   permanent? Policy refusals must never disable a member (the case
   Mailman 2.1.5's probes were invented for), a full mailbox must not remove
   one. In order (:func:`_permanent`):

   a. **Stage** (root cause 1): refused at the connection, greeting,
      EHLO/HELO or ``MAIL FROM`` (RFC 5321 section 3.3: no recipient named
      yet) → ``policy``, whatever the code and words.
   b. **Transient** (root cause 3): a code about a passing condition (X.2.2
      mailbox full, X.3.1 system full, X.4.7 expired, X.7.28 flood, ...;
      RFC 3463 section 3.3 says X.2.2 is transient even in a 5xx) →
      ``soft``.
   c. **Code about the recipient** (X.1.1, X.1.2, X.2.1, X.7.13 user
      account disabled, X.7.17 ...) → ``hard``; a mailbox-status code (X.2.x)
      with quota or rate-limit wording → ``soft``; an addressing code
      (X.1.x, X.4.4) whose text names a blocklist and no address problem is
      misused ("553 5.1.3 ...spamhaus...") → ``policy``.
   d. **Code about our message or sender** (X.6.x content, X.3.4/X.2.3
      size, X.1.7/X.1.8 our sender, X.7.20-26 DKIM/SPF/rDNS/DMARC, X.7.27
      our sender's null MX ...) → ``policy``.
   e. **Ambiguous code** (X.0.0, X.7.0, X.7.1, X.5.x, an unregistered
      detail, or only a 5xx reply) → the words decide: the address is bad
      ("user unknown", "no such user", "relay access denied", "account
      disabled" ...) → ``hard``; quota or rate-limit words → ``soft``;
      blocking words (blocklists, "listed", reputation, rDNS/PTR,
      SPF/DKIM/DMARC, TLS required, "Client host rejected" ...) →
      ``policy``; a refusal after ``DATA`` (about the message, RFC 5321
      section 4.1.1.4) → ``policy``; other policy words ("content",
      "policy", "too large") → ``policy``; a security/policy code (X.7.x)
      → ``policy``; else (e.g. a bare 5xx at ``RCPT``) → ``hard``.

No status at all and no SMTP code in the text: the stage (before RCPT →
``policy``) or unambiguous words decide, else the caller decides (a
detector's "permanent" set is ``hard``).
"""
from __future__ import annotations

import re

from .codes import lookup
from .stage import Stage, before_recipient, smtp_stage

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
    r"|not\s+listed\s+in|no\s+mailbox|not\s+a\s+valid\s+(?:user|mailbox|recipient)|user\s+not\s+found|no\s+longer\s+(?:active|valid|available)"
    r"|does\s*n[o']t\s+have\s+an?\s+(?:\S+\s+)?account|no\s+(?:such\s+)?account\s+(?:here|by\s+that\s+name)"
    r"|mailbox\s+(?:is\s+)?(?:inactive|deactivated)|account\s+(?:is\s+)?(?:inactive|locked|unavailable)",
    re.IGNORECASE,
)
# The message (or the list host sending it) was refused: weaker words, read
# only when the code is generic.
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
# Blocking vocabulary (root cause 2): our host, our domain or our message is
# refused -- blocklists and their names, reputation, reverse DNS, sender
# authentication (SPF, DKIM, DMARC), TLS required, and Postfix smtpd's labels
# for its client/HELO/sender restrictions (postconf(5): smtpd_client_restrictions
# ... "Client host rejected", "Helo command rejected", "Sender address rejected").
# Unmistakable enough to decide without a status code.
_BLOCK_WORDS = re.compile(
    r"spam|virus|malware|phish|black\s*list|block\s*list|deny\s*list|\bblocked\b|\bbanned\b"
    r"|dmarc|\bspf\b|sender\s+policy\s+framework|\bdkim\b|reputation|\brbl\b|dnsbl|\(BL\)"
    r"|spamhaus|spamcop|barracuda|sorbs|surbl|uribl|proofpoint|cloudmark|senderscore|abuseat|\bcbl\b"
    r"|(?<!not\s)\blisted\s+(?:at|on|in|by)\b|\bis\s+listed\b"
    r"|unsolicited|unwanted|reverse\s+dns|\bptr\b|\brdns\b|reverse\s+(?:lookup|resolution)"
    r"|(?:ip\s+)?name\s+lookup\s+failed|invalid\s+ip\s+for\s+sending|not\s+accepting\s+connections"
    r"|unauthenticated\s+(?:senders?|e-?mail|mail)|not\s+authenticated|authentication\s+(?:is\s+)?required"
    r"|without\s+authentication|smtp\s+authentication"
    r"|(?:tls|starttls|encryption)\s+(?:is\s+)?(?:required|needed|mandatory)|must\s+use\s+(?:tls|starttls)|issue\s+a\s+starttls"
    r"|client\s+host\s+(?:\[[^\]]*\]\s+)?(?:rejected|blocked|refused)|helo\s+command\s+rejected"
    r"|sender\s+address\s+rejected|sending\s+(?:ip|host|server|mta)|(?:your|the\s+sending|sender'?s?)\s+ip"
    r"|ip\s+(?:address\s+)?(?:\S+\s+)?(?:is\s+)?(?:blocked|listed|banned|blacklisted|not\s+allowed)"
    r"|access\s+denied\W+(?:banned|ip)|insecure\s+mail\s+relay|use\s+the\s+smtp\s+server\s+of\s+your\s+isp",
    re.IGNORECASE,
)
# The mailbox exists but is full (root cause 3): a condition that passes.
_QUOTA_WORDS = re.compile(
    r"mailbox\s+(?:is\s+)?full|mail\s*box\s+(?:\S+\s+)?(?:has\s+)?(?:exceeded|reached)|full\s+mailbox"
    r"|over\s*quota|quota\s+(?:exceeded|reached|full)|exceeded\s+(?:the\s+|its\s+|his\s+|her\s+)?(?:storage\s+|disk\s+)?quota"
    r"|disk\s+quota|insufficient\s+(?:disk\s+|system\s+)?(?:space|storage)|mailbox\s+size\s+limit"
    r"|exceeded\s+(?:the\s+)?storage\s+allocation|storage\s+(?:space\s+)?(?:limit|full)|out\s+of\s+(?:disk\s+)?space",
    re.IGNORECASE)
# Sending too fast for the receiver (root cause 3): comes right by waiting.
_RATE_WORDS = re.compile(
    r"at\s+a\s+rate\s+that\s+prevents|rate[\s-]+limit|too\s+many\s+(?:connections|concurrent|sessions|messages)"
    r"|(?:try|retry)\s+(?:again\s+)?later|throttl|unexpected\s+volume|sending\s+rate|frequency\s+limit",
    re.IGNORECASE)
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
                     report_is_final: bool | None = None,
                     context: str = "") -> tuple[str | None, str, str | None]:
    """One recipient's outcome → ``(bounce_class, reason, status)``.

    ``action``: normalised DSN action or '' (non-DSN bounce). ``status``:
    enhanced status code or None; when None (or generic) the diagnostic text
    is searched for one, then for an SMTP reply code; a Status with detail 0
    yields to a specific same-class code in the diagnostic. ``report_is_final``:
    for a non-DSN report, whether its text says delivery was given up (None:
    look at ``diagnostic``). ``context``: more of the report about this
    recipient (a DSN's human-readable part), read only for the SMTP stage
    when ``diagnostic`` does not name it. Returns class None when nothing
    decides it (no code anywhere): the caller falls back to its detector's verdict.
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
    stage = smtp_stage(diagnostic) or (smtp_stage(context) if context else None)
    if code_class is None:
        return _without_code(action, diagnostic, report_is_final, stage)
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
    bounce_class, reason = _permanent(status, shown, diagnostic, stage)
    return bounce_class, reason, status


def _without_code(action: str, diagnostic: str, report_is_final: bool | None,
                  stage: Stage | None) -> tuple[str | None, str, str | None]:
    """No status and no SMTP code: the stage or unambiguous wording decides, else None."""
    if before_recipient(stage) and report_is_final is not False:
        return "policy", f"no status code; refused at {stage.stage} ({stage.evidence!r}): our host or sender", None
    words = _ADDRESS_WORDS.search(diagnostic)
    if words:
        return "hard", f"no status code; the text says the address is bad ({words.group(0)!r})", None
    words = _TEMPORARY_WORDS.search(diagnostic)
    if words and report_is_final is not False and not _WARNING_WORDS.search(diagnostic):
        return "soft", f"no status code; the text says retries were given up ({words.group(0)!r})", None
    if _WARNING_WORDS.search(diagnostic) and report_is_final is not True:
        return "delayed", "no status code; the report is a delay warning", None
    words = _QUOTA_WORDS.search(diagnostic) or _RATE_WORDS.search(diagnostic)
    if words and report_is_final is not False:
        return "soft", f"no status code; the text says the condition is temporary ({words.group(0)!r})", None
    words = _BLOCK_WORDS.search(diagnostic)
    if words and action not in ("delayed",):
        return "policy", f"no status code; {words.group(0)!r} in text: the message was refused", None
    return None, "no status code", None


def _permanent(status: str | None, shown: str, diagnostic: str, stage: Stage | None) -> tuple[str, str]:
    """A permanent (5xx) failure → ``(class, reason)``; the order is the module docstring's 4a-e."""
    code = lookup(status)
    about = code.about if code else "ambiguous"
    meaning = f"{shown} ({code.meaning})" if code and about != "ambiguous" else shown
    subject = status.split(".")[1] if status else None
    if before_recipient(stage):
        return "policy", (f"{shown} at {stage.stage} ({stage.evidence!r}): refused before any recipient "
                          f"was named, so our host or sender, not the address")
    address_words = _ADDRESS_WORDS.search(diagnostic)
    transient_words = _QUOTA_WORDS.search(diagnostic) or _RATE_WORDS.search(diagnostic)
    block_words = _BLOCK_WORDS.search(diagnostic)
    if about == "transient":
        return "soft", f"{meaning}: a passing condition, even in a 5xx (RFC 3463 3.3)"
    if about == "recipient":
        if subject == "2" and transient_words and not address_words:
            return "soft", f"{shown} but {transient_words.group(0)!r} in text: a passing condition"
        if subject in ("1", "4") and block_words and not address_words:
            # e.g. "553 5.1.3 http://www.spamhaus.org/query/..." : a misused address code
            return "policy", f"{shown} but {block_words.group(0)!r} in text: the message was refused"
        return "hard", f"{meaning}: about the recipient's address"
    if about in ("message", "sender"):
        side = "our message" if about == "message" else "our sender or host"
        return "policy", f"{meaning}: about {side}, not the member's address"
    if address_words:
        return "hard", f"permanent {shown}, text says the address is bad ({address_words.group(0)!r})"
    if transient_words:
        return "soft", f"permanent {shown} but {transient_words.group(0)!r} in text: a passing condition"
    if block_words:
        return "policy", f"permanent {shown} + {block_words.group(0)!r} in text: our host or message was refused"
    if stage is not None and stage.stage == "data":
        return "policy", (f"permanent {shown} after DATA ({stage.evidence!r}): the message was refused, "
                          f"the recipient had been accepted")
    policy_words = _POLICY_WORDS.search(diagnostic)
    if policy_words:
        return "policy", f"permanent {shown} + {policy_words.group(0)!r} in text: the message was refused"
    if subject == "7":
        return "policy", f"{shown}: security/policy status (RFC 3463 3.8), the message was refused"
    where = f" at {stage.stage} ({stage.evidence!r})" if stage is not None else ""
    return "hard", f"permanent {shown}{where}"


def is_warning(text: str) -> bool:
    """Whether a report's text says it is only a delay warning."""
    return bool(_WARNING_WORDS.search(text or ""))


def gave_up(text: str) -> bool:
    """Whether a report's text says delivery was given up."""
    return bool(_GAVE_UP_WORDS.search(text or ""))
