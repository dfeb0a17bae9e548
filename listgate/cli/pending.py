"""``listgate pending list|show|confirm|discard LIST ...``: a list's pending records.

``confirm`` carries the record out as if its confirmation had come by mail
(subscription, unsubscription, change of address, re-enable, approval of a
held message), through the same code the runner uses
(:func:`listgate.app.subscriptions.complete`). ``discard`` removes a record
without acting.
"""
from __future__ import annotations

import dataclasses
import json

from ..store import PENDING_TYPES, PendingRecord, UnknownToken
from .common import fail, print_json
from .members import add_action, open_list_store, when


def register(sub) -> None:
    p = sub.add_parser("pending", help="pending records: list, show, confirm, discard")
    actions = p.add_subparsers(dest="pending_command", metavar="ACTION", required=True)
    add_action(actions, "list", cmd_list, "unexpired pending records, oldest first").add_argument(
        "--type", choices=PENDING_TYPES)
    add_action(actions, "show", cmd_show, "show a record without removing it", "token")
    add_action(actions, "confirm", cmd_confirm, "confirm: carry the record out (subscribe, re-enable, approve, ...)", "token")
    add_action(actions, "discard", cmd_discard, "discard: remove the record, do nothing", "token")


def record_dict(record: PendingRecord) -> dict:
    return dataclasses.asdict(record)


def _print(args, record: PendingRecord, verb: str | None = None) -> None:
    if args.json:
        print_json(record_dict(record))
        return
    if verb:
        print(f"{verb} {record.token}")
    print(f"token:   {record.token}\ntype:    {record.type}\ncreated: {when(record.created)}\n"
          f"expires: {when(record.expires)}\npayload: {json.dumps(record.payload, sort_keys=True, ensure_ascii=False)}")


def cmd_list(args) -> int:
    key, store = open_list_store(args)
    records = store.pending(args.type)
    if args.json:
        print_json([record_dict(r) for r in records])
        return 0
    if not records:
        print(f"no pending records for {key}" + (f" of type {args.type}" if args.type else ""))
    for r in records:
        print(f"{r.token}  {r.type:<17} created {when(r.created)}  expires {when(r.expires)}")
    return 0


def _peek(args):
    """(list key, store, record) for ``args.token``; exits 1 if unknown or expired."""
    key, store = open_list_store(args)
    record = store.peek_pending(args.token)
    if record is None:
        fail(f"unknown or expired token {args.token!r} for {key}")
    return key, store, record


def cmd_show(args) -> int:
    _print(args, _peek(args)[2])
    return 0


def cmd_confirm(args) -> int:
    """Carry the record out as if its confirmation had arrived by mail (an admin's act)."""
    from ..app.subscriptions import complete
    from ..store import AlreadyMember, NotAMember
    key, store, record = _peek(args)
    if record.type == "probe":
        fail(f"{args.token} is a probe token: probes are confirmed only by bouncing (use 'discard')")
    try:
        summary = complete(args.site, args.site.lists[key], record)
    except UnknownToken:
        fail(f"unknown or expired token {args.token!r} for {key}")
    except (AlreadyMember, NotAMember) as exc:
        fail(str(exc))
    _print(args, record, f"confirmed ({summary})")
    return 0


def cmd_discard(args) -> int:
    key, store = open_list_store(args)
    try:
        record = store.confirm_pending(args.token)
    except UnknownToken:
        fail(f"unknown or expired token {args.token!r} for {key}")
    _print(args, record, "discarded")
    return 0
