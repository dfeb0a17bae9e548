"""The one clock every listgate component reads.

Bounce rules count days, so tests (end-to-end ones included, across process
boundaries) must be able to move time. All code calls :func:`now`; nothing
else in listgate reads the wall clock for decisions.

Sources, in order:

* an in-process override set with :func:`set_offset` / :func:`freeze`
  (unit tests);
* the file named by the environment variable ``LISTGATE_CLOCK_FILE``, read
  at every call: it holds a number of seconds (float) added to the real
  time. A test advances every process it started by rewriting that file
  (:func:`write_offset_file`);
* the real time.

Times are POSIX timestamps in seconds (float, UTC).
"""
from __future__ import annotations

import os
import time
from datetime import datetime, timezone

ENV_VAR = "LISTGATE_CLOCK_FILE"

_frozen: float | None = None
_offset: float = 0.0


def _file_offset() -> float:
    """The clock file's offset (0 without one, or when it is unreadable)."""
    path = os.environ.get(ENV_VAR)
    if not path:
        return 0.0
    try:
        with open(path, encoding="ascii") as fh:
            return float(fh.read().strip() or 0)
    except (OSError, ValueError):
        return 0.0


def now() -> float:
    """Current time as a POSIX timestamp (seconds, float)."""
    if _frozen is not None:
        return _frozen
    return time.time() + _offset + _file_offset()


def now_dt() -> datetime:
    """Current time as an aware UTC :class:`datetime`."""
    return datetime.fromtimestamp(now(), tz=timezone.utc)


def day(ts: float | None = None) -> str:
    """The UTC calendar day of ``ts`` (default: now) as ``YYYY-MM-DD``.

    Bounce scoring allows one increment per member per day; this is the day.
    """
    return datetime.fromtimestamp(now() if ts is None else ts, tz=timezone.utc).strftime("%Y-%m-%d")


def freeze(ts: float | None) -> None:
    """Pin :func:`now` to ``ts`` (``None`` un-pins). In-process tests only."""
    global _frozen
    _frozen = ts


def advance(seconds: float) -> None:
    """Move the in-process clock forward by ``seconds``."""
    global _frozen, _offset
    if _frozen is not None:
        _frozen += seconds
    else:
        _offset += seconds


def set_offset(seconds: float) -> None:
    """Set the in-process offset from real time (seconds)."""
    global _offset
    _offset = seconds


def reset() -> None:
    """Back to real time (plus the clock file, if any)."""
    global _frozen, _offset
    _frozen = None
    _offset = 0.0


def write_offset_file(path: str, seconds: float) -> None:
    """Atomically write ``seconds`` to a clock file read by other processes."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="ascii") as fh:
        fh.write(repr(float(seconds)))
    os.replace(tmp, path)
