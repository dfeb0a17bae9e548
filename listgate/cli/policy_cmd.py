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

from ..policy import PolicyServer
from .common import EX_OSERR, run_async_server  # noqa: F401 - EX_OSERR: this command's exit status


def register(sub) -> None:
    p = sub.add_parser("policy", help="run the SMTP access policy delegation server (Postfix, Exim)")
    p.add_argument("--socket", help="override policy.socket (unix:PATH or inet:PORT@HOST)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="override logging.level")
    p.set_defaults(func=cmd_policy)


def cmd_policy(args) -> int:
    return run_async_server(args, "listgate-policy", lambda watcher, spec: PolicyServer(watcher.current, spec),
                            "policy server")
