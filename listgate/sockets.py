"""The unix socket files of listgate's daemons (milter, policy server).

At start a socket file left behind by a daemon that died is removed; one a
live daemon still answers on is refused (a second daemon must not steal it);
anything that is not a socket is someone's data and is never removed. At a
clean stop the daemon removes its own socket.
"""
from __future__ import annotations

import errno
import os
import socket
import stat


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
