"""The asyncio policy server: many connections, several requests per connection.

Each connection is an :class:`asyncio.Protocol`: what one read brings is
parsed (:class:`~listgate.policy.protocol.RequestParser`), its complete
requests are decided in arrival order and their answers written at once, so a
client that pipelines gets its answers in order (Postfix
``SMTPD_POLICY_README``: the same connection carries further requests).
Decisions read the list's store inline: a lookup costs microseconds and never
waits for a writer. (A protocol, not streams: with one request per read, as
Postfix asks, a stream reader's future, task step and timeout scope per read
cost more than the decision; bench/policy.py.)

Limits (site config ``policy``): an attribute line longer than ``max_line``,
a line without ``=`` or too many attributes is logged and the connection
closed without an answer (the README asks for that); the requests before it
are answered first. A connection that sends nothing for ``idle_timeout``
seconds is closed (Postfix reconnects when it needs to; 0 means no limit).
A client that pipelines without reading its answers is not read from until
it does (asyncio's write buffer limits pause reading), instead of growing our
buffers.

Exim's ``${readsocket}`` sends one request and half-closes, maybe without the
final empty line: that request is answered, then the connection is closed.

The configuration is taken from ``get_site()`` (a
:meth:`listgate.config.Watcher.current`) after each read, for the requests it
completed: list and key changes apply without a restart. The socket itself is bound once; moving it needs a
restart.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from .. import metrics, sockets
from ..config import Site, parse_socket
from ..log import events
from .protocol import ProtocolError, RequestParser, action_for, format_reply, rcpt_decision

__all__ = ["PolicyServer"]

log = events("listgate.policy")
_TEMPFAIL = "451 4.3.0 temporary policy server error, try again later"
_DUNNO = format_reply("DUNNO")          # the answer to most requests, encoded once
_CLOSE_WAIT = 5.0         # seconds close() lets connections flush their answers before dropping them


class PolicyServer:
    """Serve the policy delegation protocol on ``socket_spec`` (``unix:PATH`` / ``inet:PORT@HOST``).

    ``get_site`` returns the current :class:`~listgate.config.Site`. ``socket_spec``
    defaults to that site's ``policy.socket`` (a relative unix path is relative
    to ``state_dir``). Use ``await start()``, then ``await serve_forever()`` or
    ``await close()``. ``start()`` raises OSError if the socket cannot be bound
    (EADDRINUSE also when a live server holds the unix socket, EEXIST when its
    path is something else: never removed), ValueError for
    a ``policy.socket_mode`` that is not octal.
    """

    def __init__(self, get_site: Callable[[], Site], socket_spec: str | None = None):
        self.get_site = get_site
        site = get_site()
        self.socket_spec = socket_spec or site.conf.policy.socket
        self.kind, where = parse_socket(self.socket_spec)
        self.where = site.resolve(where) if self.kind == "unix" else where
        self.connections: set[_Connection] = set()      # the open connections
        self._server: asyncio.AbstractServer | None = None
        self._all_closed: asyncio.Event | None = None   # set when the last one goes, after close()

    @property
    def address(self):
        """``("unix", path)`` or ``("inet", (host, port))`` actually bound (port 0 resolved)."""
        if self.kind == "inet" and self._server is not None:
            host, port = self._server.sockets[0].getsockname()[:2]
            return "inet", (host, port)
        return self.kind, self.where

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.kind == "unix":
            mode = sockets.parse_mode(self.get_site().conf.policy.socket_mode, "policy.socket_mode")
            sock = sockets.bound_unix(self.where, mode)
            try:
                self._server = await loop.create_unix_server(self._connection, sock=sock, backlog=1024)
            except BaseException:
                sock.close()
                raise
        else:
            host, port = self.where
            self._server = await loop.create_server(self._connection, host, port, reuse_address=True, backlog=1024)
        log.info("policy_listening", "policy server listening", socket=self.socket_spec)

    async def serve_forever(self) -> None:
        assert self._server is not None, "start() first"
        await self._server.serve_forever()

    async def close(self) -> None:
        """Stop listening, close every connection, remove a unix socket file."""
        if self._server is not None:
            self._server.close()
        self._all_closed = asyncio.Event()
        for conn in list(self.connections):
            conn.transport.close()
        if self.connections:
            try:
                await asyncio.wait_for(self._all_closed.wait(), _CLOSE_WAIT)
            except TimeoutError:        # a client that does not read its answers: drop them
                for conn in list(self.connections):
                    conn.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()
        if self.kind == "unix":
            sockets.remove(self.where)

    def _connection(self) -> "_Connection":
        return _Connection(self)


class _Connection(asyncio.Protocol):
    """One client connection (asyncio calls these methods; see the module docstring)."""

    def __init__(self, server: PolicyServer):
        self.server = server
        site = server.get_site()
        self.parser = RequestParser(site.conf.policy.max_line)
        self.site = site                    # the configuration self.idle was read from
        self.idle = site.conf.policy.idle_timeout or None
        self.transport: asyncio.Transport | None = None
        self.peer = "unix"
        self.loop = asyncio.get_running_loop()
        self.last = self.loop.time()        # when data last came in (the idle limit counts from it)
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.peer = transport.get_extra_info("peername") or "unix"
        self.server.connections.add(self)
        self._arm()

    def connection_lost(self, exc) -> None:
        # the client went away (its partial request with it), or the server stops
        self.server.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
        if not self.server.connections and self.server._all_closed is not None:
            self.server._all_closed.set()

    def data_received(self, data: bytes) -> None:
        # one clock read per read: the idle timer re-arms itself from it instead of a timer per read
        self.last = self.loop.time()
        site = self.server.get_site()       # the configuration in force for what was read
        if site is not self.site:           # a reload (reading conf on every request costs more than a decision)
            self.site = site
            self.idle = site.conf.policy.idle_timeout or None
        try:
            requests = self.parser.feed(data)
        except ProtocolError as exc:
            self._refuse(site, exc)
            return
        if requests:
            self.transport.write(_answers(site, requests))
        if self.timer is None:
            self._arm()

    def eof_received(self) -> None:
        # end of input (Exim's half-close): its last request may lack the empty line
        site = self.server.get_site()
        try:
            last = self.parser.finish()
        except ProtocolError as exc:
            self._refuse(site, exc)
            return
        if last is not None:
            self.transport.write(_answers(site, [last]))
        # returning None closes the transport once the answer is written

    def pause_writing(self) -> None:
        # the client does not read its answers: stop reading its requests until it does
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()

    def _refuse(self, site: Site, exc: ProtocolError) -> None:
        if exc.complete:                    # the well-formed ones before it
            self.transport.write(_answers(site, exc.complete))
        log.warning("policy_malformed", "malformed policy request, closing the connection without an answer",
                    peer=self.peer, error=exc)
        self.transport.close()

    def _arm(self) -> None:
        self.timer = None if self.idle is None else self.loop.call_at(self.last + self.idle, self._idle_check)

    def _idle_check(self) -> None:
        """The idle limit came due: close if nothing was read since, else wait for the new limit.

        Data that came in the loop turn in which the limit runs out was read
        first (asyncio runs a turn's I/O callbacks before its timers), so it
        counts as activity and is answered.
        """
        self.timer = None
        if self.idle is None:
            return                          # the limit was lifted; the next read arms it again
        if self.loop.time() < self.last + self.idle:
            self._arm()
            return
        log.debug("policy_idle_close", "closing idle policy connection", peer=self.peer)
        self.transport.close()


def _answers(site: Site, requests: list[dict[str, str]]) -> bytes:
    """The replies to ``requests``, decided in order, as one write."""
    return b"".join([_answer(site, attrs) for attrs in requests])

def _answer(site: Site, attrs: dict[str, str]) -> bytes:
    """The encoded reply to one request.

    Refusals are logged at debug level only: the MTA already logs each one
    with our reply text (Postfix "NOQUEUE: reject: RCPT from ...", Exim
    "rejected RCPT"). Store failures are logged as warnings by
    :mod:`listgate.routing`.
    """
    started = time.perf_counter()
    try:
        decision = rcpt_decision(site, attrs)
        metrics.observe("policy", time.perf_counter() - started)
        if decision is None:
            return _DUNNO
        action = action_for(decision)
    except Exception:  # noqa: BLE001 - a bug must cost a retry, never an accepted or lost message
        log.exception("policy_failed", "policy decision failed", recipient=attrs.get("recipient"),
                      queue_id=attrs.get("queue_id") or None)
        return format_reply(_TEMPFAIL)
    if action == "DUNNO":
        return _DUNNO
    if log.isEnabledFor(logging.DEBUG):
        log.debug("policy_decision", action=action, recipient=attrs.get("recipient"), sender=attrs.get("sender"),
                  client=attrs.get("client_address"), queue_id=attrs.get("queue_id") or None)
    return format_reply(action)
