"""Run the milter: socket, flags, exception policy, libmilter's main loop.

libmilter owns the process's signals (SIGHUP, SIGTERM and SIGINT stop
``main()``), so configuration is reloaded by :class:`listgate.config.Watcher`
(a few ``stat`` calls per transaction), never by a signal. Changing
``milter.socket`` needs a restart; everything else takes effect with the next
SMTP transaction.

systemd ``Type=notify``: READY=1 once the socket is bound, STOPPING=1 when
``main()`` returns (:mod:`listgate.sdnotify`).

Unix socket: created and given ``milter.socket_mode`` by
:func:`listgate.sockets.create` (default 0660: the MTA's user connects
through the group, nobody else may write). A socket left behind by
a dead milter is removed at start; one a live milter still answers on is an
error (two daemons must not steal each other's socket).
"""
from __future__ import annotations

import os

import Milter
import milter as libmilter  # pymilter's C extension (libmilter bindings)

from .. import sdnotify, sockets
from ..config import Watcher, parse_socket
from .app import NEEDED_ACTIONS, CoreThreads, ListgateMilter, SiteSource
from ..log import events

log = events("listgate.milter")
NAME = "listgate"


class DaemonError(Exception):
    """The milter cannot start (socket in use, bad socket setting)."""


def socket_spec(site) -> tuple[str, str | None]:
    """The site's ``milter.socket`` as libmilter's ``smfi_setconn`` string, and the
    unix socket's path (None for inet). Relative unix paths are under ``state_dir``.

    Raises :class:`DaemonError` for a socket libmilter cannot use.
    """
    text = site.conf.milter.socket
    try:
        kind, where = parse_socket(text)
    except ValueError as exc:
        raise DaemonError(str(exc)) from None
    if kind == "unix":
        path = site.resolve(where)
        return f"unix:{path}", path
    host, port = where
    family = "inet6" if ":" in host else "inet"
    return f"{family}:{port}@{host}", None


def socket_mode(site) -> int:
    """``milter.socket_mode`` (an octal string like ``"0660"``) as an int."""
    try:
        return sockets.parse_mode(site.conf.milter.socket_mode, "milter.socket_mode")
    except ValueError as exc:
        raise DaemonError(str(exc)) from None


def clear_stale_socket(path: str) -> None:
    """Remove ``path`` if it is a socket nobody answers on; refuse a live one or a
    non-socket (:func:`listgate.sockets.clear_stale`) with a :class:`DaemonError`."""
    try:
        if sockets.clear_stale(path):
            log.info("stale_socket_removed", "removed stale socket", socket=path)
    except sockets.SocketInUse:
        raise DaemonError(f"another milter is listening on {path}") from None
    except OSError as exc:
        raise DaemonError(exc.strerror or str(exc)) from None


def _register(timeout: float) -> None:
    """Point libmilter's callbacks at the per-connection :class:`ListgateMilter`.

    The same dispatch ``Milter.runmilter`` sets up, done here because the
    socket must be opened (and its mode set) before ``main()`` starts serving.
    """
    Milter.factory = ListgateMilter
    libmilter.set_flags(NEEDED_ACTIONS)
    # An exception escaping a callback answers 4xx instead of accepting the mail.
    libmilter.set_exception_policy(Milter.TEMPFAIL)
    libmilter.set_connect_callback(Milter.connect_callback)
    libmilter.set_helo_callback(lambda ctx, host: ctx.getpriv().hello(host))
    libmilter.set_envfrom_callback(lambda ctx, *b: ctx.getpriv().envfrom_bytes(*b))
    libmilter.set_envrcpt_callback(lambda ctx, *b: ctx.getpriv().envrcpt_bytes(*b))
    libmilter.set_header_callback(lambda ctx, f, v: ctx.getpriv().header_bytes(f, v))
    libmilter.set_eoh_callback(lambda ctx: ctx.getpriv().eoh())
    libmilter.set_body_callback(lambda ctx, chunk: ctx.getpriv().body(chunk))
    libmilter.set_eom_callback(lambda ctx: ctx.getpriv().eom())
    libmilter.set_abort_callback(lambda ctx: ctx.getpriv().abort())
    libmilter.set_close_callback(Milter.close_callback)
    if timeout > 0:
        libmilter.settimeout(int(timeout))
    libmilter.register(NAME, data=lambda ctx: ctx.getpriv().data(),
                       unknown=lambda ctx, cmd: ctx.getpriv().unknown(cmd),
                       negotiate=Milter.negotiate_callback)


def run(config_path: str | None = None, *, watcher: Watcher | None = None) -> int:
    """Serve until libmilter is told to stop (SIGTERM, SIGINT, SIGHUP). Returns 0.

    Raises :class:`DaemonError` when the socket cannot be set up, or
    ``milter.error`` when libmilter cannot start.
    """
    watcher = watcher or Watcher(config_path)
    site = watcher.current()
    conn, path = socket_spec(site)
    mode = socket_mode(site)
    ListgateMilter.sites = SiteSource(watcher)
    ListgateMilter.core = CoreThreads()
    if site.conf.milter.preallocate_qfiles is not None:
        log.warning("setting_ignored", "milter.preallocate_qfiles is ignored (qfiles are no longer written "
                    "in advance): delete it", setting="milter.preallocate_qfiles", file=site.path)
    _register(site.conf.milter.timeout)
    libmilter.setconn(conn)
    if path:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        clear_stale_socket(path)
        sockets.create(path, mode, lambda: libmilter.opensocket(True))
    else:
        libmilter.opensocket(False)
    log.info("milter_listening", socket=conn, lists=len(site.lists))
    sdnotify.ready(f"milter on {conn}")
    try:
        libmilter.main()
    finally:
        sdnotify.stopping()
        if path:
            sockets.remove(path)  # libmilter leaves it behind; a stale socket only confuses
        ListgateMilter.core.close()
        ListgateMilter.core = None
    log.info("milter_stopped")
    return 0
