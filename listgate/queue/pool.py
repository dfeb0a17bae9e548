"""A queue's pool of fixed-size slot files (``QUEUE_DIR/NAME/.recycle/``) that qfiles are written into.

Why: storing a post in a new file costs the kernel an inode allocation (on
ext4 most of the milter's CPU time went to ``ext4_create``), and writing
into a reused file that changes its size or fills holes makes ``fdatasync``
commit the file system's journal. A slot file is exactly
:data:`POOL_SLOT_SIZE` bytes with every block written (zeros, never a hole
or ``fallocate``'s unwritten extents) and fdatasync'd before it enters the
pool; a qfile that fits is written over it from offset 0 without changing its
size (the qfile's LENGTH, ``listgate.queue.qfile`` version 2, says where it
ends), so the writer's ``fdatasync`` only flushes data.

* :meth:`Pool.claim` (the hot path) renames a pool file to the writer's
  temporary name; rename(2) is atomic, so one process wins each file.
* :meth:`Pool.retire` (finish, move, take-back: the runner's side) renames a
  finished file into the pool; one shorter than a slot is first padded with
  zeros and fdatasync'd under a temporary name, one longer is unlinked.
* :meth:`Pool.fill` creates slot files up to the pool's ``target``; with a
  target, a claim that leaves the pool below it wakes a daemon thread of
  the lowest CPU priority that tops it up, so the hot path never waits for
  it, nor fails because of it (a full disk only means no refill). The
  thread writes a file only once this process's writers have claimed none
  for :data:`REFILL_QUIET` seconds: creating files while they write made
  their own syncs wait on the journal commits of the new files (an enqueue
  took 3 times as long on an idle machine; nice 19 only yields the CPU).
  Under sustained writing the pool is refilled by finished qfiles instead.

Only regular files are pool files. Listing the pool unlinks anything else
there that unlink(2) removes without following it (a symlink, FIFO, socket
or device node: no process of ours made it, and following a symlink made
two qfiles share one file) and leaves a directory alone; a claimed file is
opened with ``O_NOFOLLOW | O_NONBLOCK`` (``listgate.queue.files``) and used
only if it is a regular file with one link, owned by us, its mode set to
0600 if it was not.

Pool files are an optimisation and must never be what fills the disk: fill
and retire's padding leave :func:`reserve` bytes free (see there).

Temporary names in the pool (``.NAME.PID.N.tmp``) are never claimed; the
switchboard's ``recover`` removes those of dead processes. Pool files are
never read; like freed blocks they hold old mail until overwritten, so queue
directories stay private to listgate.
"""
from __future__ import annotations

import errno
import itertools
import logging
import os
import secrets
import stat
import threading
import time

from ..log import kv
from .files import open_regular

POOL = ".recycle"
POOL_SLOT_SIZE = 64 * 1024
# files kept per queue at rest beyond the pre-allocation target: 64 slots = 4 MiB
POOL_MAX_FILES = 64
TMP = ".tmp"
# how long this process's writers must have claimed no slot before the refill thread
# creates one (seconds): a pause between bursts, not a delay any writer waits for
REFILL_QUIET = 0.05
# free space pre-allocation and padding never take: the larger of this share of the file
# system and RESERVE_MIN. The queue directory usually shares its disk with the list
# stores (SQLite needs room for its journal to commit anything), the logs and the
# qfiles themselves; a pool that fills it turns every write there into ENOSPC while
# the pool holds nothing but zeros (a break-test on an 8 MiB tmpfs did exactly that).
RESERVE_SHARE = 0.05
RESERVE_MIN = 64 * 1024 * 1024

log = logging.getLogger("listgate.queue")
_counter = itertools.count()
_ZEROS = bytes(POOL_SLOT_SIZE)


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
        if pid != me and not _alive(pid):
            unlink_quietly(os.path.join(directory, name))


class Pool:
    """The slot files of one queue; shared by threads, and by processes through rename(2).

    ``target`` (0 = off): keep at least that many slot files (:meth:`fill`,
    and the refill thread unless ``refill`` is False). The cap on files at rest is ``target +
    POOL_MAX_FILES``: the headroom lets finished qfiles come back while the
    refill thread has replaced them already (a writer claimed them, a runner
    finishes them), instead of being unlinked while new ones are made. The
    file count is an estimate (other processes claim and retire files too),
    recounted whenever it reaches the cap.
    """

    def __init__(self, directory: str, *, target: int = 0, refill: bool = True):
        if target < 0:
            raise ValueError(f"pool target must be >= 0, not {target}")
        self.dir = directory
        self.target = target
        # False: the target only sizes the cap (a process that finishes the queue's
        # qfiles while another one, the milter, makes the slot files)
        self.refill = refill
        self.cap = target + POOL_MAX_FILES
        self._free: list[str] = []
        self._count: int | None = None
        self._lock = threading.Lock()          # guards _free and _count
        self._fill_lock = threading.Lock()     # one fill at a time in this process
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False                  # a refill failed: logged once until one succeeds
        self._last_claim = 0.0                 # time.monotonic() of the last claim

    # -- the hot path ----------------------------------------------------------------

    def claim(self, tmp: str) -> tuple[int, int] | None:
        """Rename a pool file to ``tmp`` and open it for writing: ``(fd, st_size)``, or
        None if the pool is empty (or unusable). Never raises; wakes the refill
        thread when the pool falls below its target."""
        got = None
        for _ in range(self.cap):
            name = self._next()
            if name is None:
                break
            try:
                os.rename(os.path.join(self.dir, name), tmp)
            except FileNotFoundError:
                continue  # claimed by another process
            except OSError:
                break
            with self._lock:
                if self._count:
                    self._count -= 1
            try:
                fd, st = open_regular(tmp, write=True)
            except OSError:
                # not a regular file after all (replaced since the listing), or gone
                if not _drop_odd(tmp, os.path.join(self.dir, name)):
                    break  # a directory stuck under tmp: the caller takes another name
                continue
            # st_nlink > 1: still linked elsewhere (a file system that lost a rename in a
            # crash); overwriting it could damage a stored qfile. Another owner: not ours
            # to write. Either way drop this name only.
            if st.st_nlink == 1 and st.st_uid == os.geteuid():
                try:
                    if stat.S_IMODE(st.st_mode) != 0o600:
                        os.fchmod(fd, 0o600)  # qfiles hold mail: never readable by others
                    got = (fd, st.st_size)
                    break
                except OSError:
                    pass
            os.close(fd)
            unlink_quietly(tmp)
        if self.target and self.refill:
            self._last_claim = time.monotonic()
            if self._count is None or self._count < self.target:
                self._start_refill()
        return got

    def _next(self) -> str | None:
        with self._lock:
            if not self._free:
                try:
                    self._free = self._list()[1]
                except OSError:
                    return None
                self._count = len(self._free)
            return self._free.pop() if self._free else None

    def _list(self) -> tuple[list[str], list[str]]:
        """``(all names, slot file names)`` of the pool; unlinks what is neither a slot
        file nor a temporary name nor a directory (see the module docstring). Raises OSError."""
        names, slots = [], []
        with os.scandir(self.dir) as it:
            for entry in it:
                names.append(entry.name)
                if entry.name.startswith("."):
                    continue
                if entry.is_file(follow_symlinks=False):
                    slots.append(entry.name)
                elif not entry.is_dir(follow_symlinks=False):
                    unlink_quietly(entry.path)
                    log.warning("removed a pool entry that is not a regular file %s",
                                kv(pool=self.dir, name=entry.name))
        return names, slots

    def give_back(self, path: str, name: str) -> None:
        """Return an unused claimed slot file (still :data:`POOL_SLOT_SIZE` bytes, all
        written) to the pool as ``name``, or unlink it if the pool is full. Never raises."""
        if not (self._room() and self._enter(path, name)):
            unlink_quietly(path)

    # -- the finisher's side ---------------------------------------------------------

    def retire(self, path: str, name: str) -> None:
        """A finished qfile at ``path`` becomes slot file ``name``, or is unlinked (longer
        than a slot, pool full, linked elsewhere, or any error). Never raises.

        A file shorter than a slot is renamed to a temporary name, extended with
        written zeros and fdatasync'd before it enters the pool: its old name is
        gone at once, and no writer can claim it half made.
        """
        try:
            st = os.lstat(path)
        except OSError:
            return  # already gone
        if (not stat.S_ISREG(st.st_mode) or st.st_size > POOL_SLOT_SIZE or st.st_nlink != 1
                or not self._room()
                or (st.st_size < POOL_SLOT_SIZE and not _room_on_disk(self.dir, POOL_SLOT_SIZE - st.st_size))):
            unlink_quietly(path)  # unlink(2) removes a symlink, never its target
            return
        if st.st_size == POOL_SLOT_SIZE:
            if not self._enter(path, name):
                unlink_quietly(path)
            return
        tmp = temp_name(self.dir, name)
        try:
            os.rename(path, tmp)
        except OSError:
            unlink_quietly(path)
            return
        try:
            fd, now = open_regular(tmp, write=True)
            try:
                if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                    raise OSError(errno.ESTALE, "replaced since it was looked at")
                _write_zeros(fd, st.st_size)
            finally:
                os.close(fd)
        except OSError:
            unlink_quietly(tmp)  # e.g. a full disk: this file is simply not kept
            return
        if not self._enter(tmp, name):
            unlink_quietly(tmp)

    def _room(self) -> bool:
        with self._lock:
            if self._count is not None and self._count < self.cap:
                return True
        try:
            count = len(self._list()[1])
        except OSError:
            return False
        with self._lock:
            self._count = count
        return count < self.cap

    def _enter(self, path: str, name: str) -> bool:
        """Rename a ready slot file into the pool as ``name``; False if impossible."""
        try:
            os.rename(path, os.path.join(self.dir, name))
        except OSError:
            return False
        with self._lock:
            self._count = (self._count or 0) + 1
            self._free.append(name)  # our own writers need not list the pool to find it
        return True

    # -- pre-allocation --------------------------------------------------------------

    def fill(self, *, quiet: float = 0.0) -> int:
        """Create slot files until the pool holds ``target``; returns how many were made.

        Each is written with zeros and fdatasync'd under a temporary name, then
        renamed into the pool (usable at once); the pool directory is fsync'd
        once at the end. ``quiet`` (seconds): before each file, wait until no
        slot was claimed in this process for that long. Never raises: a failure
        (full disk, quota, read-only), or free space down to :func:`reserve`,
        is logged once until a later fill succeeds, and ends this fill.
        """
        made = 0
        with self._fill_lock:
            try:
                names, slots = self._list()
            except OSError as exc:
                self._failed(exc)
                return 0
            remove_dead_temps(self.dir, names)
            count = len(slots)
            with self._lock:
                self._count = count
            try:
                for _ in range(self.target - count):
                    self._wait_quiet(quiet)
                    if not _room_on_disk(self.dir, POOL_SLOT_SIZE):
                        if made:
                            fsync_dir(self.dir)
                        self._failed(OSError(errno.ENOSPC, f"free space is down to the reserve of "
                                                           f"{reserve(self.dir) // 1024 // 1024} MiB"))
                        return made
                    self._make_slot()
                    made += 1
                if made:
                    fsync_dir(self.dir)
            except OSError as exc:
                self._failed(exc)
                return made
            if self._failing and made:
                self._failing = False
                log.info("queue pool refilled again %s", kv(pool=self.dir, made=made))
        return made

    def _wait_quiet(self, quiet: float) -> None:
        while (idle := time.monotonic() - self._last_claim) < quiet:
            time.sleep(quiet - idle)

    def _make_slot(self) -> None:
        name = f"slot-{os.getpid()}-{next(_counter)}-{secrets.token_hex(4)}"
        tmp = temp_name(self.dir, name)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                _write_zeros(fd, 0)
            finally:
                os.close(fd)
            if not self._enter(tmp, name):
                raise OSError(errno.EIO, "cannot rename a new slot file into the pool")
        except BaseException:
            unlink_quietly(tmp)
            raise

    def _failed(self, exc: OSError) -> None:
        if not self._failing:
            self._failing = True
            log.warning("cannot pre-allocate queue pool files %s",
                        kv(pool=self.dir, error=exc.strerror or exc))

    def _start_refill(self) -> None:
        """Wake the refill thread (started on first need, again after a fork)."""
        self._wake.set()
        thread = self._thread
        if thread is None or not thread.is_alive():
            with self._lock:  # two claimers must not start two threads
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._refill, name="listgate-pool-refill",
                                                    daemon=True)
                    self._thread.start()

    def _refill(self) -> None:
        try:
            # Linux: a thread's nice value is its own (setpriority(2) NOTES), so under a
            # CPU-bound burst the writers on the hot path run first
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (AttributeError, OSError):
            pass
        while True:
            self._wake.wait()
            self._wake.clear()
            self.fill(quiet=REFILL_QUIET)


def _write_zeros(fd: int, start: int) -> None:
    """Write zeros from ``start`` to :data:`POOL_SLOT_SIZE` and fdatasync: every block
    allocated and durable, so later overwrites change no metadata."""
    view = memoryview(_ZEROS)[start:]
    offset = start
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n
    os.fdatasync(fd)


def fsync_dir(directory: str) -> None:
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def reserve(directory: str) -> int:
    """Bytes of free space that pool files leave on ``directory``'s file system:
    max(:data:`RESERVE_SHARE` of its size, :data:`RESERVE_MIN`). Raises OSError."""
    return _reserve(os.statvfs(directory))


def _reserve(st: os.statvfs_result) -> int:
    return max(int(st.f_blocks * st.f_frsize * RESERVE_SHARE), RESERVE_MIN)


def _room_on_disk(directory: str, need: int) -> bool:
    """Whether ``need`` more bytes leave :func:`reserve` free (statvfs ``f_bavail``: what an
    unprivileged writer may use). False if statvfs fails."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize - need >= _reserve(st)


def _drop_odd(path: str, back: str) -> bool:
    """Remove what claim renamed to ``path`` and found not to be a usable file: unlink it
    (never following a symlink), or rename a directory back to ``back``. False if a
    directory is still at ``path``."""
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return True
    except OSError:
        pass
    try:
        os.rename(path, back)
        return True
    except OSError:
        return not os.path.lexists(path)


def _alive(pid: int) -> bool:
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
