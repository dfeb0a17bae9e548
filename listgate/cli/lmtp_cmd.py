"""``listgate lmtp``: run the LMTP server (RFC 2033) on ``lmtp.socket`` in the foreground.

Until SIGTERM/SIGINT (exit 0). Exit 1 when the configuration is bad or sets
no ``lmtp.socket``, 71 (EX_OSERR) when the socket cannot be bound. Tells
systemd it is ready once the socket is bound (:mod:`listgate.sdnotify`).
"""
from __future__ import annotations

from .common import run_async_server


def register(sub) -> None:
    p = sub.add_parser("lmtp", help="run the LMTP server (list mail from Postfix's or Exim's queue)")
    p.add_argument("--socket", help="override lmtp.socket (unix:PATH or inet:PORT@HOST)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="override logging.level")
    p.set_defaults(func=cmd_lmtp)


def _server(watcher, socket_spec):
    from ..lmtp import LmtpServer  # aiosmtpd loads only for this command
    return LmtpServer(watcher.current, socket_spec)


def cmd_lmtp(args) -> int:
    return run_async_server(args, "listgate-lmtp", _server, "LMTP server")
