"""``listgate import mailman21 PREFIX [--list NAME ...] [--dry-run] [--force] [--json]``.

Moves a Mailman 2.1 site (lists, members, bounce info, pending records, held
messages, queue entries) into listgate: :mod:`listgate.migrate.run`. Run it
on a copy of the Mailman tree or with Mailman stopped (it refuses while
Mailman's locks are live). Exit status: 0 everything placed, 1 something
reported unplaced or refused (see the report file), 2 refused to start,
75 (EX_TEMPFAIL) when a store or queue cannot be written now.
"""
from __future__ import annotations

import sys
from dataclasses import asdict

from .common import load_site, print_json

DIGEST_NOTE = ("digest members were imported with their mode kept and get the list's digest; its numbering "
               "starts again at volume 1, issue 1")


def register(sub) -> None:
    parser = sub.add_parser("import", help="move a site from another list manager")
    kinds = parser.add_subparsers(dest="source", metavar="SOURCE")
    mm = kinds.add_parser("mailman21", help="a Mailman 2.1 tree (PREFIX: its lists/, data/, qfiles/, locks/)")
    mm.add_argument("prefix", metavar="PREFIX")
    mm.add_argument("--list", dest="lists", action="append", metavar="NAME", help="only this list (repeatable)")
    mm.add_argument("--dry-run", action="store_true", help="report what would be done; write nothing")
    mm.add_argument("--force", action="store_true", help="overwrite existing lists.d/NAME.yaml files")
    mm.add_argument("--json", action="store_true", help="print JSON for scripts")
    mm.set_defaults(func=_mailman21)
    parser.set_defaults(func=lambda args: (parser.print_help(sys.stderr), 2)[1])


def _mailman21(args) -> int:
    from ..migrate.run import ImportRefused, run
    site = load_site(args)
    try:
        summary = run(site, args.prefix, names=args.lists, dry_run=args.dry_run, force=args.force)
    except ImportRefused as exc:
        print(f"listgate: import refused: {exc}", file=sys.stderr)
        return 2
    if args.json:
        data = asdict(summary)
        data["complete"] = summary.complete
        data["digest_note"] = DIGEST_NOTE if summary.digest_members else None
        print_json(data)
    else:
        _print(summary)
    return 0 if summary.complete else 1


def _print(s) -> None:
    out = sys.stdout.write
    out(("DRY RUN: nothing was written\n" if s.dry_run else "") +
        "Mailman 2.1 import (run it on a copy or with Mailman stopped)\n")
    for name, info in sorted(s.lists.items()):
        out(f"list {name}: {info.get('yaml', '-')} (from {info.get('source', '?')}); "
            f"{len(info.get('unmapped', []))} settings do not map\n")
        if info.get("fallback"):
            out(f"  {info['fallback']}\n")
        for note in info.get("notes", []):
            out(f"  note: {note}\n")
    members = ", ".join(f"{k} {v}" for k, v in sorted(s.members.items())) or "none"
    out(f"members added: {members} (skipped {s.members_skipped})\n")
    out(f"digest members: {s.digest_members}" + (f" ({DIGEST_NOTE})\n" if s.digest_members else "\n"))
    out(f"moderated members: {s.moderated_members}\nbounce records: {s.bounce_records}\n")
    out(f"pending records placed: {s.pending_placed}, unplaced: {s.pending_unplaced}, "
        f"expired (not moved): {s.pending_expired}\n")
    out(f"held messages: {s.held_messages}\nqueue entries moved: {s.queue_moved}, refused (to bad): "
        f"{s.queue_refused}\n")
    if s.already_done:
        out(f"already moved by an earlier run: {s.already_done}\n")
    for p in s.problems:
        out(f"problem: {p['what']} ({p['where']}): {p['reason']}\n")
    if s.report_file:
        out(f"report (unplaced records with their content, unmapped settings): {s.report_file}\n")
