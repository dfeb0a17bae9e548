"""Is Mailman 2.1 still running on this tree? Its lock files (``PREFIX/locks``) say.

Mailman 2.1's ``LockFile.py``: a process takes lock ``L`` (``PREFIX/locks/NAME.lock``,
``master-qrunner``, ...) by writing its own name ``L.HOST.PID.COUNTER`` into a
file of that name and hard-linking it to ``L``; so ``L`` holds the holder's
file name, and ``L``'s modification time is set to when the lock expires
(now + its lifetime, refreshed while held). A lock is live when its holder
runs on this host and its process exists, or, for a holder on another host
(NFS), while its expiry has not passed.
"""
from __future__ import annotations

import os
import socket

from .. import clock


def live_locks(locks_dir: str) -> list[str]:
    """Descriptions of the live locks in ``locks_dir`` (none: Mailman is not running)."""
    found = []
    try:
        names = sorted(os.listdir(locks_dir))
    except FileNotFoundError:
        return found
    host = socket.gethostname()
    for name in names:
        path = os.path.join(locks_dir, name)
        try:
            st = os.stat(path, follow_symlinks=False)
            if not os.path.isfile(path) or st.st_size > 4096:
                continue
            with open(path, "rb") as fp:
                holder = fp.read(4096).decode("latin-1").strip()
        except OSError:
            continue
        parsed = _holder(holder)
        if parsed is None:
            continue
        lock_host, pid = parsed
        if lock_host == host:
            if _alive(pid):
                found.append(f"{name}: held by process {pid} on this host")
        elif st.st_mtime > clock.now():
            found.append(f"{name}: held by process {pid} on {lock_host} until its expiry")
    return found


def _holder(text: str) -> tuple[str, int] | None:
    """(host, pid) from ``LOCKPATH.HOST.PID.COUNTER``; None if ``text`` is not a holder's name."""
    parts = text.rsplit(".", 2)
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        return None
    head = parts[0]
    base = os.path.basename(head)
    # the lock file's own name ends where the host begins: NAME.lock.HOST or master-qrunner.HOST
    for marker in (".lock.", "master-qrunner."):
        if marker in base:
            return base.split(marker, 1)[1], int(parts[1])
    if "." in base:
        return base.split(".", 1)[1], int(parts[1])
    return None


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
