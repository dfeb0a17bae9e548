"""The switchboard: one directory of qfiles per queue, durable and FIFO.

Files in ``QUEUE_DIR/NAME/``:

* ``ID.qf``    a stored qfile, ready for a runner (plain text, ``listgate.queue.qfile``);
* ``ID.held``  dequeued, in progress (Mailman's ``.bak``);
* ``ID.edit.PID`` taken by ``listgate queue edit`` (process PID) while an admin edits
  it; no runner matches it, and ``recover`` puts it back once PID is gone;
* ``.ID.PID.N.tmp`` a qfile being written; never matched by dequeue, removed by
  ``recover`` once the writing process is gone;
* ``ID.done``  fan-out progress of a held qfile (``listgate.queue.progress``).
* ``ID.staged`` written but not ready until its writer releases it (a digest: ready
  only once the list's store recorded it sent, :mod:`listgate.app.digests`).

Every one of these is opened with ``O_NOFOLLOW | O_NONBLOCK`` and used only
if it is a regular file (``listgate.queue.files``); what is not goes to
``bad`` (``listgate.queue.recovery``). Ids are explained in
``listgate.queue.names``.

Durability follows Postfix's queue manager: a qfile is written to a temporary
name, flushed and fsync'd (fdatasync), renamed into place, and the directory is
fsync'd (threads of one process writing at the same moment share that
directory fsync: group commit, :meth:`Switchboard._sync_dir`), so after
``enqueue`` returns the qfile survives a crash or power loss, and no reader
ever sees a partial file (rename(2) is atomic within a file system).
Processing is at-least-once: ``finish`` and the rename to ``.held`` are not
followed by a directory fsync, because a crash just before either replays the
qfile anyway; ``recover`` counts the replays that made no progress in ``attempts``.
"""
from __future__ import annotations

import errno
import os
import threading

from .. import clock
from ..log import events
from . import qfile
from .files import NotRegularFile, fsync_dir, read_regular, temp_name, unlink_quietly, write_synced
from .names import (EDIT, HELD, ID_RE, QUEUES, READY, RESTING, STAGED, QFile, QueueError, check_slice, finite_time,
                    id_arrival, new_id, safe_name, slice_of)
from .progress import Progress
from .qfile import QFileFormatError
from .recovery import Recovery

log = events("listgate.queue")


class Switchboard(Progress, Recovery):
    """One queue directory (``QUEUE_DIR/NAME``), created if missing.

    ``max_attempts`` (site ``runner.max_attempts``) caps how many times a qfile
    left in progress by a crash is put back before it goes to ``bad``.
    Raises ValueError for an unknown queue name, QueueError if the directory
    cannot be created. One instance may be shared by threads (a runner's
    delivery workers finish, update and move their qfiles concurrently; the
    milter's connection threads enqueue and share directory fsyncs).
    Fan-out progress methods come from :class:`listgate.queue.progress.Progress`,
    ``recover`` from :class:`listgate.queue.recovery.Recovery`.
    """

    def __init__(self, queue_dir: str, name: str, *, max_attempts: int = 3):
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
        # group commit of directory fsyncs (see _sync_dir)
        self._dsync = threading.Condition(threading.Lock())
        self._dsync_next: _DirSync | None = None    # the round not started yet
        self._dsync_running = False
        try:
            os.makedirs(self.dir, exist_ok=True)
        except OSError as exc:
            raise QueueError(exc.errno, f"cannot create queue directory {self.dir}: {exc.strerror}") from None

    @classmethod
    def for_site(cls, site, name: str) -> "Switchboard":
        """The switchboard for queue ``name`` of a loaded :class:`listgate.config.Site`."""
        return cls(site.queue_dir, name, max_attempts=site.conf.runner.max_attempts)

    def __repr__(self) -> str:
        return f"<Switchboard {self.dir}>"

    def _board(self, name: str) -> "Switchboard":
        """This switchboard if ``name`` is its queue, else one for queue ``name`` beside it."""
        return self if name == self.name else Switchboard(self.queue_dir, name, max_attempts=self.max_attempts)

    # -- writing -------------------------------------------------------------------

    def enqueue(self, msg: bytes, meta: dict, *, arrival: float | None = None, qid: str | None = None,
                staged: bool = False) -> str:
        """Store ``msg`` with ``meta`` durably; returns the qfile id.

        ``staged``: as ``ID.staged``, which no runner takes until :meth:`release_staged`.

        ``arrival`` (POSIX seconds) defaults to ``meta['arrival']``, then to the
        arrival encoded in ``qid``, then to :func:`listgate.clock.now`. ``qid``
        keeps an existing id (moves between queues). ``meta`` gains ``arrival``
        and ``attempts`` (0 unless given). Raises :class:`QueueError` on any
        OSError (ENOSPC, EROFS, EDQUOT, EIO, ...), after removing the temporary
        file; TypeError/ValueError for metadata that is not JSON-safe.
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
        self._write(os.path.join(self.dir, qid + (STAGED if staged else READY)), qfile.dumps(meta, msg), qid, new=True)
        return qid

    def is_staged(self, qid: str) -> bool:
        """Whether ``ID.staged`` exists (written by ``enqueue(staged=True)``, not yet released)."""
        return safe_name(qid) and os.path.lexists(os.path.join(self.dir, qid + STAGED))

    def release_staged(self, qid: str) -> bool:
        """Make staged qfile ``qid`` ready (one rename, then a directory fsync); False if there
        is none (released before). Raises QueueError when the rename cannot be made durable."""
        try:
            os.rename(os.path.join(self.dir, qid + STAGED), os.path.join(self.dir, qid + READY))
            self._sync_dir()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise QueueError(exc.errno or errno.EIO, f"cannot release qfile {qid} in {self.dir}: "
                             f"{exc.strerror}") from None
        return True

    def _write(self, final: str, data: bytes, qid: str, *, new: bool) -> None:
        """temp name, write, fdatasync, rename onto ``final``, fsync the directory.

        ``new``: ``final`` is a new name whose directory entry may be withdrawn when
        the directory fsync fails (never an existing held file: that is the message).
        Raises QueueError, after removing the temporary file.
        """
        tmp = temp_name(self.dir, qid)
        step = "write"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                write_synced(fd, data)
            finally:
                os.close(fd)
            step = "rename"
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
        check_slice(slice, slices)
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
        return self._hold(qid) if safe_name(qid) else None

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
            log.error("qfile_unreadable", "cannot read qfile", queue=self.name, qfile=qid, error=exc.strerror)
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
            progressed = self._merge_progress(qid, meta, set_aside=True)
        except OSError as exc:
            log.error("progress_unreadable", "cannot read delivery progress", queue=self.name, qfile=qid,
                      error=exc.strerror)
            return None  # left held, as for an unreadable qfile
        return QFile(id=qid, queue=self.name, meta=meta, msg=msg, path=path, progressed=progressed)

    def peek(self, qid: str) -> QFile | None:
        """Read qfile ``qid`` (waiting or held) without taking it; None if absent.

        Raises QFileFormatError if it does not parse or is not a regular file (for
        ``queue show``), OSError if it cannot be read.
        """
        if not safe_name(qid):
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

    # -- finishing -----------------------------------------------------------------

    def finish(self, qf: QFile) -> None:
        """Done with ``qf``: remove the held file (a missing one is not an error)."""
        self._discard(qf)
        self._changed_by_us()

    def _discard(self, qf: QFile) -> None:
        unlink_quietly(qf.path)
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
        target = self._board(to)
        target.enqueue(qf.msg, meta, arrival=arrival, qid=qf.id)
        if target is not self:
            self._discard(qf)
            self._changed_by_us()
        else:
            if qf.path != os.path.join(self.dir, qf.id + READY):
                unlink_quietly(qf.path)  # back in this queue as ID.qf: the next dequeue lists it again
            self._drop_progress(qf.id)  # folded into the new qfile's metadata
        if to in RESTING:
            log.warning("qfile_moved", qfile=qf.id, queue=self.name, to=to, list=meta.get("list"),
                        queue_id=meta.get("mta_queue_id"), reason=reason)
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

    # -- editing by hand -------------------------------------------------------------

    def editing_ids(self) -> list[str]:
        """Ids of the qfiles taken by ``listgate queue edit`` (``ID.edit.PID``), FIFO order."""
        try:
            names = os.listdir(self.dir)
        except OSError:
            return []
        return sorted(n.rpartition(EDIT + ".")[0] for n in names if EDIT + "." in n and not n.startswith("."))

    def take_for_edit(self, qid: str) -> bytes | None:
        """Take waiting qfile ``qid`` out of every runner's reach and return its bytes;
        None if it is not waiting here (held by a runner, being edited, elsewhere).

        ``ID.qf`` is renamed to ``ID.edit.PID`` (atomic: a runner or a second editor
        either took it first or cannot take it now); :meth:`end_edit` puts it back.
        Raises QFileFormatError (put back untaken) if it is not a regular file,
        QueueError if it cannot be renamed or read.
        """
        if not (safe_name(qid) and ID_RE.match(qid)):
            return None
        path = self._edit_path(qid)
        try:
            os.rename(os.path.join(self.dir, qid + READY), path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise QueueError(exc.errno or errno.EIO, f"cannot take qfile {qid} in {self.dir}: {exc.strerror}") from None
        try:
            return read_regular(path)
        except OSError as exc:
            self.end_edit(qid, None)
            if isinstance(exc, NotRegularFile):
                raise QFileFormatError(f"{qid + READY} is not a regular file but {exc.strerror}") from None
            raise QueueError(exc.errno or errno.EIO, f"cannot read qfile {qid} in {self.dir}: {exc.strerror}") from None

    def end_edit(self, qid: str, data: bytes | None) -> None:
        """Give back a qfile taken by :meth:`take_for_edit` in this process.

        ``data`` None: unchanged (renamed back, nothing written). Else ``data``
        must parse as a qfile (:func:`listgate.queue.qfile.loads`) and is stored
        as ``ID.qf`` exactly as given (temp name, fdatasync, rename, directory
        fsync) before the taken copy is removed. Raises QFileFormatError (invalid
        ``data``) or QueueError (cannot store it); either way the original is
        back in place, unchanged.
        """
        path, ready = self._edit_path(qid), os.path.join(self.dir, qid + READY)
        if data is not None:
            try:
                qfile.loads(data)
                self._write(ready, data, qid, new=True)
            except (QFileFormatError, QueueError):
                self._put_back_edit(path, ready, qid)
                raise
            unlink_quietly(path)  # a crash before this: recover removes it (ID.qf exists)
            return
        self._put_back_edit(path, ready, qid)

    def _put_back_edit(self, path: str, ready: str, qid: str) -> None:
        try:
            os.rename(path, ready)
        except OSError as exc:  # left as ID.edit.PID: recover puts it back once we are gone
            log.error("edit_put_back_failed", "cannot put back an edited qfile", queue=self.name, qfile=qid,
                      error=exc.strerror)

    def _edit_path(self, qid: str) -> str:
        return os.path.join(self.dir, f"{qid}{EDIT}.{os.getpid()}")


class _DirSync:
    """One round of :meth:`Switchboard._sync_dir`'s group commit."""

    __slots__ = ("done", "error")

    def __init__(self):
        self.done = False
        self.error: OSError | None = None
