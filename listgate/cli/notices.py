"""``listgate notices list|show``: the notice texts an admin can override (:mod:`listgate.app.texts`)."""
from __future__ import annotations

import sys

from ..app import texts
from .common import fail, get_list, load_site


def register(sub) -> None:
    p = sub.add_parser("notices", help="the notices and replies whose texts can be overridden",
                       description="Every notice is a template NAME.txt; a copy in the list's or the site's "
                                   "templates_dir (or its LANG/ folder) overrides the built-in text. "
                                   "listgate check validates the copies.")
    s = p.add_subparsers(dest="notices_command", metavar="SUBCOMMAND", required=True)
    q = s.add_parser("list", help="every notice name with its placeholders")
    q.add_argument("--table", action="store_true", help="as the Markdown table in INSTALL")
    q.set_defaults(func=cmd_list)
    q = s.add_parser("show", help="print a notice's template (to copy into a templates_dir and edit)")
    q.add_argument("name", help="notice name (listgate notices list)")
    q.add_argument("--list", dest="list_name", metavar="LIST",
                   help="the template this list uses now (its overrides, the site's, its language), "
                        "and where it comes from (on stderr); default: the built-in one")
    q.add_argument("--language", help="the built-in template in this language, if there is one")
    q.set_defaults(func=cmd_show)


def table() -> str:
    """The Markdown table of every notice (INSTALL carries it; a test keeps the two equal)."""
    lines = ["| notice | placeholders (besides the common ones) | what it is |", "|---|---|---|"]
    for name, notice in texts.NOTICES.items():
        own = ", ".join(f"`${f}`" for f in notice.fields) or "-"
        lines.append(f"| `{name}` | {own} | {notice.about}{' (site notice)' if notice.site else ''}"
                     f"{' (part of a reply, no Subject)' if not notice.subject else ''} |")
    return "\n".join(lines)


def cmd_list(args) -> int:
    if args.table:
        print(table())
        return 0
    for name, notice in texts.NOTICES.items():
        print(f"{name}: " + " ".join(f"${f}" for f in texts.placeholders(name)))
    return 0


def cmd_show(args) -> int:
    if args.name not in texts.NOTICES:
        fail(f"unknown notice {args.name!r} (listgate notices list)")
    if args.list_name:
        lc = get_list(load_site(args), args.list_name)
        for label, where in texts.candidates(args.name, lc):
            data = texts.read(where)
            if data is None:
                continue
            try:
                texts.parse(args.name, data)
            except texts.TemplateProblem as exc:
                print(f"{label}: skipped: {exc}", file=sys.stderr)
                continue
            print(f"from {label}", file=sys.stderr)
            sys.stdout.write(data.decode("utf-8"))
            return 0
    sys.stdout.write(texts.builtin(args.name, args.language).decode("utf-8"))
    return 0
