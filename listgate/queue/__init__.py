"""qfiles and switchboards: the durable single-file queue (the only interface between processes).

CONTRACT (implemented in ``listgate.queue.switchboard``; other modules import from here):

    QUEUES = ("in", "bounces", "out", "virgin", "retry", "shunt", "bad")

    class QueueError(OSError)      # cannot store durably (full disk, read-only, ...): SMTP 4xx / exit 75

    @dataclass
    class QFile:
        id: str                     # stable id, unique, sortable by arrival (kept across queues)
        queue: str                  # queue it was dequeued from
        meta: dict                  # JSON-safe metadata (list, role, envelope sender, recipients,
                                    # mta_queue_id, client, arrival, attempts, progress, ...)
        msg: bytes                  # the raw message, byte-exact
        path: str                   # the in-progress file while held

    class Switchboard:
        def __init__(self, queue_dir: str, name: str, *, max_attempts: int = 3, preallocate: int = 0)
            # preallocate: keep at least N 64 KiB slot files in the queue's pool (0 = off)
        def preallocate(self) -> int          # make them now (start-up); returns how many; never raises
        def enqueue(self, msg: bytes, meta: dict, *, arrival: float | None = None, qid: str | None = None) -> str
            # temp name (a claimed pool slot, or a new file), write, fdatasync, rename, fsync dir;
            # returns the qfile id; raises QueueError
        def dequeue(self, *, slice: int = 0, slices: int = 1) -> QFile | None
            # oldest first (arrival, then tie-breaker); marks the file in progress; unparsable → bad
        def ids(self) -> list[str]            # FIFO order, not in progress
        def finish(self, qf: QFile) -> None   # done: remove (into the pool, or unlinked)
        def update(self, qf: QFile, meta: dict) -> None
            # durably rewrite the held file's metadata (e.g. fan-out progress) before continuing
        def move(self, qf: QFile, to: str, *, reason: str | None = None, meta: dict | None = None) -> str
            # finish here and enqueue in queue ``to`` keeping id and arrival (retry, shunt, bad, out)
        def release(self, qf: QFile) -> None  # put back unprocessed (e.g. SIGTERM before work began)
        def recover(self) -> int
            # at start-up: files left in progress go back with attempts+1; at max_attempts → bad with reason

Beyond the contract: ``Switchboard.for_site(site, name)``, ``held_ids()``,
``peek(id)``, ``take(id)``, ``recover(slice=, slices=)``; one instance may be
shared by threads. The file format is in ``listgate.queue.qfile``, the directory
layout (``ID.qf``, ``ID.held``, temporary files, ``.recycle/``) in
``listgate.queue.switchboard``, the pool of slot files in ``listgate.queue.pool``.
"""
from .qfile import FORMAT_VERSION, QFileFormatError
from .switchboard import QUEUES, QFile, QueueError, Switchboard, finite_time, slice_of

__all__ = ["QUEUES", "QFile", "QueueError", "Switchboard", "QFileFormatError", "FORMAT_VERSION", "finite_time",
           "slice_of"]
