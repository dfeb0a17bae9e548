"""Queue files on disk: opening them safely, writing them durably, temporary names.

Every file the queue reads or writes in place (``ID.qf``, ``ID.held``,
``ID.done``) is opened with ``O_NOFOLLOW`` (a symlink fails
with ELOOP instead of reaching a file outside the queue, or one file under two
names) and ``O_NONBLOCK`` (open(2) of a FIFO without a peer returns at once
instead of waiting forever, and is not retried on signals by PEP 475), then
``fstat`` must show a regular file (``S_ISREG``). ``O_NOCTTY``: a tty device
planted in a queue never becomes our controlling terminal. On a regular file
``O_NONBLOCK`` changes nothing (open(2), "O_NONBLOCK"), so reads and writes
stay as before.
"""
from __future__ import annotations

import errno
import itertools
import os
import stat

_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_WRITE = os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
# what open(2) answers for a symlink with O_NOFOLLOW (ELOOP), a directory opened for
# writing (EISDIR), a FIFO with no reader or a device with no driver opened non-blocking (ENXIO)
_NOT_A_FILE = (errno.ELOOP, errno.EISDIR, errno.ENXIO)
TMP = ".tmp"
_counter = itertools.count()


class NotRegularFile(OSError):
    """The path is a symlink, FIFO, directory, device or socket, not a regular file.

    ``strerror`` says what it is (see :func:`describe`).
    """


def open_regular(path: str, *, write: bool = False, append: bool = False) -> tuple[int, os.stat_result]:
    """Open an existing regular file: ``(fd, fstat result)``; the caller closes ``fd``.

    ``write``: O_WRONLY (with ``append``, O_APPEND too), else O_RDONLY. Raises
    :class:`NotRegularFile` for anything else at ``path`` (never following a
    symlink, never blocking on a FIFO), FileNotFoundError if nothing is there,
    OSError for other errors.
    """
    flags = (_WRITE | (os.O_APPEND if append else 0)) if write else _READ
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno in _NOT_A_FILE:
            raise NotRegularFile(exc.errno, describe(path), path) from None
        raise
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotRegularFile(errno.EINVAL, describe(path, st), path)
    return fd, st


def read_regular(path: str) -> bytes:
    """The whole content of the regular file at ``path``; errors as :func:`open_regular`."""
    fd, _ = open_regular(path)
    with open(fd, "rb", closefd=True) as fh:
        return fh.read()


def describe(path: str, st: os.stat_result | None = None) -> str:
    """What is at ``path`` in words, e.g. "a symbolic link to '/etc/passwd'" (lstat, never followed)."""
    try:
        st = st or os.lstat(path)
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        try:
            return f"a symbolic link to {os.readlink(path)!r}"
        except OSError:
            return "a symbolic link"
    for test, what in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return what
    return f"a file of type {stat.S_IFMT(mode):o}"


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` at ``fd``'s offset (os.write may take less than asked). Raises OSError."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_synced(fd: int, data: bytes) -> None:
    """:func:`write_all`, then fdatasync: the data, and what reading it back needs, is on disk.
    Raises OSError."""
    write_all(fd, data)
    os.fdatasync(fd)


def fsync_dir(directory: str) -> None:
    """fsync(2) a directory: the names renamed or created in it are durable. Raises OSError."""
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def unlink_quietly(path: str) -> None:
    """unlink(2) ``path`` if possible (a symlink itself, never its target); never raises."""
    try:
        os.unlink(path)
    except OSError:
        pass


def temp_name(directory: str, base: str) -> str:
    """``DIRECTORY/.BASE.PID.N.tmp``: unique per thread; the pid lets
    :func:`remove_dead_temps` tell a dead writer's file from a live one's."""
    return os.path.join(directory, f".{base}.{os.getpid()}.{next(_counter)}{TMP}")


def remove_dead_temps(directory: str, names: list[str]) -> None:
    """Unlink the temporary files among ``names`` (of ``directory``) whose process is gone."""
    me = os.getpid()
    for name in names:
        if not (name.startswith(".") and name.endswith(TMP)):
            continue
        try:
            pid = int(name[:-len(TMP)].split(".")[-2])
        except (IndexError, ValueError):
            continue
        if pid != me and not alive(pid):
            unlink_quietly(os.path.join(directory, name))


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists; a pid no process can have (0, negative, beyond
    the kernel's pid range) is not alive."""
    if pid <= 0:
        return False  # kill(0 or -N, 0) would ask about process groups
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError, ValueError):
        return False
    except PermissionError:
        return True
    return True
