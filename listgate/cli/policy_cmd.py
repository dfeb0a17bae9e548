"""``listgate policy``: run the policy delegation server on ``policy.socket``.

Runs in the foreground until SIGTERM/SIGINT (exit 0). Logs via
:func:`listgate.log.setup` (stderr or syslog facility ``mail``) from the event
loop's own thread, as Postfix's own daemons do (a local syslog socket or
stderr takes a line without waiting). Tells
systemd it is ready (``Type=notify``, :mod:`listgate.sdnotify`) once the
socket is bound. Exit 1 on bad configuration, 71 (EX_OSERR) if the socket
cannot be bound (or a live server already holds it).
"""
from __future__ import annotations

import asyncio
import logging
import signal
import sys

from .. import config, log as lg_log, sdnotify
from ..policy import PolicyServer

EX_OSERR = 71


def register(sub) -> None:
    p = sub.add_parser("policy", help="run the SMTP access policy delegation server (Postfix, Exim)")
    p.add_argument("--socket", help="override policy.socket (unix:PATH or inet:PORT@HOST)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="override logging.level")
    p.set_defaults(func=cmd_policy)


def cmd_policy(args) -> int:
    try:
        watcher = config.Watcher(getattr(args, "config", None))
    except config.ConfigError as exc:
        print("\n".join(exc.errors), file=sys.stderr)
        return 1
    site = watcher.current()
    lg_log.setup(site.conf.logging, program="listgate-policy", level=args.log_level)
    return asyncio.run(_serve(watcher, args.socket))


async def _serve(watcher: config.Watcher, socket_spec: str | None) -> int:
    log = logging.getLogger("listgate.policy")
    server = PolicyServer(watcher.current, socket_spec)
    try:
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
    sdnotify.ready(f"policy server on {server.socket_spec}")
    await stop.wait()
    sdnotify.stopping()
    log.info("policy server stopping")
    await server.close()
    return 0
