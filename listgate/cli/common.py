"""Helpers shared by sub-commands: loading the site, printing, errors."""
from __future__ import annotations

import json
import os
import sys
from typing import Any

from .. import config


def load_site(args) -> config.Site:
    """The site named by ``-c``/``$LISTGATE_CONFIG``; exits 1 with every error on bad site config.

    A broken list file does not stop commands about the other lists
    (``strict=False``); :func:`get_list` names it when it is the one asked for.
    """
    try:
        return config.load(getattr(args, "config", None), strict=False)
    except config.ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        raise SystemExit(1) from None


def become_state_owner(args, *, missing_ok: bool = False) -> None:
    """Run as root: become the user and group that own ``state_dir`` (mlmmj's rule), or exit 1.

    Called by :func:`listgate.cli.main` before a command touches anything, so what
    it writes (stores, qfiles, their directories) belongs to the daemons' user.
    Nothing happens when not root, with ``--as-root``, or when ``state_dir`` is
    root's own. Supplementary groups are those of the owner's passwd entry
    (none when it has no entry). A missing ``state_dir`` is an error: creating
    it as root is exactly what this prevents, unless ``missing_ok`` (``check``,
    which creates nothing and reports it).
    """
    if os.geteuid() != 0 or getattr(args, "as_root", False):
        return
    import pwd
    site = load_site(args)
    try:
        st = os.stat(site.state_dir)
    except OSError as exc:
        if missing_ok:
            return
        fail(f"state_dir {site.state_dir}: {exc.strerror}; create it owned by listgate's user "
             "(INSTALL, section 2), or run with --as-root")
    if st.st_uid == 0:
        return
    try:
        os.initgroups(pwd.getpwuid(st.st_uid).pw_name, st.st_gid)
    except KeyError:
        os.setgroups([])
    os.setgid(st.st_gid)
    os.setuid(st.st_uid)
    # This Python must still be able to load its own modules (a command imports
    # some only when it needs them): one installed under /root (pyenv, a venv
    # made with root's python3) is not, and would fail later with a traceback.
    stdlib = os.path.dirname(os.__file__)
    if not os.access(stdlib, os.R_OK | os.X_OK):
        fail(f"after becoming {st.st_uid} (the owner of state_dir {site.state_dir}) this Python cannot "
             f"read its own library {stdlib}: install listgate with a Python that user can run "
             "(INSTALL, section 2: /usr/bin/python3 -m venv), or run with --as-root")


def get_list(site: config.Site, name: str):
    """The list named ``name`` or ``name@domain``; exits 1 with a clear message if unknown or broken."""
    lc = site.get_list(name)
    if lc is None:
        wanted = name.lower() if "@" in name else None
        for key, fpath in site.broken_lists.items():
            if key == wanted or (wanted is None and key.partition("@")[0] == name.lower()):
                fail(f"list {key} is not loaded, its file has errors:\n" + "\n".join(site.list_errors[fpath]))
        known = ", ".join(sorted(site.lists)) or "none"
        fail(f"unknown list {name!r} (lists: {known})")
    return lc


def fail(message: str, status: int = 1) -> None:
    print(f"listgate: {message}", file=sys.stderr)
    raise SystemExit(status)


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


EX_OSERR = 71


def start_daemon(site, name: str, **extra) -> None:
    """What every long-running daemon does at start: write its record under ``STATE_DIR/run``
    (pid, restart-only settings: :mod:`listgate.daemons`; removed at exit) and start counting
    metrics when ``metrics.listen`` is set (:mod:`listgate.metrics`). A run directory that
    cannot be written costs the record (logged), never the daemon."""
    import atexit

    from .. import daemons, metrics
    from ..log import events
    log = events("listgate")
    try:
        daemons.write_record(site, name, **extra)
        atexit.register(daemons.remove_record, site, name)
    except OSError as exc:
        log.warning("daemon_record_failed", "cannot write the daemon record", path=daemons.record_path(site, name), error=exc)
    try:
        metrics.enable(site)
    except OSError as exc:
        log.error("metrics_off", "metrics off: cannot use the metrics directory", path=metrics.directory(site), error=exc)


def run_async_server(args, program: str, make_server, what: str) -> int:
    """Run an asyncio server (policy, LMTP) in the foreground until SIGTERM/SIGINT; exit 0.

    ``make_server(watcher, socket_spec)`` returns an object with ``async start()``,
    ``async close()`` and ``socket_spec``; ``args.socket`` overrides the configured
    socket, ``args.log_level`` the log level. Exit 1 on bad configuration (or a
    ValueError from ``make_server``/``start``), 71 (EX_OSERR) when the socket cannot be
    bound. Tells systemd it is ready once bound (:mod:`listgate.sdnotify`).
    """
    import asyncio
    import signal

    from .. import log as lg_log, sdnotify

    try:
        watcher = config.Watcher(getattr(args, "config", None))
    except config.ConfigError as exc:
        print("\n".join(exc.errors), file=sys.stderr)
        return 1
    lg_log.setup(watcher.current().conf.logging, program=program, level=args.log_level)
    config.log_list_errors(watcher.current())
    log = lg_log.events(program.replace("-", "."))
    start_daemon(watcher.current(), program.rpartition("-")[2])

    async def serve() -> int:
        try:
            server = make_server(watcher, args.socket)
        except ValueError as exc:
            log.error("setup_failed", str(exc))
            return 1
        except OSError as exc:
            log.error("setup_failed", f"cannot set up the {what}", error=exc)
            return EX_OSERR
        try:
            await server.start()
        except OSError as exc:
            log.error("listen_failed", f"cannot listen on {server.socket_spec}", socket=server.socket_spec, error=exc)
            return EX_OSERR
        except ValueError as exc:
            log.error("setup_failed", str(exc))
            return 1
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        sdnotify.ready(f"{what} on {server.socket_spec}")
        await stop.wait()
        sdnotify.stopping()
        log.info("stopping", f"{what} stopping")
        await server.close()
        return 0

    return asyncio.run(serve())
