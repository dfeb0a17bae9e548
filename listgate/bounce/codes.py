"""Enhanced status codes (RFC 3463) → what a failure with that code is about.

The table follows the IANA "SMTP Enhanced Status Codes" registry (RFC 3463,
RFC 5248 and the codes registered since: RFC 3886, 4468, 4954, 6531, 6710,
7293, 7372, 7505, 8617, 8689 and others), subject and detail only: the class
digit (2, 4, 5) says *when* (success, transient, permanent), the rest says
*what* the failure concerns. Each entry is our one-line reading of the
registry's description and the side of the transaction it points at:

``recipient``
    the member's address or mailbox (unknown, disabled, moved, domain with
    no mail): a dead address → ``hard``.
``message``
    our message as sent (content, size, media, authentication results): the
    member's address is fine → ``policy``.
``sender``
    our envelope sender or our sending host (bad sender address, reverse
    DNS, missing authentication or encryption on our side) → ``policy``.
``transient``
    a condition that persists for a while and then goes away (mailbox full,
    system full, congestion, a flood limit, time expired in a queue), even
    when reported in a 5xx reply (RFC 3463 section 3.3) → ``soft``.
``ambiguous``
    "other" or a code MTAs use for anything (X.0.0, X.7.1 "delivery not
    authorized"): the SMTP stage and the wording decide.

Codes not in the table fall back to their subject's entry (``X.<subject>.*``),
then to ``ambiguous``.
"""
from __future__ import annotations

from typing import NamedTuple

ABOUT = ("recipient", "message", "sender", "transient", "ambiguous")


class Code(NamedTuple):
    about: str        # one of ABOUT
    meaning: str      # our short reading of the registry entry


# key: "subject.detail" (the class digit left out); "subject.*": the subject's fallback.
TABLE: dict[str, Code] = {
    "0.0": Code("ambiguous", "other or undefined status"),
    # X.1: addressing (RFC 3463 section 3.2)
    "1.*": Code("ambiguous", "some addressing problem"),
    "1.0": Code("ambiguous", "other address status"),
    "1.1": Code("recipient", "the mailbox named does not exist there"),
    "1.2": Code("recipient", "the destination host or domain does not exist or takes no mail"),
    "1.3": Code("recipient", "the destination address is syntactically wrong"),
    "1.4": Code("recipient", "the destination address matches several mailboxes"),
    "1.5": Code("ambiguous", "the destination address is valid"),
    "1.6": Code("recipient", "the mailbox moved and left no forwarding address"),
    "1.7": Code("sender", "our sender address is syntactically wrong"),
    "1.8": Code("sender", "our sender's domain is bad"),
    "1.9": Code("ambiguous", "relayed to a mailer that cannot report delivery (RFC 3886)"),
    "1.10": Code("recipient", "the recipient's domain publishes a null MX (RFC 7505)"),
    # X.2: the mailbox (section 3.3)
    "2.*": Code("ambiguous", "some mailbox problem"),
    "2.0": Code("ambiguous", "other mailbox status"),
    "2.1": Code("recipient", "the mailbox is disabled and takes no mail"),
    "2.2": Code("transient", "the mailbox is full"),
    "2.3": Code("message", "the message is longer than the mailbox allows"),
    "2.4": Code("recipient", "the recipient is a mailing list that could not be expanded"),
    # X.3: the receiving mail system (section 3.4)
    "3.*": Code("ambiguous", "some mail system problem"),
    "3.0": Code("ambiguous", "other mail system status"),
    "3.1": Code("transient", "the receiving mail system is full"),
    "3.2": Code("ambiguous", "the receiving system is not accepting network messages"),
    "3.3": Code("message", "the message needs a feature the receiving system lacks"),
    "3.4": Code("message", "the message is bigger than the receiving system takes"),
    "3.5": Code("ambiguous", "the receiving system is misconfigured"),
    "3.6": Code("ambiguous", "the requested priority was changed (RFC 6710)"),
    # X.4: network and routing (section 3.5)
    "4.*": Code("ambiguous", "some network or routing problem"),
    "4.0": Code("ambiguous", "other network or routing status"),
    "4.1": Code("ambiguous", "the destination host did not answer"),
    "4.2": Code("transient", "the connection broke"),
    "4.3": Code("transient", "a directory server (DNS) failed"),
    "4.4": Code("recipient", "no route to the destination (no MX, no host)"),
    "4.5": Code("transient", "the mail system is congested"),
    "4.6": Code("ambiguous", "a routing loop was detected"),
    "4.7": Code("transient", "the message spent too long in a queue"),
    # X.5: the SMTP protocol (section 3.6)
    "5.*": Code("ambiguous", "some protocol problem"),
    "5.3": Code("message", "too many recipients in one transaction"),
    "5.6": Code("sender", "an authentication exchange line was too long (RFC 4954)"),
    # X.6: message content or media (section 3.7)
    "6.*": Code("message", "the message's content or media"),
    "6.0": Code("message", "other content or media problem"),
    "6.1": Code("message", "a media type is not supported"),
    "6.2": Code("message", "a conversion is needed but forbidden"),
    "6.3": Code("message", "a conversion is needed but not possible"),
    "6.4": Code("message", "converted with loss"),
    "6.5": Code("message", "the conversion failed"),
    "6.6": Code("message", "the message content is not available (RFC 4468)"),
    "6.7": Code("message", "non-ASCII addresses not allowed (RFC 6531)"),
    "6.8": Code("message", "a UTF-8 reply is needed but the client cannot take it (RFC 6531)"),
    "6.9": Code("message", "a UTF-8 header cannot be passed on (RFC 6531)"),
    "6.10": Code("message", "a UTF-8 reply is needed but the client cannot take it (RFC 6531)"),
    # X.7: security and policy (section 3.8, RFC 5248 and later)
    "7.*": Code("ambiguous", "some security or policy refusal"),
    "7.0": Code("ambiguous", "other security or policy status"),
    "7.1": Code("ambiguous", "delivery not authorized, message refused"),
    "7.2": Code("message", "expanding the mailing list is not allowed"),
    "7.3": Code("message", "a security conversion was needed but not possible"),
    "7.4": Code("message", "the security features asked for are not supported"),
    "7.5": Code("message", "a cryptographic operation failed"),
    "7.6": Code("message", "a cryptographic algorithm is not supported"),
    "7.7": Code("message", "the message's integrity check failed"),
    "7.8": Code("sender", "our authentication credentials are invalid (RFC 4954)"),
    "7.9": Code("sender", "our authentication mechanism is too weak (RFC 4954)"),
    "7.10": Code("sender", "encryption is needed (RFC 5248)"),
    "7.11": Code("sender", "encryption is needed for the authentication mechanism (RFC 4954)"),
    "7.12": Code("sender", "a password transition is needed (RFC 4954)"),
    "7.13": Code("recipient", "the recipient's account is disabled (RFC 5248)"),
    "7.14": Code("sender", "a trust relationship is needed (RFC 5248)"),
    "7.15": Code("message", "the message's priority is too low (RFC 6710)"),
    "7.16": Code("message", "the message is too big for its priority (RFC 6710)"),
    "7.17": Code("recipient", "the mailbox has a new owner (RFC 7293)"),
    "7.18": Code("recipient", "the domain has a new owner (RFC 7293)"),
    "7.19": Code("ambiguous", "the require-recipient-valid-since test could not be done (RFC 7293)"),
    "7.20": Code("message", "no passing DKIM signature (RFC 7372)"),
    "7.21": Code("message", "no acceptable DKIM signature (RFC 7372)"),
    "7.22": Code("message", "no valid author-matched DKIM signature (RFC 7372)"),
    "7.23": Code("message", "SPF validation failed (RFC 7372)"),
    "7.24": Code("message", "SPF validation gave an error (RFC 7372)"),
    "7.25": Code("sender", "reverse DNS validation of our host failed (RFC 7372)"),
    "7.26": Code("message", "several authentication checks failed (RFC 7372)"),
    "7.27": Code("sender", "our sender's domain publishes a null MX (RFC 7505)"),
    "7.28": Code("transient", "a mail flood was detected"),
    "7.29": Code("message", "ARC validation failed (RFC 8617)"),
    "7.30": Code("message", "REQUIRETLS support is required (RFC 8689)"),
}


def lookup(status: str | None) -> Code | None:
    """What ``status`` ('5.7.13') is about, or None for no or unreadable status.

    Unregistered details fall back to their subject's entry; never raises.
    """
    if not status:
        return None
    parts = status.split(".")
    if len(parts) != 3:
        return None
    _, subject, detail = parts
    return TABLE.get(f"{subject}.{detail}") or TABLE.get(f"{subject}.*") or TABLE["0.0"]
