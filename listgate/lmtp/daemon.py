"""The LMTP server's socket and life cycle (asyncio; ``listgate lmtp``, ``listgate serve``).

``lmtp.socket`` is ``unix:PATH`` (relative to ``state_dir``; created under
umask 0177, then given ``lmtp.socket_mode``, a stale file from a dead server
removed, a live one refused: :mod:`listgate.sockets`) or ``inet:PORT@HOST``.
The configuration is taken at each MAIL from ``get_site()`` (hot reload);
moving the socket needs a restart.
"""
from __future__ import annotations

import asyncio
from typing import Callable

from .. import sockets
from ..config import Site, parse_socket
from ..log import events
from .server import protocol_factory

log = events("listgate.lmtp")


class LmtpServer:
    """Serve LMTP on ``socket_spec`` (default: the site's ``lmtp.socket``).

    ``await start()`` raises OSError when the socket cannot be bound (a live
    server holds the unix socket: EADDRINUSE; the path is not a socket:
    EEXIST), ValueError when no socket is configured or ``lmtp.socket_mode``
    is not octal. Then ``await close()``.
    """

    def __init__(self, get_site: Callable[[], Site], socket_spec: str | None = None):
        self.get_site = get_site
        site = get_site()
        self.socket_spec = socket_spec or site.conf.lmtp.socket
        if not self.socket_spec:
            raise ValueError("lmtp.socket is not set in the site config: no LMTP server to run")
        self.kind, where = parse_socket(self.socket_spec)
        self.where = site.resolve(where) if self.kind == "unix" else where
        self._server: asyncio.AbstractServer | None = None

    @property
    def address(self):
        """``("unix", path)`` or ``("inet", (host, port))`` actually bound (port 0 resolved)."""
        if self.kind == "inet" and self._server is not None:
            return "inet", self._server.sockets[0].getsockname()[:2]
        return self.kind, self.where

    async def start(self) -> None:
        site = self.get_site()
        loop = asyncio.get_running_loop()
        factory = protocol_factory(site, self.get_site)
        if self.kind == "unix":
            mode = sockets.parse_mode(site.conf.lmtp.socket_mode, "lmtp.socket_mode")
            sock = sockets.bound_unix(self.where, mode)
            try:
                self._server = await loop.create_unix_server(factory, sock=sock, backlog=128)
            except BaseException:
                sock.close()
                raise
        else:
            host, port = self.where
            self._server = await loop.create_server(factory, host, port, reuse_address=True, backlog=128)
        log.info("lmtp_listening", "LMTP server listening", socket=self.socket_spec, lists=len(site.lists))

    async def close(self) -> None:
        """Stop listening and remove a unix socket file. Transactions in hand end with their connections."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self.kind == "unix":
            sockets.remove(self.where)
