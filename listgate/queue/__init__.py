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
        def __init__(self, queue_dir: str, name: str, *, max_attempts: int = 3)
        def enqueue(self, msg: bytes, meta: dict, *, arrival: float | None = None, qid: str | None = None) -> str
            # temp name, write, fdatasync, rename, fsync dir; returns the qfile id; raises QueueError
        def dequeue(self, *, slice: int = 0, slices: int = 1) -> QFile | None
            # oldest first (arrival, then tie-breaker); marks the file in progress; unparsable → bad
        def ids(self) -> list[str]            # FIFO order, not in progress
        def finish(self, qf: QFile) -> None   # done: remove
        def update(self, qf: QFile, meta: dict) -> None
            # durably rewrite the held file's metadata (e.g. fan-out progress) before continuing
        def move(self, qf: QFile, to: str, *, reason: str | None = None, meta: dict | None = None) -> str
            # finish here and enqueue in queue ``to`` keeping id and arrival (retry, shunt, bad, out)
        def release(self, qf: QFile) -> None  # put back unprocessed (e.g. SIGTERM before work began)
        def recover(self) -> int
            # at start-up, under the slice lock: files left in progress go back, attempts+1 when
            # the interrupted run made no progress (else 0); at max_attempts → bad with reason

Beyond the contract: ``Switchboard.for_site(site, name)``, ``held_ids()``,
``peek(id)``, ``take(id)``, ``recover(slice=, slices=)``, ``record_done``
(fan-out progress), ``take_for_edit``/``end_edit`` (``listgate queue edit``);
one instance may be shared by threads. Where things are:

* ``qfile``       the file format (plain text; version 2 files of older releases are read);
* ``names``       queue names, file suffixes, qfile ids, QueueError and QFile;
* ``switchboard`` the directory layout, writing, reading, finishing, editing;
* ``progress``    fan-out progress files (``ID.done``);
* ``recovery``    start-up recovery and quarantine to ``bad``;
* ``lock``        one live runner per hash slice (``flock``), which ``recover`` needs;
* ``files``       opening without following links, durable writes, temporary names.
"""
from .names import QUEUES, QFile, QueueError, derived_id, finite_time, id_arrival, new_id, slice_of
from .qfile import FORMAT_VERSION, QFileFormatError
from .switchboard import Switchboard

__all__ = ["QUEUES", "QFile", "QueueError", "Switchboard", "QFileFormatError", "FORMAT_VERSION", "finite_time",
           "id_arrival", "new_id", "slice_of", "derived_id"]
