"""``listgate init DIR``, ``listgate check`` and ``listgate conf-path``."""
from __future__ import annotations

import os
import sys
import sysconfig

from .. import config, daemons, instance, log as lg_log, verp
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

    p = sub.add_parser("check", help="validate the site config and every list; report files state_dir's owner does not own",
                       description="Exit 0 when everything is right, 1 otherwise. Site errors (the site file, "
                                   "VERP keys, state directories) are fatal: the daemons refuse to start. "
                                   "A list whose file has errors keeps, in a running daemon, the configuration "
                                   "it had before the edit; a daemon started with the file answers 451 4.3.0 "
                                   "for its addresses; the other lists are served either way; files in state_dir, queue_dir or "
                                   "the VERP keys or the store's password_file not owned by state_dir's owner are "
                                   "reported, as are secrets (VERP keys, password_file) the group or others may "
                                   "read, and notice templates with errors (listgate notices) "
                                   "and running daemons that use an older value of a setting they read only at "
                                   "start (listgate reload, or a restart, applies it).")
    p.add_argument("--site-only", action="store_true",
                   help="exit 1 only for site errors; list errors and ownership are still printed "
                        "(what the systemd units run before starting: one broken list must not stop the others)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("conf-path", help="print the directory holding conf/ (reference YAML, Postfix and Exim "
                                         "snippets, systemd units), INSTALL and docs/ of this installation")
    p.set_defaults(func=cmd_conf_path)


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
    site = load_site(args)                   # a site error: printed, exit 1
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
    broken = f", {len(site.list_errors)} list file(s) with errors (on stderr)" if site.list_errors else ""
    print(f"{site.path}: site ok, {len(site.lists)} list(s) valid{broken}, state in {site.state_dir}")
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
    from ..app import texts
    warnings = _list_errors(site) + _ownership(site) + _secrets(site) + texts.check_site(site) + daemons.stale_settings(site)
    syslog = lg_log.syslog_problem(site.conf.logging)
    if syslog:   # the daemons still run, logging to stderr: a warning, not a site error
        warnings.append(f"{site.path}: logging.destination: syslog: {syslog}; the daemons will log to "
                        "stderr instead (journald under systemd)")
    for line in warnings:
        print(line, file=sys.stderr)
    _warn_case_duplicates(site)
    return 0 if not warnings or args.site_only else 1


def _list_errors(site) -> list[str]:
    """Each refused list file's errors, then what the daemons do about it."""
    lines = [e for errs in site.list_errors.values() for e in errs]
    owners = {f: k for k, f in site.broken_lists.items()}
    for fpath in site.list_errors:
        key = owners.get(fpath)
        lines.append(f"{fpath}: {daemons.broken_list_effect(site, key, fpath)}"
                     if key else f"{fpath}: ignored (no valid name and domain in it): fix or remove it")
    return lines


MAX_OWNERSHIP_LINES = 20


def _ownership(site) -> list[str]:
    """Files under state_dir and queue_dir, the VERP keys and the password file, that state_dir's owner
    does not own.

    The daemons run as that user (INSTALL, section 2): a store, qfile or key of
    another user (root, after a command run with --as-root) is one they cannot
    write or read.
    """
    try:
        uid = os.stat(site.state_dir).st_uid
    except OSError:
        return []                            # not made yet: nothing in it
    paths = _secret_files(site)
    seen: set[str] = set()
    for top in (site.state_dir, site.queue_dir):
        for dirpath, dirnames, filenames in os.walk(top):
            if dirpath in seen:
                dirnames[:] = []
                continue
            seen.add(dirpath)
            paths.append(dirpath)
            paths.extend(os.path.join(dirpath, name) for name in filenames)
    wrong = []
    for path in dict.fromkeys(paths):
        try:
            st = os.lstat(path)
        except OSError:
            continue                         # gone meanwhile (a runner moved the qfile)
        if st.st_uid != uid:
            wrong.append((path, st.st_uid))
    try:
        import pwd
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    lines = [f"{path}: owned by uid {owner}, not by {user} (state_dir's owner, the daemons' user): "
             f"chown {user} it" for path, owner in wrong[:MAX_OWNERSHIP_LINES]]
    if len(wrong) > MAX_OWNERSHIP_LINES:
        lines.append(f"... and {len(wrong) - MAX_OWNERSHIP_LINES} more file(s) not owned by {user}")
    return lines


def _secret_files(site) -> list[str]:
    """The VERP key files and the store's password_file: the daemons' secrets."""
    return [k.file for k in site.conf.verp.keys] + ([site.conf.store.password_file]
                                                      if site.conf.store.password_file else [])


def _secrets(site) -> list[str]:
    """A VERP key or password file that the group or others may read (it should be mode 0600;
    its owner is :func:`_ownership`'s business)."""
    lines = []
    for path in dict.fromkeys(_secret_files(site)):
        try:
            mode = os.stat(path).st_mode & 0o7777
        except OSError as exc:
            lines.append(f"{path}: {exc.strerror}")
            continue
        if mode & 0o077:
            lines.append(f"{path}: mode {mode:04o} lets {'others' if mode & 0o007 else 'its group'} read a "
                         f"secret: chmod 600 {path}")
    return lines


def data_dir() -> str | None:
    """Where this installation keeps conf/, INSTALL and docs/: ``PREFIX/share/listgate`` of a
    wheel install (setup.py's data_files), or the source tree of an editable one; None if neither."""
    import site as py_site
    candidates = [os.path.join(sys.prefix, "share", "listgate"),
                  os.path.join(sysconfig.get_path("data"), "share", "listgate"),
                  os.path.join(py_site.getuserbase(), "share", "listgate"),
                  os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))]
    for path in candidates:
        if os.path.isfile(os.path.join(path, "INSTALL")) and os.path.isdir(os.path.join(path, "conf")):
            return path
    return None


def cmd_conf_path(args) -> int:
    path = data_dir()
    if path is None:
        print("listgate: conf/ and INSTALL are not installed with this copy of listgate", file=sys.stderr)
        return 1
    print(path)
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


def _warn_case_duplicates(site) -> None:
    """A warning line (stderr) per pair of members whose addresses differ only in case, on a
    list that matches them as one (made before that rule, or case-sensitive until lately).

    Both stay members and both get posts; an address finds the one spelt exactly so, else
    the oldest. Not an error (the exit status does not change): the owner decides which goes.
    Reads only stores that exist (a check creates none).
    """
    from ..store import StoreUnavailable, open_store, store_path
    for key in sorted(site.lists):
        if not site.conf.store.url and not os.path.exists(store_path(site, key)):
            continue
        try:
            groups = open_store(site, key).case_duplicates()
        except StoreUnavailable as exc:
            print(f"{key}: warning: members not read for spellings that differ only in case: {exc}",
                  file=sys.stderr)
            continue
        for group in groups:
            spellings = ", ".join(m.address for m in group)
            print(f"{key}: warning: one address, {len(group)} members ({spellings}): each gets posts; "
                  f"keep one with 'listgate members remove {key} ADDRESS' (spelt exactly)", file=sys.stderr)
