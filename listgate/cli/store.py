"""``listgate store init`` and ``listgate store copy``: the shared PostgreSQL store.

``init`` creates (or brings forward) the schema of the database named by the
site config's ``store.url``; the daemons never change it. ``copy`` moves the
state of every list between the instance's SQLite files and a PostgreSQL
database (:mod:`listgate.store.copy`). URLs are shown with any password masked.
"""
from __future__ import annotations

from ..config import Frozen, mask_url
from ..config.loader import url_problem
from ..store import init_schema
from .common import fail, load_site


def register(sub) -> None:
    p = sub.add_parser("store", help="the list store: init (PostgreSQL schema), copy (SQLite <-> PostgreSQL)")
    actions = p.add_subparsers(dest="store_command", metavar="ACTION", required=True)
    a = actions.add_parser("init", help="create or migrate the PostgreSQL schema named by store.url")
    a.set_defaults(func=cmd_init)
    a = actions.add_parser("copy", help="copy every list's state between the SQLite files and PostgreSQL "
                                        "(the destination's rows of each list are replaced)")
    a.add_argument("--to", required=True, metavar="URL|sqlite", help="postgresql://USER@HOST/DB, or sqlite")
    a.add_argument("--from", dest="source", default="sqlite", metavar="URL|sqlite",
                   help="where from (default %(default)s)")
    a.add_argument("--password-file", help="the PostgreSQL password (default: store.password_file)")
    a.set_defaults(func=cmd_copy)


def cmd_init(args) -> int:
    site = load_site(args)
    conf = site.conf.store
    if not conf.url:
        print("store: sqlite (the SQLite files are made on first use); nothing to do")
        return 0
    applied = init_schema(conf)
    print(f"{mask_url(conf.url)}: " + (f"schema migrated to version {applied[-1]}" if applied else "schema up to date"))
    return 0


def _side(site, spec: str, password_file: str | None) -> Frozen:
    """A store config for ``spec`` ("sqlite" or a PostgreSQL URL) with the site's timeouts."""
    conf = site.conf.store
    if spec == "sqlite":
        return Frozen({**conf._data, "url": None})
    problem = url_problem(spec)
    if problem:
        fail(problem)
    # no statement_timeout: copying a large list is one long transaction
    return Frozen({**conf._data, "url": spec, "password_file": password_file or conf.password_file,
                   "statement_timeout": 0})


def cmd_copy(args) -> int:
    site = load_site(args)
    source, target = _side(site, args.source, args.password_file), _side(site, args.to, args.password_file)
    if bool(source.url) == bool(target.url):
        fail("copy goes from sqlite to a postgresql:// URL or back (--from URL --to sqlite)")
    from ..store.copy import TABLES, copy

    def progress(key, counts):
        print(f"{key}: " + ", ".join(f"{counts[t]} {t}" for t in TABLES))

    report = copy(site, source, target, progress)
    where = mask_url(target.url) if target.url else "the SQLite files"
    print(f"copied {len(report.counts)} list(s) to {where}; row counts checked")
    return 0
