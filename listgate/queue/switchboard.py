"""The switchboard: one directory of qfiles per queue, durable and FIFO.

Files in ``QUEUE_DIR/NAME/``:

* ``ID.qf``    a stored qfile, ready for a runner;
* ``ID.held``  dequeued, in progress (Mailman's ``.bak``);
* ``.ID.PID.N.tmp`` a qfile being written; never matched by dequeue, removed by
  ``recover`` once the writing process is gone (so are those in ``.recycle/``);
* ``ID.done``  fan-out progress of a qfile (:meth:`Switchboard.record_done`): a line
  ``listgate-progress 1 ID``, then one JSON array ``[index, rcpt]`` (or
  ``[index, rcpt, reply]`` for a refused one) per delivery handed over, appended
  and fdatasync'd; folded into the qfile's ``done`` by every reader;
* ``.recycle/`` the pool (``listgate.queue.pool``): slot files of exactly
  ``POOL_SLOT_SIZE`` (64 KiB) bytes, every block written and fdatasync'd.
  Creating a file (inode allocation) and freeing one's blocks is what costs
  most when a queue turns over, and a write that changes a file's size makes
  ``fdatasync`` commit the journal; so a qfile that fits a slot is written
  over a claimed slot file from offset 0 without truncating it (the qfile's
  LENGTH says where it ends, the rest is ignored padding), and ``finish``
  (``move``, ``recover``) returns the file to the pool, padded to a slot
  first if shorter. A larger qfile gets a new file, unlinked when finished.
  ``Switchboard(..., preallocate=N)`` keeps at least N slot files there
  (:meth:`Switchboard.preallocate` at start-up, then a low-priority thread).

Every one of these is opened with ``O_NOFOLLOW | O_NONBLOCK`` and used only
if it is a regular file (``listgate.queue.files``): a ``ID.qf``/``ID.held``
that is a symlink, FIFO, directory or device goes to ``bad`` as a qfile with
an empty message and the reason, the entry itself renamed to
``bad/ID.notfile`` unopened (a symlink's target is never read or copied); an
``ID.done`` that is no regular file is ignored and set aside as
``bad/ID.done.notfile``.

``ID`` is ``<arrival ns, 19 digits>-<pid>-<counter>-<random>``: names sort by
arrival time (the original one, kept when a qfile moves between queues), and
equal arrival times are told apart by writer pid, a per-process counter and 32
random bits, so they neither collide nor get skipped.

Durability follows Postfix's queue manager: a qfile is written to a temporary
name, flushed and fsync'd (fdatasync), renamed into place, and the directory is
fsync'd (threads of one process writing at the same moment share that
directory fsync: group commit, :meth:`Switchboard._sync_dir`), whether the
file is new or a claimed slot file, so
after ``enqueue`` returns the qfile survives a crash or power loss, and no
reader ever sees a partial file (rename(2) is atomic within a file system).
Processing is at-least-once: ``finish`` and the rename to ``.held`` are not
followed by a directory fsync, because a crash just before either replays the
qfile anyway; ``recover`` counts such replays in ``attempts``.
"""
from __future__ import annotations

import errno
import hashlib
import itertools
import json
import logging
import math
import os
import re
import secrets
import threading
from dataclasses import dataclass, field

from .. import clock
from ..log import kv
from . import qfile
from .files import NotRegularFile, open_regular, read_regular, write_synced
from .pool import POOL, POOL_SLOT_SIZE, Pool, fsync_dir, remove_dead_temps, temp_name, unlink_quietly
from .qfile import QFileFormatError

QUEUES = ("in", "bounces", "out", "virgin", "retry", "shunt", "bad")
READY = ".qf"
HELD = ".held"
DONE = ".done"
# suffix of a non-regular entry (symlink, FIFO, directory, device) set aside in ``bad``:
# matched by no scan, never opened; kept as evidence for a human
ASIDE = ".notfile"
PROGRESS_MAGIC = b"listgate-progress 1"
ID_RE = re.compile(r"\A(\d{19})-\d{1,10}-\d{6}-[0-9a-f]{8}\Z")
# queues where a qfile rests for a human rather than waits for a runner: the
# attempt count is kept there as evidence instead of being reset
RESTING = ("shunt", "bad")

log = logging.getLogger("listgate.queue")
_counter = itertools.count()


class QueueError(OSError):
    """A qfile could not be stored durably (full disk, read-only, quota, I/O error).

    Front ends answer SMTP 4xx (``inject``: exit 75, EX_TEMPFAIL) so the sender
    retries; nothing was stored and no partial file is left behind.
    """


@dataclass
class QFile:
    """A dequeued qfile, held (in progress) until finish/update/move/release."""

    id: str
    queue: str
    meta: dict
    msg: bytes
    path: str = field(repr=False, default="")


def new_id(arrival: float) -> str:
    """A fresh qfile id for ``arrival`` (POSIX seconds); sorts by arrival, then tie-breakers."""
    # whole seconds and fraction apart: arrival * 1e9 would lose the last digits to float rounding
    whole = int(arrival // 1)
    ns = max(0, whole * 1_000_000_000 + round((arrival - whole) * 1e9))
    return f"{ns:019d}-{os.getpid()}-{next(_counter) % 1000000:06d}-{secrets.token_hex(4)}"


def id_arrival(qid: str) -> float | None:
    """The arrival time (POSIX seconds) encoded in a qfile id, or None if it is not one."""
    m = ID_RE.match(qid)
    return int(m.group(1)) / 1e9 if m else None


def slice_of(qid: str, slices: int) -> int:
    """The hash slice (0 .. slices-1) a qfile id belongs to; stable across processes."""
    h = int.from_bytes(hashlib.sha1(qid.encode("ascii", "replace")).digest()[:8], "big")
    return (h * slices) >> 64


def _check_slice(slice: int, slices: int) -> None:
    if slices < 1 or not 0 <= slice < slices:
        raise ValueError(f"slice {slice} of {slices} is not a valid hash slice")


class Switchboard:
    """One queue directory (``QUEUE_DIR/NAME``), created if missing.

    ``max_attempts`` (site ``runner.max_attempts``) caps how many times a qfile
    left in progress by a crash is put back before it goes to ``bad``.
    ``preallocate`` (default 0 = off) is how many slot files the pool keeps at
    least: :meth:`preallocate` makes them, and when writes leave fewer, a
    daemon thread at the lowest CPU priority (nice 19) makes more, so writers
    find a slot instead of creating a file. It also raises the pool's cap to
    ``preallocate + POOL_MAX_FILES`` files, which every process finishing this
    queue's qfiles applies: give them all the same value (``refill=False`` for
    those that only finish them, like the runner for ``in``). Costs
    ``preallocate`` x 64 KiB of disk per queue, up to the cap x 64 KiB.
    Raises ValueError for an unknown queue name or a negative ``preallocate``,
    QueueError if the directory cannot be created. One instance may be shared by
    threads (a runner's delivery workers finish, update and move their qfiles
    concurrently).
    """

    def __init__(self, queue_dir: str, name: str, *, max_attempts: int = 3, preallocate: int = 0,
                 refill: bool = True):
        if name not in QUEUES:
            raise ValueError(f"unknown queue {name!r} (queues: {', '.join(QUEUES)})")
        self.queue_dir = queue_dir
        self.name = name
        self.max_attempts = max_attempts
        self.dir = os.path.join(queue_dir, name)
        # ids from the last directory scan still to try, for one (slice, slices).
        # The directory is listed again only when someone else changed it (its
        # mtime differs from the one we saw after our own last change), so one
        # runner draining a long queue is not quadratic in its length, and a
        # qfile moved in with an older arrival is still taken first.
        self._batch: list[str] = []
        self._batch_key: tuple[int, int] | None = None
        self._seen_mtime: int | None = None
        self._lock = threading.Lock()  # guards the scan state above
        self._pool = Pool(os.path.join(self.dir, POOL), target=preallocate, refill=refill)
        # group commit of directory fsyncs (see _sync_dir)
        self._dsync = threading.Condition(threading.Lock())
        self._dsync_next: _DirSync | None = None    # the round not started yet
        self._dsync_running = False
        try:
            os.makedirs(self.dir, exist_ok=True)
        except OSError as exc:
            raise QueueError(exc.errno, f"cannot create queue directory {self.dir}: {exc.strerror}") from None
        try:
            os.mkdir(self._pool.dir, 0o700)
        except OSError:
            pass  # exists, or a read-only queue: recycling is an optimisation only

    @classmethod
    def for_site(cls, site, name: str, *, preallocate: int = 0) -> "Switchboard":
        """The switchboard for queue ``name`` of a loaded :class:`listgate.config.Site`."""
        return cls(site.queue_dir, name, max_attempts=site.conf.runner.max_attempts, preallocate=preallocate)

    def __repr__(self) -> str:
        return f"<Switchboard {self.dir}>"

    def preallocate(self) -> int:
        """Make slot files until the pool holds the ``preallocate`` given to the
        constructor; returns how many were made (0 when off or already full).

        For start-up, before writers arrive: each file is written with zeros and
        fdatasync'd, and the pool directory is fsync'd once for the lot. Never
        raises: a full disk (or read-only queue) ends it early and is logged once.
        """
        return self._pool.fill()

    # -- writing -------------------------------------------------------------------

    def enqueue(self, msg: bytes, meta: dict, *, arrival: float | None = None, qid: str | None = None) -> str:
        """Store ``msg`` with ``meta`` durably; returns the qfile id.

        ``arrival`` (POSIX seconds) defaults to ``meta['arrival']``, then to the
        arrival encoded in ``qid``, then to :func:`listgate.clock.now`. ``qid``
        keeps an existing id (moves between queues). ``meta`` gains ``arrival``
        and ``attempts`` (0 unless given). Raises :class:`QueueError` on any
        OSError (ENOSPC, EROFS, EDQUOT, EIO, ...), after removing the temporary
        file; TypeError/ValueError for metadata that is not JSON-safe.
        """
        return self.stage(msg, meta, arrival=arrival, qid=qid).commit()

    def stage(self, msg: bytes, meta: dict, *, arrival: float | None = None, qid: str | None = None) -> "Staged":
        """The first half of :meth:`enqueue`: the qfile written and fdatasync'd under
        its temporary name, which no reader matches. :meth:`Staged.commit` renames it
        into place and fsyncs the directory (then it is durable; returns the id);
        :meth:`Staged.discard` gives it back unseen (a slot file returns to the
        pool). A caller can so overlap the file's sync with other work and drop
        the qfile before any runner could take it. Same arguments and errors as
        :meth:`enqueue`.
        """
        if qid is not None and not ID_RE.match(qid):
            raise ValueError(f"not a qfile id: {qid!r}")
        meta = dict(meta)
        if arrival is None:
            arrival = meta.get("arrival")
            if not isinstance(arrival, (int, float)) or isinstance(arrival, bool):
                arrival = (id_arrival(qid) if qid else None) or clock.now()
        if not finite_time(arrival):
            raise ValueError(f"arrival must be a finite POSIX time, not {arrival!r}")
        meta["arrival"] = arrival
        meta.setdefault("attempts", 0)
        qid = qid or new_id(arrival)
        data = qfile.dumps(meta, msg)
        return Staged(self, *self._write_tmp(data, qid), qid)

    def _write(self, final: str, data: bytes, qid: str, *, new: bool) -> None:
        """temp name, write, fsync, rename onto ``final``, fsync the directory.

        ``new``: ``final`` is a new name whose directory entry may be withdrawn when
        the directory fsync fails (never an existing held file: that is the message).
        """
        self._install(self._write_tmp(data, qid)[0], final, qid, new=new)

    def _write_tmp(self, data: bytes, qid: str) -> tuple[str, bool]:
        """Write ``data`` under a fresh temporary name and fdatasync it; returns the
        name and whether the file is a whole slot (it can go back to the pool unused)."""
        tmp = temp_name(self.dir, qid)
        try:
            claimed = self._pool.claim(tmp) if len(data) <= POOL_SLOT_SIZE else None
            if claimed is None:
                if len(data) <= POOL_SLOT_SIZE:
                    tmp = temp_name(self.dir, qid)  # a failed claim may have left a directory there
                fd, size = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), 0
            else:
                fd, size = claimed
            try:
                # over a slot file from offset 0 and never truncated: its size stays, so
                # fdatasync flushes the data alone; into a new file it flushes the data
                # and what is needed to read it back (size, blocks). The directory
                # fsync in _install commits the name.
                write_synced(fd, data)
            finally:
                os.close(fd)
        except OSError as exc:
            unlink_quietly(tmp)
            raise QueueError(exc.errno or errno.EIO,
                             f"cannot store qfile {qid} in {self.dir} (write): {exc.strerror or exc}") from None
        return tmp, size == POOL_SLOT_SIZE

    def _install(self, tmp: str, final: str, qid: str, *, new: bool) -> None:
        """Rename a written temporary file onto ``final`` and fsync the directory."""
        step = "rename"
        try:
            os.rename(tmp, final)
            step = "directory fsync"
            self._sync_dir()
        except OSError as exc:
            unlink_quietly(tmp)
            if new and step == "directory fsync":
                # the new name may not survive a crash: withdraw it so the caller's
                # retry (SMTP 4xx) does not leave a second copy behind
                unlink_quietly(final)
            raise QueueError(exc.errno or errno.EIO,
                             f"cannot store qfile {qid} in {self.dir} ({step}): "
                             f"{exc.strerror or exc}") from None

    def _sync_dir(self) -> None:
        """fsync the directory, shared by the threads that need it at the same moment.

        Group commit: a caller needs *a* directory fsync that starts after its
        own rename, not one of its own. Callers join the round that has not
        started yet; when no fsync is in flight one of them runs it for all who
        joined, and each returns (or raises the round's OSError) once its round
        is done. A lone caller fsyncs at once, as before.
        """
        cond = self._dsync
        with cond:
            rnd = self._dsync_next
            if rnd is None:
                rnd = self._dsync_next = _DirSync()
            while not rnd.done:
                if self._dsync_running:
                    cond.wait()
                    continue
                # lead this round: everyone who joined it renamed before it starts
                self._dsync_next = None
                self._dsync_running = True
                cond.release()
                try:
                    self._fsync_dir()
                except OSError as exc:
                    rnd.error = exc
                finally:
                    cond.acquire()
                    rnd.done = True
                    self._dsync_running = False
                    cond.notify_all()
        if rnd.error is not None:
            raise OSError(rnd.error.errno, rnd.error.strerror)

    def _fsync_dir(self) -> None:
        fsync_dir(self.dir)

    # -- reading -------------------------------------------------------------------

    def _scan(self, suffix: str = READY) -> list[str]:
        """Ids of the files with ``suffix``, FIFO order."""
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        except OSError as exc:  # EIO, ENOTDIR, EACCES: the runner waits, as for any QueueError
            raise QueueError(exc.errno, f"cannot read queue directory {self.dir}: {exc.strerror}") from None
        n = len(suffix)
        return sorted(name[:-n] for name in names if name.endswith(suffix) and not name.startswith("."))

    def ids(self) -> list[str]:
        """Ids of the qfiles waiting in this queue (not in progress), FIFO order."""
        return self._scan(READY)

    def held_ids(self) -> list[str]:
        """Ids of the qfiles in progress (dequeued, not yet finished), FIFO order."""
        return self._scan(HELD)

    def __len__(self) -> int:
        return len(self.ids())

    def dequeue(self, *, slice: int = 0, slices: int = 1) -> QFile | None:
        """Hold and return the oldest qfile of hash slice ``slice`` of ``slices``, or None.

        Raises QueueError when the queue cannot be changed (read-only file system).

        The qfile is renamed to ``ID.held`` so no other runner takes it. A qfile
        that cannot be read or parsed goes to ``bad`` (its bytes kept as the
        message, the reason in the metadata) and the next one is tried; this
        never raises for bad content.
        """
        _check_slice(slice, slices)
        with self._lock:
            return self._dequeue((slice, slices))

    def _dequeue(self, key: tuple[int, int]) -> QFile | None:
        slice, slices = key
        if self._batch_key != key:
            self._batch, self._batch_key = [], key
        while True:
            mtime = self._dir_mtime()
            if not self._batch or mtime != self._seen_mtime:
                # mtime is read before listing: a change during the listing shows next time
                self._seen_mtime = mtime
                ids = self._scan(READY)
                if slices > 1:
                    ids = [q for q in ids if slice_of(q, slices) == slice]
                if not ids:
                    return None
                ids.reverse()  # pop() from the end takes the oldest
                self._batch = ids
            # None: taken by another runner since the scan, or unparsable (now in bad)
            qf = self._hold(self._batch.pop())
            if qf is not None:
                return qf

    def take(self, qid: str) -> QFile | None:
        """Hold qfile ``qid`` if it is waiting here (as :meth:`dequeue` would); else None.

        An unparsable one goes to ``bad`` and None is returned.
        """
        return self._hold(qid) if _safe_name(qid) else None

    def _hold(self, qid: str) -> QFile | None:
        held = os.path.join(self.dir, qid + HELD)
        try:
            os.rename(os.path.join(self.dir, qid + READY), held)
        except FileNotFoundError:
            return None
        except OSError as exc:  # read-only or failing file system: the runner waits and retries
            raise QueueError(exc.errno or errno.EIO, f"cannot take qfile {qid} in {self.dir}: {exc.strerror}") from None
        self._changed_by_us()
        return self._load(qid, held)

    def _dir_mtime(self) -> int | None:
        try:
            return os.stat(self.dir).st_mtime_ns
        except OSError:
            return None

    def _changed_by_us(self) -> None:
        """Our own rename/unlink changed the directory: that alone needs no new scan."""
        if self._batch:
            self._seen_mtime = self._dir_mtime()

    def _load(self, qid: str, path: str) -> QFile | None:
        """Read a held file; unparsable or not a regular file → ``bad``, returns None."""
        try:
            data = read_regular(path)
        except NotRegularFile as exc:
            self._quarantine_odd(qid, path, exc.strerror)
            return None
        except OSError as exc:
            log.error("cannot read qfile %s", kv(queue=self.name, qfile=qid, error=exc.strerror))
            # leave it held: recover() retries it and counts the attempt
            return None
        try:
            if not ID_RE.match(qid):
                # a hand-made or foreign file: it could never be moved or shunted under this name
                raise QFileFormatError(f"file name {qid + READY!r} is not a qfile id")
            meta, msg = qfile.loads(data)
        except QFileFormatError as exc:
            self._quarantine(qid, path, data, str(exc))
            return None
        try:
            self._merge_progress(qid, meta, set_aside=True)
        except OSError as exc:
            log.error("cannot read delivery progress %s", kv(queue=self.name, qfile=qid, error=exc.strerror))
            return None  # left held, as for an unreadable qfile
        return QFile(id=qid, queue=self.name, meta=meta, msg=msg, path=path)

    def peek(self, qid: str) -> QFile | None:
        """Read qfile ``qid`` (waiting or held) without taking it; None if absent.

        Raises QFileFormatError if it does not parse or is not a regular file (for
        ``queue show``), OSError if it cannot be read.
        """
        if not _safe_name(qid):
            return None
        for suffix in (READY, HELD):
            path = os.path.join(self.dir, qid + suffix)
            try:
                data = read_regular(path)
            except FileNotFoundError:
                continue
            except NotRegularFile as exc:
                raise QFileFormatError(f"{qid + suffix} is not a regular file but {exc.strerror}") from None
            meta, msg = qfile.loads(data)
            self._merge_progress(qid, meta)
            return QFile(id=qid, queue=self.name, meta=meta, msg=msg, path=path)
        return None

    # -- fan-out progress ------------------------------------------------------------

    def record_done(self, qf: QFile, indices: list[int], failed: dict[str, str] | None = None) -> None:
        """Durably add delivery ``indices`` to ``qf``'s fan-out progress (``done``).

        ``failed`` maps ``str(index)`` to the 5xx reply of a refused one (kept in
        ``meta['failed']``). Instead of rewriting the whole qfile (:meth:`update`:
        write, fsync, rename, directory fsync), one line per index is appended to
        the progress file ``ID.done`` and fdatasync'd; only the first call for a
        qfile creates it and fsyncs the directory. Readers (dequeue, take, peek,
        recover) fold it into ``meta['done']``; ``finish``/``move`` remove it and
        ``recover`` folds it into the qfile. Raises QueueError: nothing of this
        call is recorded then. ``qf.meta`` is updated.
        """
        deliveries = qf.meta.get("deliveries") or []
        failed = failed or {}
        lines = []
        for i in indices:
            rec = [i, deliveries[i].get("rcpt")]
            if str(i) in failed:
                rec.append(failed[str(i)])
            lines.append(json.dumps(rec) + "\n")   # ASCII: \u escapes keep any address
        data = "".join(lines).encode("ascii")
        path = os.path.join(self.dir, qf.id + DONE)
        created = False
        try:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                created = True
                data = PROGRESS_MAGIC + b" " + qf.id.encode("ascii") + b"\n" + data
            except FileExistsError:
                fd = open_regular(path, write=True, append=True)[0]
            try:
                write_synced(fd, data)
            finally:
                os.close(fd)
            if created:
                self._sync_dir()
        except OSError as exc:
            if created:
                # its name may not be durable: never append to it as if it were
                unlink_quietly(path)
            raise QueueError(exc.errno or errno.EIO, f"cannot record delivery progress of qfile {qf.id} "
                             f"in {self.dir}: {exc.strerror or exc}") from None
        done = list(qf.meta.get("done") or [])
        seen = set(done)
        done.extend(i for i in indices if i not in seen)
        meta = {**qf.meta, "done": done}
        if failed:
            meta["failed"] = {**(qf.meta.get("failed") or {}), **failed}
        qf.meta = meta

    def _merge_progress(self, qid: str, meta: dict, *, set_aside: bool = False) -> None:
        """Fold ``ID.done`` (if any) into ``meta['done']``/``meta['failed']``.

        An ``ID.done`` that is not a regular file (never one of ours: it is
        created with O_EXCL) is ignored, and with ``set_aside`` moved to ``bad``.

        Only whole lines count (a line torn by a crash is the hand-over in
        flight, which the module docstring of listgate.runner.delivery
        documents), and only a line whose recipient is the one at that index of
        ``meta['deliveries']`` (a stale file cannot mark anybody else done).
        Raises OSError if the file exists but cannot be read.
        """
        path = os.path.join(self.dir, qid + DONE)
        try:
            data = read_regular(path)
        except FileNotFoundError:
            return
        except NotRegularFile as exc:
            log.warning("ignored a delivery progress file that is not a regular file %s",
                        kv(queue=self.name, qfile=qid, what=exc.strerror))
            if set_aside:
                self._set_aside(path)
            return
        lines = data.split(b"\n")
        if lines[0].split(b" ")[:2] != PROGRESS_MAGIC.split(b" "):
            log.warning("ignored unreadable delivery progress file %s", kv(queue=self.name, qfile=qid))
            return
        deliveries = meta.get("deliveries")
        if not isinstance(deliveries, list):
            return
        done = list(meta.get("done") or [])
        seen = set(done)
        failed = dict(meta.get("failed") or {})
        for raw in lines[1:-1]:  # what follows the last newline is a torn or empty tail
            try:
                rec = json.loads(raw)
            except ValueError:
                break
            if not (isinstance(rec, list) and 2 <= len(rec) <= 3 and type(rec[0]) is int
                    and 0 <= rec[0] < len(deliveries) and isinstance(deliveries[rec[0]], dict)
                    and deliveries[rec[0]].get("rcpt") == rec[1]):
                continue
            if rec[0] not in seen:
                seen.add(rec[0])
                done.append(rec[0])
            if len(rec) == 3:
                failed[str(rec[0])] = rec[2]
        meta["done"] = done
        if failed:
            meta["failed"] = failed

    def _drop_progress(self, qid: str) -> None:
        unlink_quietly(os.path.join(self.dir, qid + DONE))

    # -- finishing -----------------------------------------------------------------

    def finish(self, qf: QFile) -> None:
        """Done with ``qf``: remove the held file (a missing one is not an error)."""
        self._discard(qf)
        self._changed_by_us()

    def _discard(self, qf: QFile) -> None:
        self._pool.retire(qf.path, qf.id)
        # after the qfile: a crash in between leaves an orphan (recover removes it), never
        # a qfile that lost its progress
        self._drop_progress(qf.id)

    def update(self, qf: QFile, meta: dict) -> None:
        """Durably replace the held file's metadata with ``meta`` (same message).

        ``arrival`` and ``attempts`` are carried over when ``meta`` lacks them.
        Raises QueueError (the held file then still has its previous content).
        """
        meta = dict(meta)
        for k in ("arrival", "attempts"):
            if k in qf.meta:
                meta.setdefault(k, qf.meta[k])
        self._write(qf.path, qfile.dumps(meta, qf.msg), qf.id, new=False)
        self._changed_by_us()
        qf.meta = meta

    def move(self, qf: QFile, to: str, *, reason: str | None = None, meta: dict | None = None) -> str:
        """Finish ``qf`` here and enqueue it in queue ``to`` with the same id and arrival.

        ``meta`` replaces the metadata (default: ``qf.meta``); ``from_queue`` records
        this queue (``unshunt`` sends it back there), ``reason`` is recorded when
        given. ``attempts`` restarts at 0 in a working queue and is kept in
        ``shunt``/``bad``. Returns the id. Raises QueueError (``qf`` stays held here).
        """
        meta = dict(qf.meta if meta is None else meta)
        meta["from_queue"] = self.name
        if reason is not None:
            meta["reason"] = reason
        if to not in RESTING:
            meta["attempts"] = 0
        # a usable arrival in this order: a hand-edited qfile may hold any number there, and
        # enqueue refuses what is not a finite time (the id's arrival is the original one)
        arrival = next((a for a in (meta.get("arrival"), qf.meta.get("arrival"), id_arrival(qf.id))
                        if finite_time(a)), None)
        meta.pop("arrival", None)
        target = self if to == self.name else Switchboard(self.queue_dir, to, max_attempts=self.max_attempts)
        target.enqueue(qf.msg, meta, arrival=arrival, qid=qf.id)
        if target is not self:
            self._discard(qf)
            self._changed_by_us()
        else:
            if qf.path != os.path.join(self.dir, qf.id + READY):
                self._pool.retire(qf.path, qf.id)  # back in this queue: the next dequeue lists it again
            self._drop_progress(qf.id)  # folded into the new qfile's metadata
        if to in RESTING:
            log.warning("qfile moved %s", kv(qfile=qf.id, queue=self.name, to=to, list=meta.get("list"),
                                             queue_id=meta.get("mta_queue_id"), reason=repr(reason)))
        return qf.id

    def release(self, qf: QFile) -> None:
        """Put ``qf`` back unprocessed (same id, attempts unchanged); QueueError if impossible
        (it then stays held and ``recover`` puts it back at the next start)."""
        try:
            os.rename(qf.path, os.path.join(self.dir, qf.id + READY))
            self._sync_dir()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise QueueError(exc.errno or errno.EIO, f"cannot put back qfile {qf.id} in {self.dir}: "
                             f"{exc.strerror}") from None

    # -- start-up ------------------------------------------------------------------

    def recover(self, *, slice: int = 0, slices: int = 1) -> int:
        """Put back qfiles left in progress by a crash; returns how many were handled.

        Each goes back with ``attempts`` + 1, or to ``bad`` with the reason once
        ``attempts`` reaches ``max_attempts``. Temporary files of writers that
        are gone are removed (in the pool too), and progress files (``ID.done``)
        whose qfile is gone. Run it at start-up, before any runner of this
        slice dequeues: a held file is assumed abandoned.
        """
        _check_slice(slice, slices)
        self._remove_stale_temps()
        count = 0
        for qid in self._scan(HELD):
            if slices > 1 and slice_of(qid, slices) != slice:
                continue
            path = os.path.join(self.dir, qid + HELD)
            qf = self._load(qid, path)
            count += 1
            if qf is None:
                continue  # unparsable: already moved to bad
            attempts = qf.meta.get("attempts")
            # anything but a plausible count (hand-edited: a bool, a negative or a
            # thousand-digit number) restarts at 0
            attempts = (attempts if type(attempts) is int and 0 <= attempts < 2**31 else 0) + 1
            meta = {**qf.meta, "attempts": attempts}
            if attempts >= self.max_attempts:
                self.move(qf, "bad", meta=meta,
                          reason=f"left in progress {attempts} times (crashed or killed while processing)")
            else:
                self._write(os.path.join(self.dir, qid + READY), qfile.dumps(meta, qf.msg), qid, new=True)
                self._pool.retire(path, qid)
                self._drop_progress(qid)  # folded into the qfile just written
                log.info("qfile recovered %s", kv(qfile=qid, queue=self.name, attempts=attempts))
        self._batch = []
        return count

    def _remove_stale_temps(self) -> None:
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return
        for name in names:
            if name.endswith(DONE) and not name.startswith("."):
                base = os.path.join(self.dir, name[:-len(DONE)])
                # held, waiting, held: a runner of another slice may rename it meanwhile
                if not any(os.path.lexists(base + sfx) for sfx in (HELD, READY, HELD)):
                    unlink_quietly(base + DONE)  # its qfile is finished or gone
        remove_dead_temps(self.dir, names)
        try:
            remove_dead_temps(self._pool.dir, os.listdir(self._pool.dir))
        except OSError:
            pass  # no pool

    def _quarantine(self, qid: str, path: str, data: bytes, reason: str) -> None:
        """An unparsable file goes to ``bad`` whole, as the message of a new qfile."""
        arrival = id_arrival(qid)
        meta = {"from_queue": self.name, "reason": f"unparsable qfile: {reason}",
                "unparsable": True, "original_name": qid + READY}
        try:
            Switchboard(self.queue_dir, "bad").enqueue(
                data, meta, arrival=arrival, qid=qid if arrival is not None else None)
        except (QueueError, ValueError) as exc:
            log.error("cannot move unparsable qfile to bad %s", kv(queue=self.name, qfile=qid, error=exc))
            return  # left held: nothing is lost, recover() tries again
        unlink_quietly(path)
        log.error("unparsable qfile moved to bad %s", kv(queue=self.name, qfile=qid, reason=repr(reason)))

    def _quarantine_odd(self, qid: str, path: str, what: str) -> None:
        """A held entry that is no regular file (``what``: :func:`listgate.queue.files.describe`) goes to ``bad``:
        a qfile with an empty message and the reason, and the entry itself renamed beside
        it (:data:`ASIDE`), never opened: a symlink's target is not copied, a FIFO not read."""
        original = os.path.basename(path)
        original = qid + READY if original.endswith(HELD) else original
        arrival = id_arrival(qid)
        bad_id = qid if arrival is not None else new_id(clock.now())
        meta = {"from_queue": self.name, "reason": f"not a regular file: {original} was {what}",
                "unparsable": True, "original_name": original, "set_aside_as": bad_id + ASIDE}
        try:
            Switchboard(self.queue_dir, "bad").enqueue(b"", meta, arrival=arrival, qid=bad_id)
        except (QueueError, ValueError) as exc:
            log.error("cannot move odd qfile to bad %s", kv(queue=self.name, qfile=qid, error=exc))
            return  # left held: recover() tries again
        self._set_aside(path, bad_id + ASIDE)
        log.error("qfile that is not a regular file moved to bad %s",
                  kv(queue=self.name, qfile=qid, what=what))

    def _set_aside(self, path: str, name: str | None = None) -> None:
        """Rename the non-regular entry at ``path`` into ``bad`` as ``name`` (default: its
        name + :data:`ASIDE`); unlink it if that fails (a directory then stays)."""
        aside = os.path.join(self.queue_dir, "bad", name or os.path.basename(path) + ASIDE)
        try:
            os.makedirs(os.path.dirname(aside), exist_ok=True)
            os.rename(path, aside)
        except OSError:
            unlink_quietly(path)  # never follows a symlink; a directory stays and is logged again


class Staged:
    """A qfile written under its temporary name (:meth:`Switchboard.stage`)."""

    def __init__(self, sb: Switchboard, tmp: str, slot: bool, qid: str):
        self.sb, self.tmp, self.slot, self.id = sb, tmp, slot, qid

    def commit(self) -> str:
        """Rename into place and fsync the directory; returns the id. QueueError as enqueue."""
        tmp, self.tmp = self.tmp, None
        if tmp is None:
            raise ValueError(f"qfile {self.id} was already committed or discarded")
        self.sb._install(tmp, os.path.join(self.sb.dir, self.id + READY), self.id, new=True)
        return self.id

    def discard(self) -> None:
        """Remove the temporary file (nothing was stored); a no-op after commit.

        A slot file goes back to the pool as it is (a rename: no padding on the
        writer's path); pool files are never read.
        """
        if self.tmp is not None:
            if self.slot:
                self.sb._pool.give_back(self.tmp, self.id)
            else:
                unlink_quietly(self.tmp)
            self.tmp = None


class _DirSync:
    """One round of :meth:`Switchboard._sync_dir`'s group commit."""

    __slots__ = ("done", "error")

    def __init__(self):
        self.done = False
        self.error: OSError | None = None


def finite_time(value) -> bool:
    """Whether ``value`` can be a time in metadata (arrival, retry_at): an int or float
    that is finite as a float (a hand-edited or hostile qfile may hold anything)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond float range
        return False


def _safe_name(qid: str) -> bool:
    """A name that stays inside the queue directory and is not a temporary file."""
    return bool(qid) and "/" not in qid and "\0" not in qid and not qid.startswith(".")
