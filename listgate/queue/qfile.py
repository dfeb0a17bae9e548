"""The qfile format: metadata and the raw message in one text-editor-readable file.

A qfile is, byte for byte::

    listgate-qfile 1\\n                 magic and format version
    {\\n "arrival": 1764408000.5,\\n ...}  metadata: a JSON object (RFC 8259), UTF-8,
                                         one key per line, keys sorted
    \\n--- message ---\\n                 separator line
    <raw message bytes>                  verbatim to the end of the file: 8-bit, CRLF,
                                         NUL and broken MIME are kept as received

The separator cannot occur inside the JSON text: JSON escapes newlines in
strings, and ``---`` is no JSON token, so the first separator line ends the
metadata. Nothing here unpickles or evaluates anything: qfiles hold mail from
strangers. Readers accept every version up to :data:`FORMAT_VERSION`
(``_READERS``); a file from a newer listgate, or one that does not parse, raises
:class:`QFileFormatError`, which the switchboard turns into a move to ``bad``.
"""
from __future__ import annotations

import json

MAGIC = b"listgate-qfile"
FORMAT_VERSION = 1
SEPARATOR = b"\n--- message ---\n"
_MAX_FIRST_LINE = 64


class QFileFormatError(ValueError):
    """The bytes are not a qfile this listgate can read (message says why)."""


def dumps(meta: dict, msg: bytes) -> bytes:
    """Serialise ``meta`` (a JSON-safe dict) and ``msg`` (raw bytes) as a current-version qfile.

    Raises TypeError/ValueError if ``meta`` is not JSON-serialisable or ``msg``
    is not bytes-like: a caller's bug, raised before anything touches the disk.
    """
    if not isinstance(meta, dict):
        raise TypeError(f"qfile metadata must be a dict, not {type(meta).__name__}")
    if not isinstance(msg, (bytes, bytearray, memoryview)):
        raise TypeError(f"qfile message must be bytes, not {type(msg).__name__}")
    try:
        head = _object_text(meta, ascii_only=False).encode("utf-8")
    except UnicodeEncodeError:
        # lone surrogates (e.g. from surrogateescape-decoded headers) cannot be UTF-8:
        # \\u escapes keep them exactly and the file stays valid
        head = _object_text(meta, ascii_only=True).encode("ascii")
    return b"".join((MAGIC, b" %d\n" % FORMAT_VERSION, head, SEPARATOR, bytes(msg)))


def _object_text(meta: dict, *, ascii_only: bool) -> str:
    """A JSON object with one key per line, keys sorted, each value on its key's line.

    Values are encoded one by one without ``indent`` so the C encoder does the
    work (``indent`` switches json to its pure-Python encoder, which cost more
    than the rest of an enqueue).
    """
    if not all(isinstance(k, str) for k in meta):
        raise TypeError("qfile metadata keys must be strings")
    enc = json.JSONEncoder(ensure_ascii=ascii_only, allow_nan=False, separators=(", ", ": ")).encode
    lines = ",\n".join(f" {enc(k)}: {enc(meta[k])}" for k in sorted(meta))
    return "{\n" + lines + "\n}" if lines else "{}"


def loads(data: bytes) -> tuple[dict, bytes]:
    """Parse a qfile's bytes into ``(meta, msg)``; raises :class:`QFileFormatError`."""
    end = data.find(b"\n", 0, _MAX_FIRST_LINE)
    if end < 0:
        raise QFileFormatError("no 'listgate-qfile VERSION' first line")
    magic, _, version = data[:end].rstrip(b"\r").partition(b" ")
    if magic != MAGIC:
        raise QFileFormatError(f"first line is not 'listgate-qfile VERSION': {data[:end][:40]!r}")
    try:
        ver = int(version)
    except ValueError:
        raise QFileFormatError(f"bad format version {version[:20]!r}") from None
    reader = _READERS.get(ver)
    if reader is None:
        raise QFileFormatError(f"format version {ver} is not readable by this listgate "
                               f"(reads 1 to {FORMAT_VERSION})")
    return reader(data, end + 1)


def _read_v1(data: bytes, start: int) -> tuple[dict, bytes]:
    sep = data.find(SEPARATOR, start - 1)
    if sep < 0:
        raise QFileFormatError("no '--- message ---' separator line after the metadata")
    try:
        meta = json.loads(data[start:sep].decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError as exc:
        raise QFileFormatError(f"metadata is not UTF-8: {exc.reason} at byte {start + exc.start}") from None
    except json.JSONDecodeError as exc:
        raise QFileFormatError(f"metadata is not valid JSON: {exc.msg} (line {exc.lineno + 1} of the file)") from None
    except RecursionError:
        raise QFileFormatError("metadata is nested too deeply") from None
    if not isinstance(meta, dict):
        raise QFileFormatError(f"metadata is a JSON {type(meta).__name__}, not an object")
    return meta, data[sep + len(SEPARATOR):]


def _no_constant(name: str):
    # json.loads accepts NaN/Infinity, which dumps (allow_nan=False) refuses: such
    # a file could be read but never moved, shunted or updated.
    raise QFileFormatError(f"metadata holds {name}, which is not JSON")


_READERS = {1: _read_v1}
