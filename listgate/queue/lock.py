"""Runner slice locks: one live runner per hash slice of a queue directory.

A runner of slice ``I/N`` holds an exclusive ``flock(2)`` on
``QUEUE_DIR/runner-I-of-N.lock`` for as long as it runs; the kernel drops it
when the process dies, however it dies, so a lock that can be taken belongs
to nobody alive. The file holds the holder's pid, host and start time (for
``listgate status`` and the message a second runner prints); its content is
only informative, the lock is the ``flock``.

Slices of different ``N`` overlap (``slice_of``), so runners of one queue
directory must agree on ``N``: while it takes its lock a runner holds
``QUEUE_DIR/runner.lock`` (briefly, exclusively) and refuses to start beside a
live runner of another ``N``. ``Switchboard.recover`` reclaims held qfiles as
abandoned; it runs only under the slice's lock, so it never takes what a
live runner is processing (issue 20, defect 5).
"""
from __future__ import annotations

import errno
import fcntl
import os
import re
import socket
import time
from dataclasses import dataclass

from .. import clock
from .names import QueueError, check_slice

GUARD = "runner.lock"
LOCK_RE = re.compile(r"\Arunner-(\d{1,6})-of-(\d{1,6})\.lock\Z")


class SliceBusy(Exception):
    """Another live process holds the slice (``holder``: what its lock file says)."""

    def __init__(self, message: str, holder: "Holder | None"):
        super().__init__(message)
        self.holder = holder


@dataclass
class Holder:
    """Who holds (or last held) a slice: from its lock file."""

    slice: int
    slices: int
    pid: int | None
    host: str
    since: float | None      # clock time the holder took it
    live: bool               # the flock is held now

    def describe(self) -> str:
        who = f"process {self.pid}" if self.pid else "a process"
        return f"{who} on {self.host or '?'}" if self.host and self.host != socket.gethostname() else who


def lock_name(slice: int, slices: int) -> str:
    return f"runner-{slice}-of-{slices}.lock"


def _open(path: str) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


def _try_flock(fd: int, mode: int) -> bool:
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise


def read_holder(queue_dir: str, slice: int, slices: int) -> Holder | None:
    """The slice's lock file as a :class:`Holder` (``live`` says whether its lock is held now),
    None if there is none."""
    path = os.path.join(queue_dir, lock_name(slice, slices))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        text = os.read(fd, 4096).decode("ascii", "replace")
        live = not _try_flock(fd, fcntl.LOCK_SH)   # a shared lock is refused while a runner holds it
        if not live:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    fields = dict(part.split("=", 1) for part in text.split() if "=" in part)
    pid = fields.get("pid", "")
    try:
        since = float(fields.get("since", ""))
    except ValueError:
        since = None
    return Holder(slice, slices, int(pid) if pid.isdigit() else None, fields.get("host", ""), since, live)


def holders(queue_dir: str) -> list[Holder]:
    """Every slice lock file of ``queue_dir``, by (slices, slice).

    Looking takes each file's lock for a moment (shared): done under the guard, so a
    runner starting meanwhile never mistakes the look for a live holder."""
    try:
        guard = _open(os.path.join(queue_dir, GUARD))
    except OSError:
        return _holders(queue_dir)   # a read-only queue directory: no runner starts there either
    try:
        fcntl.flock(guard, fcntl.LOCK_EX)
        return _holders(queue_dir)
    finally:
        os.close(guard)


def _holders(queue_dir: str) -> list[Holder]:
    try:
        names = os.listdir(queue_dir)
    except OSError:
        return []
    found = []
    for name in names:
        m = LOCK_RE.match(name)
        if m:
            h = read_holder(queue_dir, int(m.group(1)), int(m.group(2)))
            if h is not None:
                found.append(h)
    return sorted(found, key=lambda h: (h.slices, h.slice))


class SliceLock:
    """The lock of slice ``slice`` of ``slices`` in ``queue_dir``; :meth:`acquire` takes it."""

    def __init__(self, queue_dir: str, slice: int = 0, slices: int = 1):
        check_slice(slice, slices)
        self.queue_dir, self.slice, self.slices = queue_dir, slice, slices
        self.path = os.path.join(queue_dir, lock_name(slice, slices))
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, *, wait: bool = False, poll: float = 0.5, should_stop=None) -> bool:
        """Take the lock and write our pid into the file; True once held.

        Raises :class:`SliceBusy` when a live process holds this slice or runs another
        number of slices; with ``wait`` it waits until that is over instead (False if
        ``should_stop()`` became true meanwhile). QueueError if the file cannot be made."""
        while self._fd is None:
            try:
                self._try_acquire()
            except SliceBusy:
                if not wait:
                    raise
                if should_stop is not None and should_stop():
                    return False
                time.sleep(poll)
        return True

    def _try_acquire(self) -> None:
        try:
            os.makedirs(self.queue_dir, exist_ok=True)
            guard = _open(os.path.join(self.queue_dir, GUARD))
        except OSError as exc:
            raise QueueError(exc.errno, f"cannot make runner lock in {self.queue_dir}: {exc.strerror}") from None
        try:
            fcntl.flock(guard, fcntl.LOCK_EX)   # held for a moment, by runners starting
            for other in _holders(self.queue_dir):
                if other.live and other.slices != self.slices:
                    raise SliceBusy(f"{other.describe()} runs slice {other.slice}/{other.slices} of "
                                    f"{self.queue_dir}; all runners of one queue directory must use the same "
                                    f"number of slices (--slice I/{other.slices})", other)
            fd = _open(self.path)
            if not _try_flock(fd, fcntl.LOCK_EX):
                os.close(fd)
                holder = read_holder(self.queue_dir, self.slice, self.slices)
                who = holder.describe() if holder else "another process"
                raise SliceBusy(f"slice {self.slice}/{self.slices} of {self.queue_dir} is served by {who} "
                                f"(lock {self.path}); not starting a second runner of it", holder)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid={os.getpid()} host={socket.gethostname()} since={clock.now():.3f}\n"
                      .encode("ascii"), 0)
            self._fd = fd
        except OSError as exc:
            raise QueueError(exc.errno, f"cannot take runner lock {self.path}: {exc.strerror}") from None
        finally:
            os.close(guard)

    def release(self) -> None:
        """Give the lock up (the kernel does it anyway when the process ends)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
