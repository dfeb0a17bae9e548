"""``listgate init DIR`` and ``listgate check``."""
from __future__ import annotations

import os
import sys

from .. import config, instance, verp
from ..addresses import list_key
from ..config import format_duration
from .common import load_site


def register(sub) -> None:
    p = sub.add_parser("init", help="create a self-contained instance under DIR")
    p.add_argument("directory")
    p.add_argument("--list", dest="list_name", default="demo", help="name of the example list (default demo)")
    p.add_argument("--domain", default="lists.example.org", help="the list's domain (default %(default)s)")
    p.add_argument("--owner", help="owner address (default owner@DOMAIN)")
    p.add_argument("--hostname", default="localhost",
                   help="this host's name, used in Message-IDs and notices (default %(default)s)")
    p.add_argument("--milter-socket", default="unix:milter.sock",
                   help="milter.socket: unix:PATH (a relative PATH is under the state directory) or inet:PORT@HOST (default %(default)s)")
    p.add_argument("--policy-socket", default="inet:10040@127.0.0.1",
                   help="policy.socket; two instances on one host need different ones (default %(default)s)")
    p.add_argument("--reinject-port", type=int, default=10026,
                   help="port of the MTA's re-injection smtpd on 127.0.0.1 (default %(default)s)")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("check", help="validate the site config and every list")
    p.set_defaults(func=cmd_check)


def cmd_init(args) -> int:
    try:
        path = instance.init(args.directory, name=args.list_name, domain=args.domain, owner=args.owner,
                             hostname=args.hostname, milter_socket=args.milter_socket,
                             policy_socket=args.policy_socket, reinject_port=args.reinject_port)
    except FileExistsError as exc:
        print(f"listgate: {exc}", file=sys.stderr)
        return 1
    try:
        config.load(path)
    except config.ConfigError as exc:  # e.g. --list with an unsafe name
        print("\n".join(exc.errors), file=sys.stderr)
        return 1
    print(f"created {path}")
    print(f"use it with: listgate -c {path} check   (or export LISTGATE_CONFIG={path})")
    return 0


def cmd_check(args) -> int:
    from ..app import signing
    site = load_site(args)
    problems = verp.check_keys(site) + signing.check_keys(site)
    for what, path in (("state_dir", site.state_dir), ("queue_dir", site.queue_dir)):
        # a missing directory is made on first use; its nearest existing ancestor must allow that
        existing = path
        while not os.path.lexists(existing) and os.path.dirname(existing) != existing:
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            problems.append(f"{what} {path} is not a directory ({existing} is a file)")
        elif not os.access(existing, os.W_OK | os.X_OK):
            problems.append(f"{what} {path} is not writable")
    if site.conf.milter.preallocate_qfiles is not None:  # deprecated: a warning, not a problem
        print(f"{site.path}: milter.preallocate_qfiles: deprecated and ignored (qfiles are no longer "
              "written in advance): delete it", file=sys.stderr)
    if problems:
        for problem in problems:
            where = problem.split(" ", 1)[0] if problem.startswith(("state_dir", "queue_dir")) else "verp.keys"
            print(f"{site.path}:1: {where}: {problem}", file=sys.stderr)
        return 1
    _warn_bad(site)
    print(f"{site.path}: ok, {len(site.lists)} list(s), state in {site.state_dir}")
    store = site.conf.store
    if store.url:   # never the password: it is masked in the URL, and password_file is only named
        print(f"store: PostgreSQL {config.mask_url(store.url)}"
              + (f", password from {store.password_file}" if store.password_file else "")
              + f", pool {store.pool.min}-{store.pool.max} per process")
    else:
        print(f"store: SQLite, one file per list in {os.path.join(site.state_dir, 'lists')}")
    for lc in site.iter_lists():
        print(f"{list_key(lc)}: {lc.posting_policy}, {len(lc.owners)} owner(s), "
              f"bounce threshold {lc.bounce_score_threshold:g}, stale after {format_duration(lc.bounce_info_stale_after)}, "
              f"{lc.bounce_you_are_disabled_warnings} warning(s) every {format_duration(lc.bounce_you_are_disabled_warnings_interval)}")
    return 0


def _warn_bad(site) -> None:
    """A warning line (stderr) when the ``bad`` queue holds mail: members may not have had it."""
    from ..runner.tasks import bad_entries
    if not os.path.isdir(os.path.join(site.queue_dir, "bad")):
        return
    entries = bad_entries(site)
    if entries:
        qid, meta = entries[0]
        print(f"{site.path}: warning: {len(entries)} qfile(s) in the bad queue, oldest {qid} "
              f"({(meta or {}).get('reason') or 'unreadable'}); see 'listgate queue ls bad', "
              "then 'listgate queue requeue ID|--all'", file=sys.stderr)
