"""The asyncio policy server: many connections, several requests per connection.

One coroutine per connection reads what the client sends, parses it
(:class:`~listgate.policy.protocol.RequestParser`), and decides and answers
each complete request in arrival order, so a client that pipelines gets its
answers in order (Postfix ``SMTPD_POLICY_README``: the same connection
carries further requests). Decisions read the list's store inline: a lookup
costs microseconds and never waits for a writer.

Limits (site config ``policy``): an attribute line longer than ``max_line``,
a line without ``=`` or too many attributes is logged and the connection
closed without an answer (the README asks for that); the requests before it
are answered first. A connection that sends nothing for ``idle_timeout``
seconds is closed (Postfix reconnects when it needs to; 0 means no limit).
A client that pipelines without reading its answers is not read from until
it does (``drain``), instead of growing our buffers.

Exim's ``${readsocket}`` sends one request and half-closes, maybe without the
final empty line: that request is answered, then the connection is closed.

The configuration is taken from ``get_site()`` (a
:meth:`listgate.config.Watcher.current`) after each read, for the requests it
completed: list and key changes apply without a restart. The socket itself is bound once; moving it needs a
restart.
"""
from __future__ import annotations

import asyncio
import time
from typing import Callable

from .. import metrics, sockets
from ..config import Site, parse_socket
from ..log import events
from .protocol import ProtocolError, RequestParser, action_for, format_reply, rcpt_decision

__all__ = ["PolicyServer"]

log = events("listgate.policy")
_TEMPFAIL = "451 4.3.0 temporary policy server error, try again later"
_READ_SIZE = 65536


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
        self.connections: set[asyncio.Task] = set()     # one task per open connection
        self._server: asyncio.AbstractServer | None = None

    @property
    def address(self):
        """``("unix", path)`` or ``("inet", (host, port))`` actually bound (port 0 resolved)."""
        if self.kind == "inet" and self._server is not None:
            host, port = self._server.sockets[0].getsockname()[:2]
            return "inet", (host, port)
        return self.kind, self.where

    async def start(self) -> None:
        if self.kind == "unix":
            mode = sockets.parse_mode(self.get_site().conf.policy.socket_mode, "policy.socket_mode")
            sock = sockets.bound_unix(self.where, mode)
            try:
                self._server = await asyncio.start_unix_server(self._serve, sock=sock, backlog=1024)
            except BaseException:
                sock.close()
                raise
        else:
            host, port = self.where
            self._server = await asyncio.start_server(self._serve, host, port, reuse_address=True, backlog=1024)
        log.info("policy_listening", "policy server listening", socket=self.socket_spec)

    async def serve_forever(self) -> None:
        assert self._server is not None, "start() first"
        await self._server.serve_forever()

    async def close(self) -> None:
        """Stop listening, close every connection, remove a unix socket file."""
        if self._server is not None:
            self._server.close()
        for task in list(self.connections):
            task.cancel()
        if self.connections:
            await asyncio.wait(list(self.connections))
        if self._server is not None:
            await self._server.wait_closed()
        if self.kind == "unix":
            sockets.remove(self.where)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self.connections.add(task)
        peer = writer.get_extra_info("peername") or "unix"
        try:
            await self._converse(reader, writer, peer)
        except (ConnectionError, asyncio.CancelledError):
            pass            # the client went away (its partial request with it), or the server stops
        finally:
            self.connections.discard(task)
            writer.close()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer) -> None:
        site = self.get_site()
        parser = RequestParser(site.conf.policy.max_line)
        while True:
            data = await _read(reader, site.conf.policy.idle_timeout or None)
            if data is None:
                log.debug("policy_idle_close", "closing idle policy connection", peer=peer)
                return
            site = self.get_site()      # the configuration in force for what was read
            try:
                if data:
                    requests = parser.feed(data)
                else:
                    # end of input (Exim's half-close): its last request may lack the empty line
                    last = parser.finish()
                    requests = [] if last is None else [last]
            except ProtocolError as exc:
                await _answer_all(site, writer, exc.complete)      # the well-formed ones before it
                log.warning("policy_malformed", "malformed policy request, closing the connection without an answer",
                            peer=peer, error=exc)
                return
            await _answer_all(site, writer, requests)
            if not data:
                return


async def _read(reader: asyncio.StreamReader, idle: float | None) -> bytes | None:
    """What the client sent next (b"" at end of input), or None after ``idle`` seconds of silence.

    A timeout scope around the read, not a task per read. Data that came in the
    loop turn in which the limit ran out stays in the reader's buffer (the read
    was cancelled while waiting for it): one more read that cannot wait takes it,
    so it is answered, not taken for silence.
    """
    try:
        async with asyncio.timeout(idle):
            return await reader.read(_READ_SIZE)
    except TimeoutError:
        try:
            async with asyncio.timeout(0):
                return await reader.read(_READ_SIZE)     # returns at once if anything is buffered
        except TimeoutError:
            return None


async def _answer_all(site: Site, writer: asyncio.StreamWriter, requests: list[dict[str, str]]) -> None:
    """Decide ``requests`` in order and write their replies (one write), waiting while the client does not read."""
    if requests:
        writer.write(b"".join([_answer(site, attrs) for attrs in requests]))
        await writer.drain()


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
        action = "DUNNO" if decision is None else action_for(decision)
        metrics.observe("policy", time.perf_counter() - started)
    except Exception:  # noqa: BLE001 - a bug must cost a retry, never an accepted or lost message
        log.exception("policy_failed", "policy decision failed", recipient=attrs.get("recipient"),
                      queue_id=attrs.get("queue_id") or None)
        return format_reply(_TEMPFAIL)
    if action != "DUNNO":
        log.debug("policy_decision", action=action, recipient=attrs.get("recipient"), sender=attrs.get("sender"),
                  client=attrs.get("client_address"), queue_id=attrs.get("queue_id") or None)
    return format_reply(action)
