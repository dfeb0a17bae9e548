"""``listgate members list|enable|disable|set|import|export LIST ...`` (``add``, ``remove``, ``sync``,
``find``: :mod:`listgate.cli.members_bulk`).

Also the helpers the other store commands (``pending``, ``bounces``) share:
opening a list's store from the command line and printing times.
Exit status: 0 done, 1 bad input (unknown list, malformed address, not a
member, ...), 75 (EX_TEMPFAIL) when the store is unavailable.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from datetime import datetime, timezone

from .. import clock
from ..addresses import list_key
from ..app import digests
from ..store import AlreadyMember, DELIVERY_STATUSES, ListStore, Member, NotAMember, StoreUnavailable, open_store
from ..store.mailman import MailmanImportError, import_members, looks_like_pickle, read_config
from .common import fail, get_list, load_site, print_json

EX_TEMPFAIL = 75


def json_parent() -> argparse.ArgumentParser:
    """A parent parser adding ``--json`` (machine-readable output) to a sub-command."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--json", action="store_true", help="print JSON for scripts")
    return parent


def open_list_store(args) -> tuple[str, ListStore]:
    """(list key, store) for ``args.list``; exits 1 for an unknown list, 75 if the store is unavailable."""
    site = args.site = load_site(args)     # kept for commands that need more than the store
    lc = get_list(site, args.list)
    key = list_key(lc)
    try:
        return key, open_store(site, key)
    except StoreUnavailable as exc:
        fail(str(exc), EX_TEMPFAIL)
        raise  # not reached: fail() exits


def when(ts: float | None) -> str:
    """``2027-01-15 10:04:05Z`` (UTC) or ``-``."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def guarded(handler):
    """Turn store errors a user can cause into a message and an exit status."""
    def run(args) -> int:
        try:
            return handler(args)
        except StoreUnavailable as exc:
            fail(str(exc), EX_TEMPFAIL)
        except (NotAMember, AlreadyMember, ValueError) as exc:
            fail(str(exc))
        return 1
    run.__doc__ = handler.__doc__
    return run


def add_action(actions, name: str, handler, help: str, *positionals: str) -> argparse.ArgumentParser:
    """Add sub-command ``name LIST [POSITIONALS...] [--json]`` running ``handler`` through :func:`guarded`."""
    parser = actions.add_parser(name, parents=[json_parent()], help=help)
    for positional in ("list",) + positionals:
        parser.add_argument(positional)
    parser.set_defaults(func=guarded(handler))
    return parser


def register(sub) -> None:
    from . import members_bulk
    p = sub.add_parser("members", help="list members: add, remove, sync, find, list, enable, disable, set, "
                                       "import, export")
    actions = p.add_subparsers(dest="members_command", metavar="ACTION", required=True)
    members_bulk.register(actions)
    add_action(actions, "list", cmd_list, "list members").add_argument(
        "--status", choices=DELIVERY_STATUSES, help="only members with this delivery status")
    add_action(actions, "enable", cmd_enable, "enable delivery (clears bounce info)", "address")
    add_action(actions, "disable", cmd_disable, "disable delivery", "address").add_argument(
        "--by", choices=("admin", "user"), default="admin", help="who disabled it (default admin)")
    add_action(actions, "set", cmd_set, "set a member's options", "address").add_argument(
        "--digest", choices=("mime", "plain", "off"), required=True,
        help="take posts as a MIME or plain text digest, or one by one (off)")
    add_action(actions, "import", cmd_import, "add members from a file (- for standard input): one address per "
               "line ('Name <addr>' allowed) or a Mailman 2.1 config.pck", "file")
    q = add_action(actions, "export", cmd_export, "print members, one address per line")
    q.add_argument("--status", choices=DELIVERY_STATUSES)
    q.add_argument("--names", action="store_true", help="write 'Name <addr>' where a name is known")


def member_dict(member: Member) -> dict:
    return dataclasses.asdict(member)


def _show(args, member: Member, verb: str) -> int:
    if args.json:
        print_json(member_dict(member))
    else:
        print(f"{verb} {member.address} ({member.delivery_status})")
    return 0


def cmd_list(args) -> int:
    _, store = open_list_store(args)
    members = store.members(args.status)
    if args.json:
        print_json([member_dict(m) for m in members])
        return 0
    for m in members:
        name = f" ({m.display_name})" if m.display_name else ""
        score = f" score {m.bounce_score:g}" if m.bounce_score else ""
        print(f"{m.address}{name}  {m.delivery_status}{score}  since {when(m.subscribed_at)}")
    print(f"{len(members)} member(s)", file=sys.stderr)
    return 0


def cmd_enable(args) -> int:
    """Enable delivery; as in Mailman, an admin re-enable starts bounce scoring over."""
    _, store = open_list_store(args)
    with store.transaction():
        member = _require(store, args.address)
        member.delivery_status = "enabled"
        member.status_changed_at = clock.now()
        member.bounce_score = 0.0
        member.last_bounce_day = member.last_bounce_at = None
        member.notices_left = member.last_notice_at = None
        member.re_enable_token = None
        store.save_member(member)
    return _show(args, member, "enabled")


def cmd_disable(args) -> int:
    _, store = open_list_store(args)
    with store.transaction():
        member = _require(store, args.address)
        member.delivery_status = f"by_{args.by}"
        member.status_changed_at = clock.now()
        store.save_member(member)
    return _show(args, member, "disabled")


def cmd_set(args) -> int:
    """``--digest mime|plain|off``: the member's delivery mode (:func:`listgate.app.digests.set_mode`)."""
    _, store = open_list_store(args)
    member = digests.set_mode(store, args.address, args.digest)
    if args.json:
        print_json(member_dict(member))
    else:
        print(f"{member.address}: delivery {member.delivery_mode}")
    return 0


def _require(store: ListStore, address: str) -> Member:
    member = store.get_member(address)
    if member is None:
        raise NotAMember(f"{address} is not a member of {store.list_key}")
    return member


def cmd_import(args) -> int:
    from ..app.membership import parse_lines
    from .members_bulk import read_text
    _, store = open_list_store(args)
    data = read_text(args.file)
    if looks_like_pickle(data):
        try:
            entries, bad = read_config(data).members, []
        except MailmanImportError as exc:
            fail(f"{args.file}: {exc}")
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            fail(f"{args.file}: neither UTF-8 text nor a Mailman 2.1 config.pck")
        entries, bad = parse_lines(text)
    report = import_members(store, entries)
    skipped = bad + report.skipped
    if args.json:
        print_json({"added": report.added, "skipped": [{"entry": e, "reason": r} for e, r in skipped]})
    else:
        for entry, reason in skipped:
            print(f"skipped {entry}: {reason}", file=sys.stderr)
        print(f"imported {len(report.added)} member(s), skipped {len(skipped)}")
    return 0


def cmd_export(args) -> int:
    _, store = open_list_store(args)
    members = store.members(args.status)
    if args.json:
        print_json([m.address for m in members])
        return 0
    for m in members:
        print(name_addr(m.display_name, m.address) if args.names else m.address)
    return 0


def name_addr(name: str, address: str) -> str:
    """``Name <addr>`` in UTF-8 (readable, unlike RFC 2047), quoted where RFC 5322 section 3.2.5 needs it."""
    if not name:
        return address
    if any(c in name for c in '()<>[]:;@\\,."'):
        name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{name} <{address}>"
