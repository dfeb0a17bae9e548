"""The one clock every listgate component reads.

Bounce rules count days, so tests (end-to-end ones included, across process
boundaries) must be able to move time. All code calls :func:`now`; nothing
else in listgate reads the wall clock for decisions.

Sources, in order:

* an in-process override set with :func:`set_offset` / :func:`freeze`
  (unit tests);
* the file named by the environment variable ``LISTGATE_CLOCK_FILE`` (read
  at the first call and after :func:`reset`): it
  holds a number of seconds (float) added to the real time. A test advances
  every process it started by rewriting that file (:func:`write_offset_file`);
  the file is re-read when its mtime changes, so the cost per call is one
  ``stat``;
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
_file_cache: tuple[str, tuple[int, int], float] | None = None  # (path, (inode, mtime), offset)


_UNSET = object()
_env_path: object = _UNSET  # $LISTGATE_CLOCK_FILE, read once (os.environ costs µs on hot paths)


def _file_offset() -> float:
    global _file_cache, _env_path
    if _env_path is _UNSET:
        _env_path = os.environ.get(ENV_VAR) or None
    path = _env_path
    if path is None:
        return 0.0
    try:
        st = os.stat(path)
    except OSError:
        return 0.0
    # os.replace gives a new inode, so (inode, mtime) changes on every rewrite
    mtime = (st.st_ino, st.st_mtime_ns)
    if _file_cache and _file_cache[0] == path and _file_cache[1] == mtime:
        return _file_cache[2]
    try:
        with open(path, encoding="ascii") as fh:
            value = float(fh.read().strip() or 0)
    except (OSError, ValueError):
        value = 0.0
    _file_cache = (path, mtime, value)
    return value


def now() -> float:
    """Current time as a POSIX timestamp (seconds, float)."""
    if _frozen is not None:
        return _frozen
    if _env_path is None:       # known to have no clock file: skip _file_offset (every RCPT decision reads the clock)
        return time.time() + _offset
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
    """Back to real time (plus the clock file, if any); ``$LISTGATE_CLOCK_FILE`` is read again."""
    global _frozen, _offset, _file_cache, _env_path
    _frozen = None
    _offset = 0.0
    _file_cache = None
    _env_path = _UNSET


def write_offset_file(path: str, seconds: float) -> None:
    """Atomically write ``seconds`` to a clock file read by other processes."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="ascii") as fh:
        fh.write(repr(float(seconds)))
    os.replace(tmp, path)
