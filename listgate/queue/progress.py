"""Fan-out progress files (``ID.done``) of held qfiles: :class:`Progress`, a part of the Switchboard.

``ID.done`` is a line ``listgate-progress 1 ID``, then one JSON array
``[index, rcpt]`` (or ``[index, rcpt, reply]`` for a refused one) per delivery
handed over, appended and fdatasync'd; every reader of the qfile folds it
into the metadata's ``done`` (and ``failed``). Appending one line costs one
fdatasync where rewriting the qfile (:meth:`Switchboard.update`) costs a
write, a rename and a directory fsync per delivery batch.

The append and the fdatasync may be two steps (``record_done(..., sync=False)``,
then :meth:`Progress.sync_done`): once write(2) has returned, the line is in
the kernel's page cache and every reader, including ``recover`` after the
writing process was killed (SIGKILL), sees it; only a crash of the machine
(power loss) before the fdatasync can lose it. The runner appends while it
holds its commit gate and syncs after it let go (:mod:`listgate.runner.delivery`).
"""
from __future__ import annotations

import errno
import json
import os

from ..log import events
from .files import NotRegularFile, open_regular, read_regular, unlink_quietly, write_all
from .names import DONE, QFile, QueueError

PROGRESS_MAGIC = b"listgate-progress 1"

log = events("listgate.queue")


def _truncate_quietly(fd: int, size: int) -> None:
    try:
        os.ftruncate(fd, size)
    except OSError:
        pass


class Progress:
    """The progress-file methods of :class:`listgate.queue.switchboard.Switchboard`
    (``self.dir``, ``self.name``, ``_sync_dir`` and ``_set_aside`` come from there)."""

    def record_done(self, qf: QFile, indices: list[int], failed: dict[str, str] | None = None, *,
                    sync: bool = True) -> None:
        """Durably add delivery ``indices`` to ``qf``'s fan-out progress (``done``).

        ``failed`` maps ``str(index)`` to the 5xx reply of a refused one (kept in
        ``meta['failed']``). Instead of rewriting the whole qfile (:meth:`update`:
        write, fsync, rename, directory fsync), one line per index is appended to
        the progress file ``ID.done`` and fdatasync'd; only the first call for a
        qfile creates it and fsyncs the directory. Readers (dequeue, take, peek,
        recover) fold it into ``meta['done']``; ``finish``/``move`` remove it and
        ``recover`` folds it into the qfile. Raises QueueError: nothing of this
        call is recorded then. ``qf.meta`` is updated.

        ``sync=False``: only append (write(2)): the lines survive the death of
        this process but not yet a crash of the machine; the caller must call
        :meth:`sync_done` before it records more for ``qf`` or lets it go.
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
        self.sync_done(qf)      # (a caller that did not) lines before these are durable first
        created = False
        try:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                created, size = True, 0
                data = PROGRESS_MAGIC + b" " + qf.id.encode("ascii") + b"\n" + data
            except FileExistsError:
                fd, st = open_regular(path, write=True, append=True)
                size = st.st_size
            try:
                write_all(fd, data)
            except OSError:
                # a part written before ENOSPC would glue onto the next append's first line
                _truncate_quietly(fd, size)
                raise
            finally:
                os.close(fd)
        except OSError as exc:
            if created:
                unlink_quietly(path)
            raise self._progress_error(qf, exc) from None
        qf.unsynced = 2 if created else 1
        if sync:
            self.sync_done(qf)
        done = list(qf.meta.get("done") or [])
        seen = set(done)
        done.extend(i for i in indices if i not in seen)
        meta = {**qf.meta, "done": done}
        if failed:
            meta["failed"] = {**(qf.meta.get("failed") or {}), **failed}
        qf.meta = meta

    def sync_done(self, qf: QFile) -> None:
        """Make the lines ``record_done(qf, ..., sync=False)`` appended durable: fdatasync the
        progress file (and fsync the directory for the call that created it; threads
        syncing at the same moment share the kernel's journal commit and the directory
        fsync, :meth:`_sync_dir`). Nothing to do when nothing is pending.

        Raises QueueError (as ``record_done`` would have): the caller puts the qfile back;
        a progress file created by the pending call is removed, its name may not be
        durable (never append to it as if it were)."""
        if not qf.unsynced:
            return
        path = os.path.join(self.dir, qf.id + DONE)
        created, qf.unsynced = qf.unsynced == 2, 0
        try:
            fd = open_regular(path)[0]      # fdatasync(2) syncs the file, whichever descriptor asks
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
            if created:
                self._sync_dir()
        except OSError as exc:
            if created:
                unlink_quietly(path)
            raise self._progress_error(qf, exc) from None

    def _progress_error(self, qf: QFile, exc: OSError) -> QueueError:
        return QueueError(exc.errno or errno.EIO, f"cannot record delivery progress of qfile {qf.id} "
                          f"in {self.dir}: {exc.strerror or exc}")

    def _merge_progress(self, qid: str, meta: dict, *, set_aside: bool = False) -> int:
        """Fold ``ID.done`` (if any) into ``meta['done']``/``meta['failed']``; returns how
        many indices it added (the hand-overs since the qfile itself was last written).

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
            return 0
        except NotRegularFile as exc:
            log.warning("progress_ignored", "ignored a delivery progress file that is not a regular file",
                        queue=self.name, qfile=qid, what=exc.strerror)
            if set_aside:
                self._set_aside(path)
            return 0
        lines = data.split(b"\n")
        if lines[0].split(b" ")[:2] != PROGRESS_MAGIC.split(b" "):
            log.warning("progress_ignored", "ignored unreadable delivery progress file", queue=self.name, qfile=qid)
            return 0
        deliveries = meta.get("deliveries")
        if not isinstance(deliveries, list):
            return 0
        done = list(meta.get("done") or [])
        before = len(done)
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
        return len(done) - before

    def _drop_progress(self, qid: str) -> None:
        unlink_quietly(os.path.join(self.dir, qid + DONE))

