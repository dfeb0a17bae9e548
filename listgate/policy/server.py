"""The asyncio policy server: many connections, several requests per connection.

One :class:`asyncio.Protocol` per connection. A read's complete requests join
the server's *batch*: what the connections sent during one loop turn (one
``select`` and the reads it allowed). The batch is answered once every read
of the turn is in: by the turn's last callback when that is one of our reads,
else by a callback the loop runs at the start of its next turn (``call_soon``),
so every request of a batch was read before any of them is decided. With many
busy connections a batch holds several requests, and per-batch work is done
once for all of them: the configuration (see below) and the store's freshness
check (:class:`listgate.store.sqlite.read_batch`, which says why answers stay
exact). "The turn's last callback" is read from the length of the loop's
queue of ready callbacks (``_ready``: CPython's :class:`asyncio.BaseEventLoop`
keeps no public count); a loop without it always takes the next turn, which
costs one loop turn per batch and changes no answer.
Within a connection requests are decided in arrival order and all replies to
one read go out in one write, so pipelining clients get their answers in
order. A connection about to close (a malformed request, Exim's half-close)
answers the batch at once instead, so its replies are written before the
close. Decisions read the list's SQLite store inline: in WAL mode a reader
never waits for a writer (``listgate.store.sqlite``), so a decision costs
microseconds and a thread hop would cost more than it saves.

Limits (site config ``policy``): an attribute line longer than ``max_line``,
a line without ``=`` or too many attributes is logged and the connection
closed without an answer (Postfix ``SMTPD_POLICY_README``); a connection idle
for ``idle_timeout`` seconds is closed (Postfix reconnects when it needs to;
0 means no limit).
A client that pipelines without reading its answers is paused at the
transport's high-water mark instead of growing our buffers.

The configuration is taken from ``get_site()`` (a :meth:`listgate.config.Watcher.current`)
once per batch: list and key changes apply without a restart. The socket
itself is bound once; moving it needs a restart.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import os
from typing import Callable

from .. import sockets
from ..config import Site, parse_socket
from ..log import kv
from ..routing import RcptDecision
from .protocol import DUNNO_ACTIONS, ProtocolError, RequestParser, action_for, format_reply, rcpt_decision, reply_for

__all__ = ["PolicyServer"]

log = logging.getLogger("listgate.policy")
_TEMPFAIL = "451 4.3.0 temporary policy server error, try again later"
_DUNNO = format_reply("DUNNO")
_NO_LIMIT_RECHECK = 60.0     # seconds between looks at a connection when idle_timeout is 0


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
        self.connections: set[_Connection] = set()
        self._server: asyncio.AbstractServer | None = None
        self._batch: list[tuple[_Connection, list[dict[str, str]]]] = []
        self._batch_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: collections.deque | None = None     # the loop's callbacks left in this turn

    @property
    def address(self):
        """``("unix", path)`` or ``("inet", (host, port))`` actually bound (port 0 resolved)."""
        if self.kind == "inet" and self._server is not None:
            host, port = self._server.sockets[0].getsockname()[:2]
            return "inet", (host, port)
        return self.kind, self.where

    async def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        ready = getattr(loop, "_ready", None)
        self._ready = ready if isinstance(ready, collections.deque) else None
        if self.kind == "unix":
            mode_text = self.get_site().conf.policy.socket_mode
            try:
                mode = int(mode_text, 8)
            except ValueError:
                raise ValueError(f"policy.socket_mode {mode_text!r} is not an octal mode like 0660") from None
            sockets.clear_stale(self.where)
            self._server = await loop.create_unix_server(lambda: _Connection(self), self.where, backlog=1024)
            os.chmod(self.where, mode)
        else:
            host, port = self.where
            self._server = await loop.create_server(lambda: _Connection(self), host, port,
                                                   reuse_address=True, backlog=1024)
        log.info("policy server listening %s", kv(socket=self.socket_spec))

    async def serve_forever(self) -> None:
        assert self._server is not None, "start() first"
        await self._server.serve_forever()

    # -- batches (module docstring) -------------------------------------------
    def _add(self, conn: _Connection, requests: list[dict[str, str]]) -> None:
        self._batch.append((conn, requests))
        ready = self._ready
        if ready is not None and len(ready) <= self._batch_scheduled:
            # nothing but our own scheduled answer runs after this in the turn: every read is in
            self.answer_batch()
        elif not self._batch_scheduled:
            self._batch_scheduled = True
            self._loop.call_soon(self._scheduled_answer)

    def _scheduled_answer(self) -> None:
        self._batch_scheduled = False
        self.answer_batch()

    def answer_batch(self) -> None:
        """Decide and answer every request read so far, one write per connection, then log refusals.

        Refusals are logged at debug level, after the writes: the MTA already
        logs each one with our reply text (Postfix "NOQUEUE: reject: RCPT
        from ...", Exim "rejected RCPT"), and a second line per refusal was the
        largest cost of an unknown-address answer (bench/policy.py). Store
        failures are logged as warnings by :mod:`listgate.routing`.
        """
        batch = self._batch
        if not batch:
            return
        self._batch = []
        site = self.get_site()
        now = self._loop.time()
        refusals: list[tuple[RcptDecision, dict[str, str]]] = []
        for conn, requests in batch:
            if conn.lost:
                continue        # the client went away: its requests need no decision
            conn.last_active = now
            if len(requests) == 1:
                conn.transport.write(_answer(site, requests[0], refusals))
            else:
                conn.transport.write(b"".join([_answer(site, attrs, refusals) for attrs in requests]))
        if refusals and log.isEnabledFor(logging.DEBUG):     # the level is asked only when there is a refusal
            for decision, attrs in refusals:
                log.debug("%s %s", action_for(decision),
                          kv(recipient=attrs.get("recipient"), sender=attrs.get("sender"),
                             client=attrs.get("client_address"), queue_id=attrs.get("queue_id") or None))

    async def close(self) -> None:
        """Stop listening, close every connection, remove a unix socket file."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.close()
        if self._server is not None:
            await self._server.wait_closed()
        if self.kind == "unix":
            sockets.remove(self.where)


class _Connection(asyncio.Protocol):
    __slots__ = ("server", "transport", "parser", "peer", "last_active", "idle_handle", "closing", "lost", "loop")

    def __init__(self, server: PolicyServer):
        self.server = server
        self.transport = None
        self.parser: RequestParser | None = None
        self.peer = None
        self.last_active = 0.0
        self.idle_handle = None
        self.closing = False
        self.lost = False
        self.loop = None

    # -- connection life --------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.peer = transport.get_extra_info("peername") or "unix"
        site = self.server.get_site()
        self.parser = RequestParser(site.conf.policy.max_line)
        self.server.connections.add(self)
        loop = self.loop = asyncio.get_running_loop()
        self.last_active = loop.time()
        self.idle_handle = loop.call_later(site.conf.policy.idle_timeout or _NO_LIMIT_RECHECK, self._check_idle)

    def connection_lost(self, exc) -> None:
        # a client that disconnects mid-request simply loses its partial request
        self.lost = True
        self.server.connections.discard(self)
        if self.idle_handle is not None:
            self.idle_handle.cancel()
            self.idle_handle = None

    def close(self) -> None:
        if not self.closing and self.transport is not None:
            self.closing = True
            self.transport.close()

    def _check_idle(self) -> None:
        # re-armed instead of reset on every read: one timer per connection, not one per request
        loop = self.loop
        timeout = self.server.get_site().conf.policy.idle_timeout
        if not timeout:             # 0: no idle limit (look again later: a reload may set one)
            self.idle_handle = loop.call_later(_NO_LIMIT_RECHECK, self._check_idle)
            return
        left = self.last_active + timeout - loop.time()
        if left <= 0 and self.server._batch:
            # requests read in this loop turn count as activity only when their batch is answered
            # (answer_batch): answer it now, so a request that came as the limit ran out is not
            # mistaken for silence and dropped with the connection (a batch may be answered early)
            self.server.answer_batch()
            left = self.last_active + timeout - loop.time()
        if left <= 0:
            log.debug("closing idle policy connection %s", kv(peer=self.peer))
            self.idle_handle = None
            self.close()
        else:
            self.idle_handle = loop.call_later(left, self._check_idle)

    # -- flow control: a client that does not read its answers is paused --
    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        if not self.closing:
            self.transport.resume_reading()

    # -- requests ------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            requests = self.parser.feed(data)
        except ProtocolError as exc:
            self._malformed(exc)
            return
        if requests:
            self.server._add(self, requests)    # answer_batch notes the activity, once per batch
        else:
            self.last_active = self.loop.time()

    def eof_received(self):
        # Exim's ${readsocket} half-closes after its request, maybe without the empty line
        if self.closing:
            return False
        try:
            attrs = self.parser.finish()
        except ProtocolError as exc:
            self._malformed(exc)
            return False
        if attrs is not None:
            self.server._add(self, [attrs])
        self.server.answer_batch()      # written before the transport closes
        return False    # close once the answer is flushed

    def _malformed(self, exc: ProtocolError) -> None:
        if exc.complete:
            self.server._add(self, exc.complete)
        self.server.answer_batch()      # the well-formed requests before it are answered before the close
        log.warning("malformed policy request, closing the connection without an answer %s",
                    kv(peer=self.peer, error=exc))
        self.close()


def _answer(site: Site, attrs: dict[str, str], refusals: list) -> bytes:
    """The encoded reply to one request; a refusal is also appended to ``refusals``."""
    try:
        decision = rcpt_decision(site, attrs)
        if decision is None or decision.action in DUNNO_ACTIONS:
            return _DUNNO
        reply = reply_for(decision)
    except Exception:  # noqa: BLE001 - a bug must cost a retry, never an accepted or lost message
        log.exception("policy decision failed %s", kv(recipient=attrs.get("recipient"),
                                                      queue_id=attrs.get("queue_id") or None))
        return format_reply(_TEMPFAIL)
    refusals.append((decision, attrs))
    return reply
