"""``listgate lists`` (every list with its counts), ``lists create NAME@DOMAIN --owner ADDR``,
``lists remove NAME@DOMAIN [--purge] [--force]``.

Creating and removing a list's file is :mod:`listgate.instance`'s
(:func:`~listgate.instance.create_list`, :func:`~listgate.instance.remove_list`);
the running daemons see the change at their next reload of the config
(they watch ``lists_dir``). Listing reads only: a list without a store yet
counts zero and gets none made.
"""
from __future__ import annotations

import sys

from .. import instance, store
from ..addresses import list_key
from .common import fail, load_site, print_json


def register(sub) -> None:
    p = sub.add_parser("lists", help="every list with its member and held counts; create, remove",
                       description="Without an action: one line per list (members enabled and disabled, "
                                   "held posts); a list whose file has errors is shown as broken.")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(func=cmd_lists)
    actions = p.add_subparsers(dest="lists_command", metavar="ACTION")
    c = actions.add_parser("create", help="write a list's file from the template and check it")
    c.add_argument("address", metavar="NAME@DOMAIN")
    c.add_argument("--owner", action="append", required=True, metavar="ADDR", dest="owners",
                   help="an owner's address (repeat for more)")
    c.add_argument("--description", default="", help="the list's description (in List-Id)")
    c.set_defaults(func=cmd_create, keeps_user=True)     # lists.d is configuration, root's in INSTALL
    r = actions.add_parser("remove", help="remove a list's file; its store (members, bounce info, held posts) "
                                          "stays unless --purge")
    r.add_argument("address", metavar="NAME@DOMAIN")
    r.add_argument("--purge", action="store_true", help="delete the list's store too (members and all)")
    r.add_argument("--force", action="store_true", help="remove it even while qfiles of the list wait in a queue")
    r.set_defaults(func=cmd_remove, keeps_user=True)


def _row(site, key: str) -> dict:
    row = {"list": key, "file": site.list_files.get(key) or site.broken_lists.get(key),
           "broken": key not in site.lists, "members": 0, "enabled": 0, "disabled": 0, "held": 0}
    if key in site.lists and store.exists(site, key):
        s = store.open_store(site, key)
        members = s.members()
        row["members"] = len(members)
        row["enabled"] = sum(m.delivery_status == "enabled" for m in members)
        row["disabled"] = row["members"] - row["enabled"]
        row["held"] = len(s.pending("held_message"))
    return row


def cmd_lists(args) -> int:
    site = load_site(args)
    rows = [_row(site, list_key(lc)) for lc in site.iter_lists()] + \
        [_row(site, key) for key in sorted(site.broken_lists)]
    if args.json:
        print_json(rows)
        return 0
    for r in rows:
        if r["broken"]:
            print(f"{r['list']}  BROKEN: its file has errors, not served (listgate check)")
        else:
            print(f"{r['list']}  {r['members']} member(s): {r['enabled']} enabled, {r['disabled']} disabled; "
                  f"{r['held']} held")
    if not rows:
        print("no lists (listgate lists create NAME@DOMAIN --owner ADDR)", file=sys.stderr)
    return 0


def cmd_create(args) -> int:
    site = load_site(args)
    try:
        path = instance.create_list(site, args.address, args.owners, args.description)
    except ValueError as exc:
        fail(f"list not created: {exc}")
    given = args.address.strip()
    print(f"created {path}: list {given.lower()}, its store is made on first use; "
          "the running daemons serve it after their next config reload")
    name = given.rpartition("@")[0]
    if name != name.lower():   # addresses are matched without case: the name is its lower-case form
        print(f"note: list names are lower case: {name!r} is list {name.lower()!r} (file, store and addresses)")
    return 0


def _key(site, name: str) -> str:
    lc = site.get_list(name)
    if lc is not None:
        return list_key(lc)
    wanted = name.lower()
    for key in site.broken_lists:
        if key == wanted or key.partition("@")[0] == wanted:
            return key
    return wanted


def cmd_remove(args) -> int:
    site = load_site(args)
    try:
        done = instance.remove_list(site, _key(site, args.address), purge=args.purge, force=args.force)
    except ValueError as exc:
        fail(f"list not removed: {exc}")
    print(f"removed {done.path}")
    if done.store is None:
        print("it had no store (no member or mail yet): nothing kept or deleted")
    elif done.purged:
        print(f"deleted its store: {done.store}")
    else:
        print(f"kept its store (members, bounce info, held posts): {done.store}; "
              "'lists remove --purge' deletes it, 'lists create' with the same address uses it again")
    if done.queued:
        print("kept its qfiles: " + ", ".join(f"{n} in {q}" for q, n in done.queued.items())
              + " (listgate queue ls)")
    return 0
