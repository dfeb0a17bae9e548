"""``listgate bounces show LIST [ADDRESS]``: bounce info and bounce events.

With ADDRESS: that member's delivery status, bounce score, dates, notices
left and events (events are shown for non-members too). Without: every
member with a bounce score or delivery not enabled, and the latest events.
"""
from __future__ import annotations

import dataclasses

from ..store import BounceEvent, Member
from .common import fail, print_json
from .members import add_action, member_dict, open_list_store, when


def register(sub) -> None:
    p = sub.add_parser("bounces", help="bounce info and events")
    actions = p.add_subparsers(dest="bounces_command", metavar="ACTION", required=True)
    q = add_action(actions, "show", cmd_show, "bounce info and events of a member, or of every member with a score or not enabled")
    q.add_argument("address", nargs="?")
    q.add_argument("--limit", type=int, default=20, help="events to show (default 20)")


def _event_line(e: BounceEvent) -> str:
    parts = [when(e.at), e.address or "-", e.bounce_class, e.status or "-", e.attribution or "-", e.action or "-"]
    if e.message_id:
        parts.append(e.message_id)
    if e.detail:
        parts.append(repr(e.detail[:120]))
    return "  ".join(parts)


def _member_lines(m: Member) -> list[str]:
    return [f"{m.address}: {m.delivery_status} (since {when(m.status_changed_at or m.subscribed_at)})",
            f"  bounce score {m.bounce_score:g}, last scored bounce {m.last_bounce_day or '-'} ({when(m.last_bounce_at)})",
            f"  notices left {'-' if m.notices_left is None else m.notices_left}, "
            f"last notice {when(m.last_notice_at)}, re-enable token {m.re_enable_token or '-'}"]


def cmd_show(args) -> int:
    key, store = open_list_store(args)
    if args.address:
        member = store.get_member(args.address)
        events = store.events(args.address, limit=args.limit)
        if member is None and not events:
            fail(f"{args.address} is not a member of {key} and has no bounce events")
        members = [member] if member else []
    else:
        members = [m for m in store.members() if m.bounce_score or m.delivery_status != "enabled"]
        events = store.events(limit=args.limit)
    if args.json:
        print_json({"list": key, "members": [member_dict(m) for m in members],
                    "events": [dataclasses.asdict(e) for e in events]})
        return 0
    for m in members:
        print("\n".join(_member_lines(m)))
    if args.address and not members:
        print(f"{args.address}: not a member")
    print(f"events ({len(events)}, newest first):" if events else "no bounce events")
    for e in events:
        print("  " + _event_line(e))
    return 0
