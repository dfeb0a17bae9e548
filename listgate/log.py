"""Logging: one logfmt line per event, to stderr or syslog facility ``mail``.

Every line is ``ts=… level=… daemon=… event=… [msg="…"] key=value …``
(logfmt: https://brandur.org/logfmt). ``ts`` is UTC, ISO 8601 with
milliseconds; ``level`` is ``debug|info|warning|error|critical``; ``daemon``
the program (``runner``, ``milter``, ``policy``, ``cli``, ...); ``event`` a
stable name scripts match on; ``msg`` an optional sentence for a human.

One event is always one line: a value is written bare when it is made only
of printable characters other than space, ``"``, ``=`` and ``\\``, else in
double quotes with ``\\`` and ``"`` escaped and every character that is not
printable (CR, LF, TAB, other controls, Unicode line separators, the bytes
of undecodable mail data) written as ``\\n``, ``\\r``, ``\\t``, ``\\xNN`` or
``\\uNNNN``. So a hostile Subject with CR/LF cannot split a line or inject a
fake one. An exception adds ``error="Type: text"`` and the traceback as
``trace="…"`` on the same line.

Call style (:func:`events`)::

    log = events("listgate.runner")
    log.info("qfile_processed", queue="in", qfile=qf.id, list=key)
    log.warning("qfile_stuck", "put back, will retry", qfile=qf.id, error=exc)

Fields whose value is None are left out. Records made by plain
:mod:`logging` calls (libraries) come out as ``event=message msg="…"``.
"""
from __future__ import annotations

import logging
import logging.handlers
import os
import re
import sys
import threading
import time
import traceback

from . import clock

MAX_VALUE = 2000        # characters of one value kept (a hostile header must not flood the log)
RESERVED = ("ts", "level", "daemon", "event", "msg")
_BARE_RE = re.compile(r'[^\s"=\\]+')
_KEY_RE = re.compile(r"[^A-Za-z0-9_.-]")
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}

_configured = False
_reported: set[str] = set()     # fallback reasons already said on stderr


# -- formatting ------------------------------------------------------------------
def _text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, BaseException):
        return str(value) or type(value).__name__
    return value if isinstance(value, str) else str(value)


def _escape_char(ch: str) -> str:
    if ch in _ESCAPES:
        return _ESCAPES[ch]
    if ch.isprintable() and not 0xD800 <= ord(ch) <= 0xDFFF:
        return ch
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:       # a byte of undecodable mail data (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def value(v) -> str:
    """One logfmt value: ``abc`` bare, or ``"a b \\"c\\"\\n"`` quoted and escaped (never a line break)."""
    s = _text(v)
    if len(s) > MAX_VALUE:
        s = s[:MAX_VALUE] + f"...({len(s) - MAX_VALUE} more)"
    if s and _BARE_RE.fullmatch(s) and s.isprintable():
        return s
    return '"' + "".join(map(_escape_char, s)) + '"'


def key(k: str) -> str:
    """A field name made safe: letters, digits, ``_ . -`` only."""
    return _KEY_RE.sub("_", k) or "_"


def fields(**kw) -> str:
    """``k=v k2="v 2"`` for the fields whose value is not None (logfmt, escaped)."""
    return " ".join(f"{key(k)}={value(v)}" for k, v in kw.items() if v is not None)


def kv(**kw) -> str:
    """Former name of :func:`fields` (kept for call sites not yet converted to :func:`events`)."""
    return fields(**kw)


def _daemon(program: str) -> str:
    name = program.rsplit("/", 1)[-1]
    if name == "listgate":
        return "cli"
    return name[len("listgate-"):] if name.startswith("listgate-") else name


class LogfmtFormatter(logging.Formatter):
    """Formats any record as one logfmt line (see the module docstring)."""

    def __init__(self, program: str = "listgate", prefix: str = ""):
        super().__init__()
        self.daemon = _daemon(program)
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        event = getattr(record, "lg_event", None)
        if event is not None:
            body = {"msg": record.lg_msg, **record.lg_fields}
        else:
            event = "message"
            body = {"msg": record.getMessage(), "logger": record.name}
        if record.exc_info and record.exc_info[0] is not None:
            exc = record.exc_info[1]
            body.setdefault("error", f"{type(exc).__name__}: {exc}")
            trace = "".join(traceback.format_exception(*record.exc_info)).rstrip()
            # the end of a long traceback is where it failed: keep that under MAX_VALUE
            body["trace"] = trace if len(trace) <= MAX_VALUE else "..." + trace[-(MAX_VALUE - 3):]
        head = f"ts={ts} level={record.levelname.lower()} daemon={value(self.daemon)} event={value(event)}"
        rest = fields(**body)
        return self.prefix + head + (" " + rest if rest else "")


# -- structured calls --------------------------------------------------------------
class EventLog:
    """A logger whose calls name an event and its fields: ``log.info("post_held", list=..., token=...)``.

    ``msg`` (second positional argument, optional) is a sentence for a human.
    Field names ``ts``, ``level``, ``daemon``, ``event`` and ``msg`` are
    renamed with a trailing ``_``. ``exception`` logs at error level with the
    current exception as ``error=``/``trace=``.
    """

    def __init__(self, name: str, logger: logging.Logger | None = None):
        self.logger = logger or logging.getLogger(name)

    def event(self, level: int, event: str, msg: str | None = None, /, **kw) -> None:
        """Log ``event`` at ``level`` (a :mod:`logging` level number)."""
        self._log(level, event, msg, None, kw)

    def _log(self, level: int, event: str, msg: str | None, exc_info, kw: dict) -> None:
        if not self.logger.isEnabledFor(level):
            return
        body = {(k + "_" if k in RESERVED else k): v for k, v in kw.items() if v is not None}
        # what caplog and other plain handlers print: the event, the sentence, the fields
        text = " ".join(p for p in (event, msg and value(msg), fields(**body)) if p)
        self.logger.log(level, "%s", text, exc_info=exc_info, stacklevel=3,
                        extra={"lg_event": event, "lg_msg": msg, "lg_fields": body})

    def debug(self, event: str, msg: str | None = None, /, **kw) -> None:
        self._log(logging.DEBUG, event, msg, None, kw)

    def info(self, event: str, msg: str | None = None, /, **kw) -> None:
        self._log(logging.INFO, event, msg, None, kw)

    def warning(self, event: str, msg: str | None = None, /, **kw) -> None:
        self._log(logging.WARNING, event, msg, None, kw)

    def error(self, event: str, msg: str | None = None, /, **kw) -> None:
        self._log(logging.ERROR, event, msg, None, kw)

    def exception(self, event: str, msg: str | None = None, /, **kw) -> None:
        self._log(logging.ERROR, event, msg, True, kw)

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 - logging's name
        return self.logger.isEnabledFor(level)


def events(name: str) -> EventLog:
    """The :class:`EventLog` for logger ``name`` (``listgate.<area>``)."""
    return EventLog(name)


# -- set-up ----------------------------------------------------------------------------
def syslog_problem(conf) -> str | None:
    """Why logging to syslog cannot work with ``conf`` (the site's ``logging``), or None.

    Only a unix socket path is checked (a missing ``/dev/log``: no syslog
    daemon, or a container without one); ``listgate check`` reports it.
    """
    if conf is None or conf.destination != "syslog":
        return None
    path = conf.syslog_socket
    if not isinstance(path, str):
        return None
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"syslog socket {path} (logging.syslog_socket): {exc.strerror}"
    import stat as _stat
    if not _stat.S_ISSOCK(st.st_mode):
        return f"syslog socket {path} (logging.syslog_socket) is not a socket"
    return None


def make_handler(conf, program: str = "listgate", *, stderr=None) -> tuple[logging.Handler, str | None]:
    """A handler writing logfmt lines where ``conf`` (the site's ``logging``) says, and the fallback's reason.

    ``destination: syslog`` logs to ``syslog_socket`` (facility ``mail``,
    ident ``program[pid]: ``). When that socket cannot be used the handler
    writes to stderr and the reason is returned (None otherwise); it is also
    said on stderr, once per process, naming the socket, the error and the
    fallback.
    """
    err = stderr or sys.stderr
    problem = None
    if conf is not None and conf.destination == "syslog":
        problem = syslog_problem(conf)
        if problem is None:
            try:
                handler = logging.handlers.SysLogHandler(
                    address=conf.syslog_socket, facility=logging.handlers.SysLogHandler.LOG_MAIL)
                handler.setFormatter(LogfmtFormatter(program, prefix=f"{program}[{os.getpid()}]: "))
                return handler, None
            except OSError as exc:
                problem = f"syslog socket {conf.syslog_socket} (logging.syslog_socket): {exc.strerror or exc}"
        problem = f"{problem}; logging to stderr instead"
        if problem not in _reported:
            _reported.add(problem)
            print(f"{program}: warning: {problem}", file=err, flush=True)
    handler = logging.StreamHandler(err)
    handler.setFormatter(LogfmtFormatter(program))
    return handler, problem


def setup(conf=None, program: str = "listgate", level: str | None = None, *, stderr=None) -> str | None:
    """Configure the ``listgate`` logger from the site's ``logging`` section (``conf``).

    Destination as :func:`make_handler`; a missing syslog socket is said on
    stderr and logged (``event=syslog_unavailable``). Returns that reason, or None.
    """
    global _configured
    root = logging.getLogger("listgate")
    for h in list(root.handlers):
        root.removeHandler(h)
    handler, problem = make_handler(conf, program, stderr=stderr)
    root.addHandler(handler)
    root.setLevel((level or (conf.level if conf is not None else "info")).upper())
    root.propagate = False
    _configured = True
    if problem is not None:   # in the log too, for whoever reads stderr's destination (journald)
        events("listgate.log").warning("syslog_unavailable", problem, socket=conf.syslog_socket)
    return problem


# -- repeated conditions -----------------------------------------------------------------
class Backoff:
    """When to warn again about a condition that lasts (a stuck qfile, a store that stays unavailable).

    :meth:`hit` on each occurrence answers the occurrence count when a warning
    is due: at the first, then after ``first`` seconds, then twice as long each
    time, up to ``maximum`` seconds (:func:`listgate.clock.now`). :meth:`clear`
    when the condition ends. Thread-safe (the runner's delivery threads share
    one). At most ``limit`` keys are remembered (the oldest are forgotten).
    """

    def __init__(self, first: float = 60.0, maximum: float = 3600.0, limit: int = 10000):
        self.first, self.maximum, self.limit = first, maximum, limit
        self._state: dict[str, list[float]] = {}      # key -> [count, next warning at, interval]
        self._lock = threading.Lock()

    def hit(self, key: str) -> int | None:
        """Count one occurrence of ``key``; its count when a warning is due now, else None."""
        now = clock.now()
        with self._lock:
            st = self._state.get(key)
            if st is None:
                if len(self._state) >= self.limit:
                    self._state.pop(next(iter(self._state)))
                self._state[key] = [1, now + self.first, self.first]
                return 1
            st[0] += 1
            if now < st[1]:
                return None
            st[2] = min(st[2] * 2, self.maximum)
            st[1] = now + st[2]
            return int(st[0])

    def clear(self, key: str) -> int:
        """The condition of ``key`` ended: how many occurrences it had (0 if none)."""
        with self._lock:
            st = self._state.pop(key, None)
        return int(st[0]) if st else 0
