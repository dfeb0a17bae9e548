"""``listgate members add|remove LIST ADDR... [--file FILE|-]``, ``members sync LIST FILE``, ``members find PATTERN``.

The changes themselves are :mod:`listgate.app.membership`'s. Output: problems
(invalid entries with their reasons) on stderr, then a summary line on
stdout (``--dry-run`` also prints each address it would add or remove, ``-v``
each address's outcome; ``--json`` the whole report). On a terminal a run of :data:`PROGRESS_FROM` entries or more
draws a progress bar on stderr. Exit status: 0 done, 1 when an entry was
invalid (the valid ones are still done) or the input unusable, 75 when the
store or the DNS could not be asked (a rerun finishes the job); ``find``
exits 1 when nothing matches.

One address on the command line (no ``--file``) keeps the single form's
output and errors: ``added ADDR (enabled)``, and exit 1 when it is already a
member (``add``) or not one (``remove``).
"""
from __future__ import annotations

import argparse
import sys

from ..app import membership
from .common import fail, print_json
from .members import EX_TEMPFAIL, guarded, json_parent, member_dict, name_addr, open_list_store, when

PROGRESS_FROM = 50      # entries: shorter runs finish before a bar would help
BAR_WIDTH = 30


def register(actions) -> None:
    """Add ``add``, ``remove``, ``sync`` and ``find`` to the ``members`` sub-commands."""
    common = argparse.ArgumentParser(add_help=False, parents=[json_parent()])
    common.add_argument("--notify-owners", action="store_true",
                        help="send the list's owners one notice listing every change")
    common.add_argument("--dry-run", action="store_true",
                        help="print each address that would be added or removed, change nothing")
    common.add_argument("-v", "--verbose", action="store_true", help="print each address's outcome")

    add = actions.add_parser("add", parents=[common], help="add members (ADDR..., or one per line from --file)")
    _entries_args(add)
    add.add_argument("--name", default="", help="display name (with one ADDR)")
    _force_arg(add)
    add.add_argument("--welcome", action=argparse.BooleanOptionalAction, default=False,
                     help="send each new member the list's welcome (default: no, the owners' own act)")
    add.set_defaults(func=guarded(cmd_add))

    rm = actions.add_parser("remove", parents=[common], help="remove members (ADDR..., or --file)")
    _entries_args(rm)
    rm.add_argument("--goodbye", action=argparse.BooleanOptionalAction, default=False,
                    help="send each removed member the list's goodbye (default: no)")
    rm.set_defaults(func=guarded(cmd_remove))

    sync = actions.add_parser("sync", parents=[common],
                              help="add and remove members so that the list's members are those of FILE")
    sync.add_argument("list")
    sync.add_argument("file", help="one address per line ('Name <addr>' allowed, # comments), - for standard input")
    sync.add_argument("--welcome", action=argparse.BooleanOptionalAction, default=False,
                      help="send each new member the welcome")
    sync.add_argument("--goodbye", action=argparse.BooleanOptionalAction, default=False,
                      help="send each removed member the goodbye")
    _force_arg(sync)
    sync.add_argument("--allow-empty", action="store_true", help="remove every member when FILE names no address")
    sync.set_defaults(func=guarded(cmd_sync))

    find = actions.add_parser("find", parents=[json_parent()],
                              help="members of every list whose address or name matches PATTERN",
                              description="Exit 0 when a member matches, 1 when none does (as grep).")
    find.add_argument("pattern", help="a substring, or a shell glob (*, ?, [...]); case-insensitive")
    find.set_defaults(func=guarded(cmd_find))


def _force_arg(parser) -> None:
    # one meaning of --force wherever members are added: skip the DNS check (a host without DNS)
    parser.add_argument("--force", action="store_true",
                        help="skip the DNS check: add even when the DNS says the domain takes no mail, "
                             "or cannot be asked")


def _entries_args(parser) -> None:
    parser.add_argument("list")
    parser.add_argument("addresses", nargs="*", metavar="ADDR", help="an address, or 'Name <addr>'")
    parser.add_argument("--file", metavar="FILE|-",
                        help="one address per line ('Name <addr>' allowed, blank lines and # comments "
                             "ignored), - for standard input")


def read_text(path: str) -> bytes:
    """The bytes of ``path`` (``-``: standard input); exits 1 with a message when unreadable."""
    try:
        if path == "-":
            return sys.stdin.buffer.read()
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}")
        raise  # not reached


def _from_file(path: str):
    try:
        return membership.parse_lines(read_text(path).decode("utf-8"))
    except UnicodeDecodeError:
        fail(f"{path}: not UTF-8 text")
        raise  # not reached


def _entries(args):
    """(entries, invalid lines) from ADDR... and --file; exits 2 when neither names anything."""
    entries, bad = membership.entries_of(args.addresses), []
    if args.file:
        found, bad = _from_file(args.file)
        entries += found
    elif not args.addresses:
        fail("name the addresses, or --file FILE (- for standard input)", 2)
    if getattr(args, "name", ""):
        if len(entries) != 1:
            fail("--name goes with exactly one address", 2)
        entries[0].display_name = args.name
    return entries, bad


class Bar:
    """A progress bar on stderr, only on a terminal and for :data:`PROGRESS_FROM` entries or more;
    redrawn when the percentage changes, erased at the end."""

    def __init__(self, what: str):
        self.what, self.shown = what, -1
        self.on = sys.stderr.isatty()

    def __call__(self, done: int, total: int) -> None:
        if not self.on or total < PROGRESS_FROM:
            return
        percent = done * 100 // total
        if done >= total:
            sys.stderr.write("\r" + " " * (BAR_WIDTH + len(self.what) + 30) + "\r")
        elif percent != self.shown:
            filled = BAR_WIDTH * done // total
            sys.stderr.write(f"\r{self.what} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{total}")
        else:
            return
        self.shown = percent
        sys.stderr.flush()


def _single(args) -> bool:
    return len(args.addresses) == 1 and not args.file


def _finish(args, report, bad=()) -> int:
    """Print the report (module docstring); the exit status."""
    report.invalid[:0] = list(bad)
    if args.json:
        print_json(report.as_dict())
    else:
        for entry, reason in report.invalid + report.deferred:
            print(f"listgate: {entry}: {reason}", file=sys.stderr)
        added, removed = ("would add", "would remove") if report.dry_run else ("added", "removed")
        if args.verbose or report.dry_run:     # --dry-run says what would change, address by address
            for verb, items in ((added, report.added), (removed, report.removed)):
                for address in items:
                    print(f"{verb} {address}")
        if args.verbose:
            for address in report.already:
                print(f"already a member: {address}")
            for address in report.not_members:
                print(f"not a member: {address}")
        counts = [(len(report.added), added), (len(report.already), "already members"),
                  (len(report.removed), removed), (len(report.not_members), "not members"),
                  (len(report.invalid), "invalid"), (len(report.deferred), "deferred (DNS, try again)")]
        shown = [f"{text} {n}" for n, text in counts if n] or ["nothing to do"]
        print(f"{report.list_key}: " + ", ".join(shown)
              + ("; owners notified" if args.notify_owners and not report.dry_run and (report.added or report.removed)
                 else ""))
    if report.deferred:
        return EX_TEMPFAIL
    return 1 if report.invalid else 0


def _single_result(args, store, report, verb: str) -> int:
    """The single form's output (module docstring)."""
    [entry] = args.addresses
    if report.invalid:
        reason = report.invalid[0][1]
        fail(f"{entry}: {reason}" + (" (--force adds it anyway)" if "receive mail" in reason else ""))
    if report.deferred:
        fail(f"{report.deferred[0][1]} (try again, or --force to add without it)", EX_TEMPFAIL)
    if report.already:
        fail(f"{report.already[0]} is already a member of {report.list_key}")
    if report.not_members:
        fail(f"{report.not_members[0]} is not a member of {report.list_key}")
    address = (report.added or report.removed)[0]
    if report.dry_run:
        print(f"would {'add' if verb == 'added' else 'remove'} {address}")
        return 0
    member = store.get_member(address) if verb == "added" else None
    if args.json:
        print_json(member_dict(member) if member else report.as_dict())
    else:
        print(f"{verb} {address}" + (f" ({member.delivery_status})" if member else ""))
    return 0


def cmd_add(args) -> int:
    """Add members; unless ``--force``, only at domains that take mail (null MX, NXDOMAIN, no MX and
    no address: invalid; the DNS cannot be asked: deferred, exit 75)."""
    _, store = open_list_store(args)
    entries, bad = _entries(args)
    lc = args.site.get_list(store.list_key)
    report = membership.add(args.site, lc, entries, welcome=args.welcome, notify_owners=args.notify_owners,
                            dry_run=args.dry_run, check_domains=not args.force, progress=Bar("adding"))
    if _single(args):
        return _single_result(args, store, report, "added")
    return _finish(args, report, bad)


def cmd_remove(args) -> int:
    _, store = open_list_store(args)
    entries, bad = _entries(args)
    lc = args.site.get_list(store.list_key)
    report = membership.remove(args.site, lc, [e.address for e in entries], goodbye=args.goodbye,
                               notify_owners=args.notify_owners, dry_run=args.dry_run, progress=Bar("removing"))
    if _single(args):
        return _single_result(args, store, report, "removed")
    return _finish(args, report, bad)


def cmd_sync(args) -> int:
    _, store = open_list_store(args)
    entries, bad = _from_file(args.file)
    if bad and not entries and not args.allow_empty:
        for entry, reason in bad:
            print(f"listgate: {entry}: {reason}", file=sys.stderr)
    lc = args.site.get_list(store.list_key)
    report = membership.sync(args.site, lc, entries, welcome=args.welcome, goodbye=args.goodbye,
                             notify_owners=args.notify_owners, dry_run=args.dry_run, check_domains=not args.force,
                             allow_empty=args.allow_empty, progress=Bar("syncing"))
    return _finish(args, report, bad)


def cmd_find(args) -> int:
    from .common import load_site
    found = membership.find(load_site(args), args.pattern)
    if args.json:
        print_json([{"list": key, **member_dict(m)} for key, m in found])
        return 0
    for key, m in found:
        print(f"{key}  {name_addr(m.display_name, m.address)}  {m.delivery_status}  since {when(m.subscribed_at)}")
    print(f"{len(found)} member(s) found", file=sys.stderr)
    return 0 if found else 1
