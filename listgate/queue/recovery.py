"""Start-up recovery and quarantine: :class:`Recovery`, a part of the Switchboard.

At start-up a runner, holding its slice lock (:mod:`listgate.queue.lock`), puts
back the qfiles left in progress (``ID.held``) by a crash. ``attempts`` counts
the interrupted runs in a row that made no progress (no recipient handed over
since the qfile was last written: its progress file ``ID.done`` added
nothing); a run that made progress starts the count again, so a long fan-out
killed many times is finished, while a qfile that kills its runner before any
hand-over goes to ``bad`` once ``attempts`` reaches ``max_attempts``; it removes the temporary files of writers that are gone and
progress files whose qfile is finished, and puts back qfiles taken by a
``listgate queue edit`` that was killed (``ID.edit.PID`` of a dead PID).

What cannot be read as a qfile goes to ``bad`` whole (:meth:`Recovery._quarantine`):
its bytes become the message of a new qfile whose metadata says why, so
nothing is lost and a human can look. An entry that is not a regular file
(symlink, FIFO, directory, device) is never opened: ``bad`` gets a qfile with
an empty message and the reason, and the entry itself is renamed beside it
as ``bad/ID.notfile`` (a symlink's target is never read or copied).
"""
from __future__ import annotations

import os

from .. import clock
from ..log import events
from . import qfile
from .files import alive, remove_dead_temps, unlink_quietly
from .names import ASIDE, DONE, EDIT, HELD, READY, QueueError, check_slice, id_arrival, new_id, slice_of

log = events("listgate.queue")


class Recovery:
    """The start-up and quarantine methods of :class:`listgate.queue.switchboard.Switchboard`."""

    def recover(self, *, slice: int = 0, slices: int = 1) -> int:
        """Put back qfiles left in progress by a crash; returns how many were handled.

        Each goes back with its progress folded in and ``attempts`` 0 if the
        interrupted run handed something over, else ``attempts`` + 1, or to
        ``bad`` with the reason once that reaches ``max_attempts``. Temporary
        files of writers that are gone are removed, and progress files
        (``ID.done``) whose qfile is gone; qfiles taken by a ``queue edit`` that
        is gone are put back unchanged. A held file is assumed abandoned: call
        it only while holding the slice's lock (:class:`listgate.queue.lock.SliceLock`,
        which every runner holds while it runs), before dequeuing.
        """
        check_slice(slice, slices)
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
            attempts = attempts if type(attempts) is int and 0 <= attempts < 2**31 else 0
            # Only a run that made no progress counts: killing a runner during a long fan-out
            # (deploys, OOM, an admin) must not send a post half delivered to bad.
            attempts = 0 if qf.progressed else attempts + 1
            meta = {**qf.meta, "attempts": attempts}
            if attempts >= self.max_attempts:
                self.move(qf, "bad", meta=meta,
                          reason=f"left in progress {attempts} times in a row without progress "
                                 "(crashed or killed while processing)")
            else:
                self._write(os.path.join(self.dir, qid + READY), qfile.dumps(meta, qf.msg), qid, new=True)
                unlink_quietly(path)
                self._drop_progress(qid)  # folded into the qfile just written
                log.info("qfile_recovered", qfile=qid, queue=self.name, attempts=attempts,
                         progressed=qf.progressed or None)
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
            elif EDIT + "." in name and not name.startswith("."):
                self._put_back_abandoned_edit(name)
        remove_dead_temps(self.dir, names)

    def _put_back_abandoned_edit(self, name: str) -> None:
        """``ID.edit.PID`` of a ``queue edit`` killed before it finished goes back to
        ``ID.qf`` unchanged (or is removed if its edit was already written back)."""
        qid, _, pid = name.rpartition(EDIT + ".")
        if not (pid.isdigit() and pid.isascii()) or alive(int(pid)):
            return  # still being edited, or no name of ours
        path = os.path.join(self.dir, name)
        ready = os.path.join(self.dir, qid + READY)
        if os.path.lexists(ready):
            unlink_quietly(path)  # the edit was stored; only the taken copy was left
            return
        try:
            os.rename(path, ready)
        except OSError as exc:
            log.error("edit_put_back_failed", "cannot put back a qfile left by queue edit", queue=self.name,
                      qfile=qid, error=exc.strerror)
            return
        log.warning("edit_put_back", "qfile put back unchanged after an interrupted queue edit", queue=self.name,
                    qfile=qid)

    def _quarantine(self, qid: str, path: str, data: bytes, reason: str) -> None:
        """An unparsable file goes to ``bad`` whole, as the message of a new qfile."""
        arrival = id_arrival(qid)
        meta = {"from_queue": self.name, "reason": f"unparsable qfile: {reason}",
                "unparsable": True, "original_name": qid + READY}
        try:
            self._board("bad").enqueue(
                data, meta, arrival=arrival, qid=qid if arrival is not None else None)
        except (QueueError, ValueError) as exc:
            log.error("quarantine_failed", "cannot move unparsable qfile to bad", queue=self.name, qfile=qid,
                      error=exc)
            return  # left held: nothing is lost, recover() tries again
        unlink_quietly(path)
        log.error("qfile_quarantined", "unparsable qfile moved to bad", queue=self.name, qfile=qid,
                  reason=reason)

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
            self._board("bad").enqueue(b"", meta, arrival=arrival, qid=bad_id)
        except (QueueError, ValueError) as exc:
            log.error("quarantine_failed", "cannot move odd qfile to bad", queue=self.name, qfile=qid, error=exc)
            return  # left held: recover() tries again
        self._set_aside(path, bad_id + ASIDE)
        log.error("qfile_quarantined", "qfile that is not a regular file moved to bad", queue=self.name, qfile=qid,
                  what=what)

    def _set_aside(self, path: str, name: str | None = None) -> None:
        """Rename the non-regular entry at ``path`` into ``bad`` as ``name`` (default: its
        name + :data:`ASIDE`); unlink it if that fails (a directory then stays)."""
        aside = os.path.join(self.queue_dir, "bad", name or os.path.basename(path) + ASIDE)
        try:
            os.makedirs(os.path.dirname(aside), exist_ok=True)
            os.rename(path, aside)
        except OSError:
            unlink_quietly(path)  # never follows a symlink; a directory stays and is logged again


