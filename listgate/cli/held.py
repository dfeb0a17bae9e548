"""``listgate held list|show|approve|reject|discard LIST ...``: the moderation queue."""
from __future__ import annotations

import sys

from .. import log as lg_log
from ..addresses import list_key
from .common import fail, get_list, load_site, print_json


def register(sub) -> None:
    p = sub.add_parser("held", help="posts held for moderation")
    hsub = p.add_subparsers(dest="held_command", metavar="ACTION", required=True)
    ls = hsub.add_parser("list", help="held posts of LIST")
    ls.add_argument("list")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)
    show = hsub.add_parser("show", help="print a held post readably: headers decoded, the text, attachments named")
    show.add_argument("list")
    show.add_argument("token")
    show.add_argument("--raw", action="store_true", help="write the post as it arrived (bytes) instead")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_show)
    for action, text in (("approve", "send held posts to the list"),
                         ("reject", "refuse held posts (the author is told why)"),
                         ("discard", "drop held posts silently")):
        a = hsub.add_parser(action, help=text)
        a.add_argument("list")
        a.add_argument("tokens", nargs="+", metavar="TOKEN")
        if action == "reject":
            a.add_argument("--reason", default="", help="sent to the author")
        a.set_defaults(func=cmd_act, action=action)


def cmd_list(args) -> int:
    from ..store import open_store
    site = load_site(args)
    lc = get_list(site, args.list)
    recs = open_store(site, list_key(lc)).pending("held_message")
    rows = [{"token": r.token, "created": r.created, "expires": r.expires, "author": r.payload.get("author"),
             "subject": r.payload.get("subject"), "reason": r.payload.get("reason"),
             "size": len(r.payload.get("message", "")) * 3 // 4} for r in recs]
    if args.json:
        print_json(rows)
        return 0
    for r in rows:
        print(f"{r['token']}  {r['author'] or '-'}  {r['subject'] or '(no subject)'!r}  ({r['reason']})")
    if not rows:
        print(f"no held posts for {list_key(lc)}")
    return 0


def cmd_show(args) -> int:
    """Exit 1 for an unknown, expired or handled token."""
    import base64
    import binascii

    from ..app.mail import outline
    from ..store import open_store
    from .members import when
    site = load_site(args)
    lc = get_list(site, args.list)
    rec = open_store(site, list_key(lc)).peek_pending(args.token.lower())
    if rec is None or rec.type != "held_message":
        fail(f"no held post with token {args.token} (unknown, expired or already handled)")
    try:
        msg = base64.b64decode(rec.payload.get("message", ""))
    except (binascii.Error, ValueError):
        fail(f"held post {rec.token}: its stored copy is not readable base64")
    if args.raw:
        sys.stdout.buffer.write(msg)
        return 0
    headers, text, attachments = outline(msg)
    p = rec.payload
    if args.json:
        print_json({"token": rec.token, "list": list_key(lc), "reason": p.get("reason"),
                    "envelope_sender": p.get("envelope_sender"), "created": rec.created, "expires": rec.expires,
                    "size": len(msg), "headers": [list(h) for h in headers], "text": text,
                    "attachments": attachments})
        return 0
    print(f"held post {rec.token} of {list_key(lc)}: {p.get('reason') or '?'}")
    print(f"held {when(rec.created)}, expires {when(rec.expires)}, envelope sender "
          f"<{p.get('envelope_sender') or ''}>, {len(msg)} bytes")
    print()
    for name, value in headers:
        print(f"{name}: {value}")
    print()
    print(text.rstrip("\n") if text else "(no text part)")
    if attachments:
        print()
        print(f"{len(attachments)} other part(s), not shown (--raw writes the whole post):")
        for line in attachments:
            print(f"  {line}")
    return 0


def cmd_act(args) -> int:
    from ..app.moderation import moderate
    from ..store import UnknownToken
    site = load_site(args)
    lg_log.setup(site.conf.logging, program="listgate-held", level="warning")
    lc = get_list(site, args.list)
    status = 0
    for token in args.tokens:
        try:
            print(moderate(site, lc, token.lower(), args.action, getattr(args, "reason", "")))
        except UnknownToken:
            print(f"listgate: no held post with token {token} (unknown, expired or already handled)",
                  file=sys.stderr)
            status = 1
    return status
