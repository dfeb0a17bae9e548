"""``listgate inject``: hand one message on stdin to listgate (Exim's pipe transport).

Each ``--recipient`` is routed like a RCPT at SMTP time
(:func:`listgate.routing.decide_rcpt`), then the message goes through the
same end-of-message core as the milter (:func:`listgate.inject.store_message`).

Exit status (sysexits.h, which Exim's pipe transport maps to delivery
results; ``temp_errors`` defaults to 73:75):

==  ==========================================================================
0   stored (EX_OK)
65  unusable input: empty, or no header section (EX_DATAERR)
67  a recipient is not a list address listgate knows (EX_NOUSER)
75  could not store now, retry later: store or queue unavailable (EX_TEMPFAIL)
77  a list refused the message, e.g. a non-member post to a closed list
    whose ``non_member_action`` is ``reject`` (EX_NOPERM)
==  ==========================================================================

Nothing is stored unless every recipient routes; the reason goes to stderr
(Exim puts it into the bounce).
"""
from __future__ import annotations

import sys

from .. import log
from ..inject import NotStored, Routed, Unusable, bare, check_message, store_message, strip_envelope_line
from ..routing import decide_rcpt
from .common import load_site

EX_OK, EX_DATAERR, EX_NOUSER, EX_TEMPFAIL, EX_NOPERM = 0, 65, 67, 75, 77


def register(sub) -> None:
    p = sub.add_parser("inject", help="store one message from stdin for list recipients (Exim hand-off)")
    p.add_argument("--recipient", "-r", action="append", required=True, metavar="ADDR",
                   help="envelope recipient (repeat for several)")
    p.add_argument("--sender", "-f", default=None, metavar="ADDR",
                   help="envelope sender ('' or '<>' for the null sender; omitted: unknown)")
    p.add_argument("--client-address", metavar="IP", help="SMTP client address, e.g. Exim's $sender_host_address")
    p.add_argument("--queue-id", metavar="ID", help="the MTA's queue id, e.g. Exim's $message_exim_id")
    p.set_defaults(func=cmd_inject)


def _say(message: str) -> None:
    print(f"listgate inject: {message}", file=sys.stderr)


def cmd_inject(args) -> int:
    site = load_site(args)
    log.setup(site.conf.logging, program="listgate-inject")
    # None (not given) is an unknown sender; "" the null sender of a DSN (RFC 5321 section 4.5.5)
    sender = bare(args.sender) if args.sender is not None else None
    # Exim passes empty values for what it does not know (local submission)
    client, queue_id = args.client_address or None, args.queue_id or None
    try:
        msg = strip_envelope_line(sys.stdin.buffer.read())
        check_message(msg)
    except Unusable as exc:
        _say(f"unusable input: {exc}")
        return EX_DATAERR
    routed = []
    for rcpt in args.recipient:
        d = decide_rcpt(site, rcpt, sender=sender, client_address=client)
        if d.action in ("accept", "discard"):
            routed.append(Routed(rcpt, d))
        elif d.action == "tempfail":
            _say(f"{rcpt}: {d.text or 'store unavailable'}; try again later")
            return EX_TEMPFAIL
        elif d.action == "pass" or (d.dsn or "").startswith("5.1."):
            _say(f"{rcpt}: {d.text or 'not a list address listgate manages'}")
            return EX_NOUSER
        else:
            _say(f"{rcpt}: {d.code or ''} {d.dsn or ''} {d.text or 'refused'}".replace("  ", " "))
            return EX_NOPERM
    try:
        store_message(site, msg, sender or "", routed, mta_queue_id=queue_id, client_address=client)
    except NotStored as exc:
        _say(f"not stored, try again later: {exc}")
        return EX_TEMPFAIL
    return EX_OK
