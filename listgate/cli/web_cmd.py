"""``listgate web``: run the web front end (one-click unsubscribe, RFC 8058) in the foreground.

Until SIGTERM/SIGINT (exit 0). Exit 1 when the configuration is bad or sets
no (or an unfit) ``web.base_url``, 71 (EX_OSERR) when ``web.listen`` cannot be
bound. Tells systemd it is ready once listening (:mod:`listgate.sdnotify`).
"""
from __future__ import annotations

from .common import run_async_server


def register(sub) -> None:
    p = sub.add_parser("web", help="run the web front end (one-click unsubscribe links, RFC 8058)")
    p.add_argument("--socket", help="override web.listen (inet:PORT@HOST or unix:PATH)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="override logging.level")
    p.set_defaults(func=cmd_web)


def _server(watcher, socket_spec):
    from ..web.server import WebServer  # aiohttp loads only for this command
    return WebServer(watcher.current, socket_spec)


def cmd_web(args) -> int:
    return run_async_server(args, "listgate-web", _server, "web front end")
