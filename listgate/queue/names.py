"""Queue names, file suffixes, qfile ids and the two types every caller sees.

``ID`` is ``<arrival ns, 19 digits>-<pid>-<counter>-<random>``: names sort by
arrival time (the original one, kept when a qfile moves between queues), and
equal arrival times are told apart by writer pid, a per-process counter and 32
random bits, so they neither collide nor get skipped.
"""
from __future__ import annotations

import hashlib
import itertools
import math
import os
import re
import secrets
from dataclasses import dataclass, field

QUEUES = ("in", "bounces", "out", "virgin", "retry", "shunt", "bad")
READY = ".qf"
HELD = ".held"
DONE = ".done"
# ``ID.staged``: written, not yet ready (``enqueue(staged=True)``); no runner matches it, recovery
# leaves it alone, ``release_staged`` makes it ``ID.qf`` with one rename
STAGED = ".staged"
# ``ID.edit.PID``: taken by ``listgate queue edit`` (process PID); no runner matches it
EDIT = ".edit"
# suffix of a non-regular entry (symlink, FIFO, directory, device) set aside in ``bad``:
# matched by no scan, never opened; kept as evidence for a human
ASIDE = ".notfile"
ID_RE = re.compile(r"\A(\d{19})-\d{1,10}-\d{6}-[0-9a-f]{8}\Z")
# queues where a qfile rests for a human rather than waits for a runner: the
# attempt count is kept there as evidence instead of being reset
RESTING = ("shunt", "bad")

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
    # delivery indices folded in from the progress file ``ID.done`` when it was read: the
    # hand-overs of the run that holds (or held) it, not yet written into the qfile itself
    progressed: int = field(repr=False, default=0)
    # progress lines written by ``record_done(..., sync=False)`` and not yet made durable by
    # ``sync_done``: 0 none, 1 the lines, 2 the lines and the new progress file's name
    unsynced: int = field(repr=False, default=0)


def new_id(arrival: float) -> str:
    """A fresh qfile id for ``arrival`` (POSIX seconds); sorts by arrival, then tie-breakers."""
    # whole seconds and fraction apart: arrival * 1e9 would lose the last digits to float rounding
    whole = int(arrival // 1)
    ns = max(0, whole * 1_000_000_000 + round((arrival - whole) * 1e9))
    return f"{ns:019d}-{os.getpid()}-{next(_counter) % 1000000:06d}-{secrets.token_hex(4)}"


def derived_id(qid: str, n: int) -> str:
    """The id of the ``n``-th qfile made from qfile ``qid`` (``n`` = 0: ``qid`` itself).

    Same arrival and tie-breakers as ``qid``, a digest of (``qid``, ``n``) as the
    last field: made again after a crash, it is the same id, so a replay finds
    what it already wrote instead of writing a copy. ValueError unless ``qid`` is an id.
    """
    m = ID_RE.match(qid)
    if m is None:
        raise ValueError(f"not a qfile id: {qid!r}")
    if n == 0:
        return qid
    digest = hashlib.sha1(f"{qid}/{n}".encode("ascii")).hexdigest()[:8]
    return qid[:-8] + digest


def id_arrival(qid: str) -> float | None:
    """The arrival time (POSIX seconds) encoded in a qfile id, or None if it is not one."""
    m = ID_RE.match(qid)
    return int(m.group(1)) / 1e9 if m else None


def slice_of(qid: str, slices: int) -> int:
    """The hash slice (0 .. slices-1) a qfile id belongs to; stable across processes."""
    h = int.from_bytes(hashlib.sha1(qid.encode("ascii", "replace")).digest()[:8], "big")
    return (h * slices) >> 64


def check_slice(slice: int, slices: int) -> None:
    """Raise ValueError unless ``slice`` is one of ``slices`` hash slices."""
    if slices < 1 or not 0 <= slice < slices:
        raise ValueError(f"slice {slice} of {slices} is not a valid hash slice")


def finite_time(value) -> bool:
    """Whether ``value`` can be a time in metadata (arrival, retry_at): an int or float
    that is finite as a float (a hand-edited or hostile qfile may hold anything)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond float range
        return False


def safe_name(qid: str) -> bool:
    """A name that stays inside the queue directory and is not a temporary file."""
    return bool(qid) and "/" not in qid and "\0" not in qid and not qid.startswith(".")
