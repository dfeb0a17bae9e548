"""``listgate bounces show|list|evidence|reset|strike|clear-incident``: bounce info, and undoing it.

``show LIST [ADDRESS]``: with ADDRESS, that member's delivery status, bounce
score, dates, notices left and events (events are shown for non-members
too); without, every member with a bounce score or delivery not enabled,
open site incidents and the latest events. ``list LIST [--sort score|last|address]``:
one line per member with a score or not enabled (score, state, last bounce,
next action). ``evidence LIST ADDRESS [--summary]``: the stored bouncing
messages, raw or as ``listgate classify`` reads them. ``reset LIST
ADDRESS|--all [--enable]``: scores to zero (and members disabled by bounce
enabled). ``strike LIST EVENT-ID``: a wrongly scored event no longer counts;
the score is recomputed from the remaining events. ``clear-incident LIST
[--scope SCOPE]``: end the list's open site incidents (or the one of SCOPE:
``*`` or a domain) now, as a delivery accepted at hand-over would; the
paused qfiles resume at their retry time (``listgate queue flush``: now).
Unknown list, address or event id: a message and exit status 1.
"""
from __future__ import annotations

import dataclasses

import sys

from ..app import bounce_admin, site_incidents
from ..store import BounceEvent, Member, StoreError, UnknownEvent
from .common import fail, get_list, print_json
from .members import add_action, member_dict, open_list_store, when


def register(sub) -> None:
    p = sub.add_parser("bounces", help="bounce info and events")
    actions = p.add_subparsers(dest="bounces_command", metavar="ACTION", required=True)
    q = add_action(actions, "show", cmd_show, "bounce info and events of a member, or of every member with a score or not enabled")
    q.add_argument("address", nargs="?")
    q.add_argument("--limit", type=int, default=20, help="events to show (default 20)")
    q = add_action(actions, "list", cmd_list, "every member with a score or not enabled: score, state, "
                   "last bounce, next action")
    q.add_argument("--sort", choices=("score", "last", "address"), default="score")
    q = add_action(actions, "evidence", cmd_evidence, "the stored bouncing messages of a member", "address")
    q.add_argument("--summary", action="store_true", help="one summary per message (listgate classify's reasons)")
    q = add_action(actions, "reset", cmd_reset, "clear bounce scores of a member or of all")
    q.add_argument("address", nargs="?")
    q.add_argument("--all", action="store_true", help="every member")
    q.add_argument("--enable", action="store_true", help="also enable members disabled by bounce")
    q = add_action(actions, "clear-incident", cmd_clear_incident,
                   "end the list's open site incidents now (after fixing the cause)")
    q.add_argument("--scope", metavar="SCOPE", help="only this incident: * (all recipients) or a domain")
    add_action(actions, "strike", cmd_strike, "strike a wrongly scored bounce event; the score is recomputed",
               "event_id")


def _event_line(e: BounceEvent) -> str:
    parts = [f"#{e.id}" if e.id is not None else "#-", when(e.at), e.address or "-", e.bounce_class, e.status or "-", e.attribution or "-", e.action or "-"]
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
                    "incidents": [dataclasses.asdict(i) for i in _incidents(args, store).values()],
                    "events": [dataclasses.asdict(e) for e in events]})
        return 0
    for incident in _incidents(args, store).values():
        state = "paused" if incident.paused else "trying one delivery"
        print(f"site incident ({'all recipients' if incident.scope == site_incidents.ALL else incident.scope}): "
              f"{state}, open since {when(incident.opened_at)}, last failure {when(incident.last_failure_at)}: "
              f"{incident.reason}")
    for m in members:
        print("\n".join(_member_lines(m)))
    if args.address and not members:
        print(f"{args.address}: not a member")
    print(f"events ({len(events)}, newest first):" if events else "no bounce events")
    for e in events:
        print("  " + _event_line(e))
    return 0


def _lc(args):
    return get_list(args.site, args.list)


def _incidents(args, store) -> dict:
    return site_incidents.open_incidents(store, _lc(args))


def cmd_list(args) -> int:
    open_list_store(args)
    rows = bounce_admin.rows(args.site, _lc(args))
    order = {"score": lambda r: (-r.score, r.address), "last": lambda r: (-(r.last_bounce or 0), r.address),
             "address": lambda r: r.address.lower()}[args.sort]
    rows.sort(key=order)
    if args.json:
        print_json([dataclasses.asdict(r) for r in rows])
        return 0
    if not rows:
        print("no member with a bounce score or disabled")
    for r in rows:
        print(f"{r.address}  score {r.score:g}  {r.state}  last bounce {when(r.last_bounce)}  next: {r.next_action}")
    return 0


def cmd_evidence(args) -> int:
    from .classify import _print_text, explain   # pulls in the classifier only here
    key, store = open_list_store(args)
    items = store.evidence(args.address)
    if store.get_member(args.address) is None and not items:
        fail(f"{args.address} is not a member of {key} and has no stored bounces")
    if args.json:
        print_json([{"at": at, **(explain(msg, args.site) if args.summary else
                                   {"message": msg.decode("utf-8", "replace")})} for at, msg in items])
        return 0
    if not items:
        print(f"no stored bounces for {args.address}")
    for n, (at, msg) in enumerate(items, 1):
        if args.summary:
            _print_text(f"bounce {n} of {len(items)} ({when(at)})", explain(msg, args.site))
        else:
            print(f"--- bounce {n} of {len(items)}, stored {when(at)} ---")
            sys.stdout.flush()
            sys.stdout.buffer.write(msg if msg.endswith(b"\n") else msg + b"\n")
            sys.stdout.buffer.flush()
    return 0


def cmd_reset(args) -> int:
    open_list_store(args)
    if bool(args.address) == bool(args.all):
        fail("give one ADDRESS or --all")
    changed = bounce_admin.reset(args.site, _lc(args), None if args.all else args.address, enable=args.enable)
    if args.json:
        print_json([member_dict(m) for m in changed])
        return 0
    for m in changed:
        print(f"reset {m.address} (score 0, {m.delivery_status})")
    if not changed:
        print("nothing to reset")
    return 0


def cmd_strike(args) -> int:
    key, _ = open_list_store(args)
    try:
        event_id = int(args.event_id.lstrip("#"))
        was, member = bounce_admin.strike(args.site, _lc(args), event_id)
    except (ValueError, UnknownEvent):
        fail(f"no bounce event {args.event_id!r} to strike in {key} (see `listgate bounces show {key}`)")
        return 1
    except StoreError as exc:
        fail(str(exc))
        return 1
    if args.json:
        print_json({"struck": dataclasses.asdict(was), "member": member_dict(member) if member else None})
        return 0
    print(f"struck #{event_id} ({was.action} {was.bounce_class} {was.address or '-'})")
    if member is not None:
        print(f"{member.address}: bounce score now {member.bounce_score:g}")
    return 0


def cmd_clear_incident(args) -> int:
    key, _ = open_list_store(args)
    cleared = site_incidents.clear_by_hand(args.site, _lc(args), args.scope, who="listgate bounces clear-incident")
    if args.json:
        print_json({"list": key, "cleared": cleared})
        return 0
    if not cleared:
        print(f"no open site incident{' of scope ' + args.scope if args.scope else ''} on {key}")
        return 1 if args.scope else 0
    for scope in cleared:
        print(f"cleared site incident of scope {scope} on {key} (paused mail: listgate queue flush)")
    return 0
