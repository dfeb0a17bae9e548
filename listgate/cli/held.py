"""``listgate held list|approve|reject|discard LIST ...``: the moderation queue."""
from __future__ import annotations

import sys

from .. import log as lg_log
from ..addresses import list_key
from .common import get_list, load_site, print_json


def register(sub) -> None:
    p = sub.add_parser("held", help="posts held for moderation")
    hsub = p.add_subparsers(dest="held_command", metavar="ACTION", required=True)
    ls = hsub.add_parser("list", help="held posts of LIST")
    ls.add_argument("list")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)
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
