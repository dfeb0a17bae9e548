"""Helpers shared by sub-commands: loading the site, printing, errors."""
from __future__ import annotations

import json
import sys
from typing import Any

from .. import config


def load_site(args) -> config.Site:
    """The site named by ``-c``/``$LISTGATE_CONFIG``; exits 1 with every error on bad config."""
    try:
        return config.load(getattr(args, "config", None))
    except config.ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        raise SystemExit(1) from None


def get_list(site: config.Site, name: str):
    """The list named ``name`` or ``name@domain``; exits 1 with a clear message if unknown."""
    lc = site.get_list(name)
    if lc is None:
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


def run_async_server(args, program: str, make_server, what: str) -> int:
    """Run an asyncio server (policy, LMTP) in the foreground until SIGTERM/SIGINT; exit 0.

    ``make_server(watcher, socket_spec)`` returns an object with ``async start()``,
    ``async close()`` and ``socket_spec``; ``args.socket`` overrides the configured
    socket, ``args.log_level`` the log level. Exit 1 on bad configuration (or a
    ValueError from ``make_server``/``start``), 71 (EX_OSERR) when the socket cannot be
    bound. Tells systemd it is ready once bound (:mod:`listgate.sdnotify`).
    """
    import asyncio
    import logging
    import signal

    from .. import log as lg_log, sdnotify

    try:
        watcher = config.Watcher(getattr(args, "config", None))
    except config.ConfigError as exc:
        print("\n".join(exc.errors), file=sys.stderr)
        return 1
    lg_log.setup(watcher.current().conf.logging, program=program, level=args.log_level)
    log = logging.getLogger(program.replace("-", "."))

    async def serve() -> int:
        try:
            server = make_server(watcher, args.socket)
            await server.start()
        except OSError as exc:
            log.error("cannot listen on %s: %s", server.socket_spec, exc)
            return EX_OSERR
        except ValueError as exc:
            log.error("%s", exc)
            return 1
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        sdnotify.ready(f"{what} on {server.socket_spec}")
        await stop.wait()
        sdnotify.stopping()
        log.info("%s stopping", what)
        await server.close()
        return 0

    return asyncio.run(serve())
