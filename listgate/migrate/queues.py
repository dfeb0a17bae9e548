"""Mailman 2.1 queue entries (``PREFIX/qfiles/QUEUE/``) read as (message bytes, metadata).

Layouts (Mailman 2.1 ``Queue/Switchboard.py``):

- 2.1.5 and later: ``RCVTIME+SHA.pck`` holds two pickles, the message then
  the metadata dict. The message is a pickled ``Mailman.Message.Message``
  (protocol 1, ``SAVE_MSGS_AS_PICKLES``) or, when the metadata says
  ``_parsemsg``, the message text pickled as a string (protocol 0).
  2.1.9 and later rename an entry being processed to ``.bak``: it is read
  like a ``.pck`` (the run that took it never finished).
- earlier releases: a message file (``FILEBASE.msg`` text, or ``FILEBASE.pck``
  holding only the pickled message) with a ``FILEBASE.db`` metadata file in
  Python 2 ``marshal`` format, read here by :func:`read_marshal`, a reader of
  only the plain data types (no code objects).

The arrival time is the metadata's ``received_time``, else the ``RCVTIME``
the file name starts with.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import Any

from .message import MessageFormatError, flatten
from .records import read_file
from .unpickle import UnsafePickle, load_all

MAX_DEPTH = 20


@dataclass
class QueueEntry:
    """One Mailman queue entry: its queue, file(s), arrival, and either the message or the reason it
    cannot be read."""

    queue: str
    files: list[str]
    arrival: float
    msg: bytes | None = None
    meta: dict = field(default_factory=dict)
    error: str | None = None
    raw: bytes = b""                  # the entry's bytes as found (kept with a refused entry)


def scan(qfiles_dir: str) -> list[QueueEntry]:
    """Every entry under ``qfiles_dir``, oldest first (by arrival, then file name)."""
    entries: list[QueueEntry] = []
    try:
        queues = sorted(os.listdir(qfiles_dir))
    except FileNotFoundError:
        return entries
    for queue in queues:
        qdir = os.path.join(qfiles_dir, queue)
        if not os.path.isdir(qdir):
            continue
        names = sorted(os.listdir(qdir))
        bases: dict[str, dict[str, str]] = {}
        for name in names:
            base, ext = os.path.splitext(name)
            if ext in (".pck", ".bak", ".msg", ".db", ".psv"):
                bases.setdefault(base, {})[ext] = os.path.join(qdir, name)
        for base, parts in bases.items():
            entries.append(_entry(queue, base, parts))
    entries.sort(key=lambda e: (e.arrival, e.files[0]))
    return entries


def _entry(queue: str, base: str, parts: dict[str, str]) -> QueueEntry:
    files = sorted(parts.values())
    entry = QueueEntry(queue, files, _name_time(base))
    try:
        if ".db" in parts:
            entry.meta = _marshal_meta(parts[".db"])
            body = parts.get(".msg") or parts.get(".pck")
            if body is None:
                raise ValueError("metadata file without its message file")
            data = read_file(body) or b""
            entry.raw = data
            entry.msg = data if body.endswith(".msg") else flatten(load_all(data, 1, what="queue entry")[0])
        else:
            path = parts.get(".pck") or parts.get(".bak") or parts.get(".psv")
            if path is None:
                raise ValueError("message file without its metadata file")
            data = read_file(path) or b""
            entry.raw = data
            msg, meta = load_all(data, 2, what="queue entry")
            if not isinstance(meta, dict):
                raise ValueError("queue entry metadata is not a dict")
            entry.meta = meta
            entry.msg = flatten(msg)
    except (OSError, ValueError, UnsafePickle, MessageFormatError) as exc:
        entry.error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, ValueError) else str(exc)
        return entry
    received = entry.meta.get("received_time")
    if isinstance(received, (int, float)) and not isinstance(received, bool) and received > 0:
        entry.arrival = float(received)
    return entry


def _name_time(base: str) -> float:
    try:
        return float(base.split("+", 1)[0])
    except ValueError:
        return 0.0


def _marshal_meta(path: str) -> dict:
    data = read_file(path)
    if data is None:
        raise ValueError("metadata file vanished")
    value = read_marshal(data)
    if not isinstance(value, dict):
        raise ValueError("metadata is not a dict")
    return value


def read_marshal(data: bytes) -> Any:
    """A Python 2 ``marshal`` value made of None, booleans, numbers, strings, tuples, lists and
    dicts (strings as latin-1 text, as the pickles are read). ValueError for anything else."""
    reader = _Marshal(data)
    return reader.value(0)


class _Marshal:
    def __init__(self, data: bytes):
        self.data, self.pos, self.refs = data, 0, []

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError("truncated marshal data")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def int32(self) -> int:
        return struct.unpack("<i", self.take(4))[0]

    def value(self, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise ValueError("marshal data nested too deeply")
        code = chr(self.take(1)[0] & 0x7F)
        if code == "N":
            return None
        if code in "TF":
            return code == "T"
        if code == "i":
            return self.int32()
        if code == "I":
            return struct.unpack("<q", self.take(8))[0]
        if code == "l":
            n = self.int32()
            digits = [struct.unpack("<H", self.take(2))[0] for _ in range(abs(n))]
            total = sum(d << (15 * i) for i, d in enumerate(digits))
            return -total if n < 0 else total
        if code == "f":
            return float(self.take(self.take(1)[0]).decode("ascii"))
        if code == "g":
            return struct.unpack("<d", self.take(8))[0]
        if code in "stu":
            raw = self.take(self.int32())
            text = raw.decode("utf-8", "replace") if code == "u" else raw.decode("latin-1")
            if code == "t":
                self.refs.append(text)
            return text
        if code == "R":
            index = self.int32()
            if not 0 <= index < len(self.refs):
                raise ValueError("bad marshal string reference")
            return self.refs[index]
        if code in "([":
            items = [self.value(depth + 1) for _ in range(self.int32())]
            return tuple(items) if code == "(" else items
        if code == "{":
            out = {}
            while True:
                if self.data[self.pos:self.pos + 1] == b"0":
                    self.pos += 1
                    return out
                key = self.value(depth + 1)
                try:
                    out[key] = self.value(depth + 1)
                except TypeError:
                    raise ValueError("unhashable marshal dict key") from None
        raise ValueError(f"marshal type {code!r} is not plain data")
