"""The unix socket files of listgate's daemons (milter, policy server, LMTP, web).

At start a socket file left behind by a daemon that died is removed; one a
live daemon still answers on is refused (a second daemon must not steal it);
anything that is not a socket is someone's data and is never removed. At a
clean stop the daemon removes its own socket.

A socket file is created under umask 0177, so nobody can connect before it
gets its configured mode (``milter.socket_mode``, ``policy.socket_mode``).
"""
from __future__ import annotations

import errno
import os
import socket
import stat
from typing import Callable, TypeVar

T = TypeVar("T")


class SocketInUse(OSError):
    """A server answers on the socket (errno EADDRINUSE)."""


def clear_stale(path: str) -> bool:
    """Remove ``path`` if it is a unix socket nobody answers on; True if removed.

    Raises :class:`SocketInUse` when a server answers on it, FileExistsError
    (EEXIST) when ``path`` is not a socket, OSError when it cannot be checked.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(errno.EEXIST, f"{path} exists and is not a socket; not removing it")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise OSError(exc.errno, f"cannot check socket {path}: {exc.strerror}") from None
        else:
            raise SocketInUse(errno.EADDRINUSE, f"a server is already listening on {path}")
    os.unlink(path)
    return True


def remove(path: str) -> None:
    """At a clean stop: remove ``path`` if it is (still) a socket; never raises."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except OSError:
        pass


def parse_mode(text: str, setting: str) -> int:
    """A socket mode setting (an octal string like ``"0660"``) as an int.

    ``setting`` names it in the error: ValueError for text that is not octal
    or has bits beyond 0777.
    """
    try:
        mode = int(text, 8)
    except ValueError:
        raise ValueError(f"{setting} {text!r} is not an octal mode like 0660") from None
    if mode & ~0o777:
        raise ValueError(f"{setting} {text!r} has bits beyond 0777")
    return mode


def create(path: str, mode: int, make: Callable[[], T]) -> T:
    """Call ``make()``, which creates the socket file ``path``, under umask 0177, then give
    ``path`` ``mode``; returns what ``make`` returned. The caller cleared a stale file first."""
    old = os.umask(0o177)
    try:
        made = make()
    finally:
        os.umask(old)
    os.chmod(path, mode)
    return made


def bound_unix(path: str, mode: int) -> socket.socket:
    """A stream socket bound to ``path`` with ``mode`` (a stale file cleared first, the file
    made under umask 0177), for an asyncio server to listen on. Raises what :func:`clear_stale`
    raises, or OSError from ``bind``; the socket is closed then."""
    clear_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        create(path, mode, lambda: sock.bind(path))
    except BaseException:
        sock.close()
        raise
    return sock
