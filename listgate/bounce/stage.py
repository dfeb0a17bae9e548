"""The SMTP stage a remote server refused at, read from a bounce's wording.

RFC 5321 section 3.3 orders a transaction: connection and greeting, EHLO/HELO,
``MAIL FROM`` (our envelope sender), ``RCPT TO`` (one per recipient), ``DATA``
(the message). A refusal before ``RCPT TO`` cannot be about the member's
address, none was named yet: it is about our host or our sender. A refusal
of ``RCPT TO`` is about that recipient; one after ``DATA`` is about the
message (RFC 5321 section 4.1.1.4: the reply covers the whole message).

MTAs say the stage in their own words; the patterns here are each MTA's
fixed phrase:

* Postfix (``smtp(8)``, bounce text): "... said: 550 ... (in reply to MAIL FROM
  command)", "(in reply to RCPT TO command)", "(in reply to end of DATA
  command)", "(in reply to DATA command)", "(in reply to HELO/EHLO command)";
  "refused to talk to me: 554 ..." and "while receiving the initial server
  greeting" for the greeting.
* Exim (``spec.txt``, chapter "SMTP error messages"): "SMTP error from remote
  mail server after MAIL FROM:<...>:", "after RCPT TO:<...>:", "after end of
  data:", "after initial connection:", "after EHLO ...:", "after pipelined
  ...:"; older versions say "remote mailer".
* Sendmail (transcript of session): "... while talking to host.:" then
  ">>> MAIL From:<...>" / ">>> RCPT To:<...>" / ">>> DATA" and the "<<< 5xx"
  reply. With PIPELINING Sendmail shows only the last command sent
  (">>> DATA") before the replies of the recipients: a "503 ... RCPT" /
  "no valid recipients" reply after it means the refusals were at RCPT.
* qmail (``qmail-remote``): "Connected to ... but greeting failed.", "... but
  my name was rejected.", "... but sender was rejected.", "HOST does not like
  recipient.", "HOST failed on DATA command.", "HOST failed after I sent the
  message.", each followed by "Remote host said: ...".
* Exchange / Office 365 name the stage in some reply texts: "Client was not
  authenticated to send anonymous mail during MAIL FROM".
* Courier: ">>> MAIL FROM:<...>" / ">>> RCPT TO:<...>" / ">>> DATA" before
  the "<<< 5xx" reply, as Sendmail.

Most Exchange, Office 365, Gmail and web-mail bounces do not say the stage;
then :func:`smtp_stage` returns None and the status code and wording decide.
"""
from __future__ import annotations

import re
from typing import NamedTuple

STAGES = ("connect", "helo", "mail", "rcpt", "data")
BEFORE_RECIPIENT = ("connect", "helo", "mail")

_W = r"\s+"   # line folding may break a phrase anywhere


def _command(name: str) -> str:
    """Which stage an SMTP command name ('MAIL FROM', 'end of DATA', 'EHLO') is."""
    name = " ".join(name.lower().split())
    if name.startswith(("mail", "pipelined mail")):
        return "mail"
    if name.startswith(("rcpt", "pipelined rcpt")):
        return "rcpt"
    if name in ("ehlo", "helo", "lhlo", "starttls", "auth", "xforward", "xclient"):
        return "helo"
    if name.startswith("initial connection") or name.startswith("connect"):
        return "connect"
    return "data"   # "DATA", "end of DATA", "end of data", "BDAT", "pipelined DATA"


# Phrases that name the stage, each with the MTA that writes it.
_PHRASES = (
    # Postfix smtp(8): "(in reply to <COMMAND> command)"
    ("postfix", re.compile(
        r"\(in" + _W + r"reply" + _W + r"to" + _W
        + r"(MAIL" + _W + r"FROM|RCPT" + _W + r"TO|end" + _W + r"of" + _W + r"DATA|DATA|BDAT|(?:EHLO|HELO|LHLO)|STARTTLS|XFORWARD|XCLIENT|AUTH)"
        + _W + r"command\)", re.I)),
    ("postfix", re.compile(r"refused" + _W + r"to" + _W + r"talk" + _W + r"to" + _W + r"me"
                           + r"|while" + _W + r"receiving" + _W + r"the" + _W + r"initial" + _W + r"server"
                           + _W + r"greeting", re.I)),
    # Exim: "SMTP error from remote mail server after <COMMAND>..."
    ("exim", re.compile(
        r"SMTP" + _W + r"error" + _W + r"from" + _W + r"remote" + _W + r"mail(?:er|" + _W + r"server)" + _W
        + r"after" + _W + r"(initial" + _W + r"connection|(?:pipelined" + _W + r")?(?:MAIL" + _W + r"FROM|RCPT"
        + _W + r"TO|DATA)|end" + _W + r"of" + _W + r"data|(?:EHLO|HELO|LHLO)|STARTTLS|AUTH|BDAT)", re.I)),
    # qmail-remote
    ("qmail", re.compile(r"Connected" + _W + r"to" + _W + r"\S+" + _W + r"but" + _W
                         + r"(greeting|my" + _W + r"name|sender)" + _W + r"was" + _W + r"rejected"
                         + r"|Connected" + _W + r"to" + _W + r"\S+" + _W + r"but" + _W + r"(greeting)" + _W + r"failed"
                         + r"|(does" + _W + r"not" + _W + r"like" + _W + r"recipient)"
                         + r"|failed" + _W + r"(on" + _W + r"DATA" + _W + r"command|after" + _W + r"I" + _W
                         + r"sent" + _W + r"the" + _W + r"message)", re.I)),
    # Exchange / Office 365: "... during MAIL FROM" in its reply texts
    ("exchange", re.compile(r"\bduring" + _W + r"(MAIL" + _W + r"FROM|RCPT" + _W + r"TO|DATA)\b", re.I)),
)
_QMAIL = {"greeting": "connect", "my name": "helo", "sender": "mail", "does not like recipient": "rcpt",
          "on data command": "data", "after i sent the message": "data"}

# Sendmail / Courier transcripts: ">>> COMMAND" lines, then "<<< reply" lines.
_SENT_RE = re.compile(r"^\s*>>>\s*(MAIL\s+FROM|RCPT\s+TO|DATA|(?:EHLO|HELO|LHLO)|STARTTLS|QUIT)\b", re.I | re.M)
_FAILED_REPLY_RE = re.compile(r"^\s*<<<\s*[45]\d\d\b", re.M)
_NO_RECIPIENT_RE = re.compile(r"^\s*<<<\s*(?:503\b.*rcpt|\d{3}\b.*no\s+valid\s+recipients)", re.I | re.M)


class Stage(NamedTuple):
    stage: str        # one of STAGES
    evidence: str     # the phrase that said so, for the reason shown to admins
    mta: str          # whose wording it was


def smtp_stage(text: str) -> Stage | None:
    """The stage of the first refusal ``text`` names, or None when it does not say.

    ``text``: a diagnostic or the bounce text near one recipient. Never raises.
    """
    text = text or ""
    found: list[tuple[int, Stage]] = []
    for mta, pattern in _PHRASES:
        m = pattern.search(text)
        if not m:
            continue
        if mta == "qmail":
            word = next(g for g in m.groups() if g)
            stage = _QMAIL[" ".join(word.lower().split())]
        elif mta == "postfix" and not m.groups():
            stage = "connect"
        else:
            stage = _command(m.group(1))
        found.append((m.start(), Stage(stage, " ".join(m.group(0).split()), mta)))
    transcript = _transcript_stage(text)
    if transcript is not None:
        found.append(transcript)
    if not found:
        return None
    return min(found, key=lambda item: item[0])[1]


def _transcript_stage(text: str) -> tuple[int, Stage] | None:
    """Sendmail/Courier: the last ">>>" command before the first failed "<<<" reply."""
    reply = _FAILED_REPLY_RE.search(text)
    if not reply:
        return None
    sent = [m for m in _SENT_RE.finditer(text, 0, reply.start())]
    if not sent:
        return None
    last = sent[-1]
    stage = _command(last.group(1))
    if stage == "data" and _NO_RECIPIENT_RE.search(text, reply.start()):
        # PIPELINING: the replies after ">>> DATA" were the recipients' (RFC 2920 section 3.1)
        stage = "rcpt"
    return last.start(), Stage(stage, " ".join(last.group(0).split()), "sendmail")


def before_recipient(stage: Stage | None) -> bool:
    """Whether the refusal came before any recipient was named (connection to MAIL FROM)."""
    return stage is not None and stage.stage in BEFORE_RECIPIENT
