"""The qfile format: metadata and the raw message in one text-editor-readable file.

A qfile (version 2, what :func:`dumps` writes) is, byte for byte::

    listgate-qfile 2 LENGTH\\n          magic, format version, and LENGTH: the number of
                                         bytes of the qfile proper that follow this line
    {\\n "arrival": 1764408000.5,\\n ...}  metadata: a JSON object (RFC 8259), UTF-8,
                                         one key per line, keys sorted
    \\n--- message ---\\n                 separator line
    <raw message bytes>                  verbatim up to LENGTH: 8-bit, CRLF, NUL and
                                         broken MIME are kept as received
    <padding>                            anything after those LENGTH bytes: ignored

Version 1 (``listgate-qfile 1\\n``, no LENGTH) is the same without padding: the
message runs to the end of the file. Readers keep reading it.

Why version 2: the switchboard writes a qfile into a pre-allocated pool file of
fixed size (``listgate.queue.switchboard``, ``.recycle/``) without truncating
it, because changing a file's size makes ``fdatasync`` commit the file
system's journal (and creating a file costs inode allocation), which is what
the milter paid per post. So the end of the qfile can no longer be the end
of the file; LENGTH says where it is, and what follows is the previous
content of the pool file. LENGTH also catches a file cut short (it is then
larger than what follows). To edit a version 2 file by hand, keep LENGTH
right, or make it a version 1 file (first line ``listgate-qfile 1``, padding
removed).

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
FORMAT_VERSION = 2
SEPARATOR = b"\n--- message ---\n"
_MAX_FIRST_LINE = 64


class QFileFormatError(ValueError):
    """The bytes are not a qfile this listgate can read (message says why)."""


def dumps(meta: dict, msg: bytes) -> bytes:
    """Serialise ``meta`` (a JSON-safe dict) and ``msg`` (raw bytes) as a current-version qfile.

    The result has no padding: LENGTH is everything after the first line.
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
    length = len(head) + len(SEPARATOR) + len(msg)
    return b"".join((MAGIC, b" %d %d\n" % (FORMAT_VERSION, length), head, SEPARATOR, bytes(msg)))


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
    """Parse a qfile's bytes (padding included) into ``(meta, msg)``; raises :class:`QFileFormatError`."""
    end = data.find(b"\n", 0, _MAX_FIRST_LINE)
    if end < 0:
        raise QFileFormatError("no 'listgate-qfile VERSION' first line")
    magic, _, rest = data[:end].rstrip(b"\r").partition(b" ")
    if magic != MAGIC:
        raise QFileFormatError(f"first line is not 'listgate-qfile VERSION': {data[:end][:40]!r}")
    version, _, args = rest.partition(b" ")
    try:
        ver = int(version)
    except ValueError:
        raise QFileFormatError(f"bad format version {version[:20]!r}") from None
    reader = _READERS.get(ver)
    if reader is None:
        raise QFileFormatError(f"format version {ver} is not readable by this listgate "
                               f"(reads 1 to {FORMAT_VERSION})")
    return reader(data, end + 1, args)


def _read_v1(data: bytes, start: int, args: bytes) -> tuple[dict, bytes]:
    if args:
        raise QFileFormatError(f"bad format version {(b'1 ' + args)[:20]!r}")
    return _parse(data, start, len(data))


def _read_v2(data: bytes, start: int, args: bytes) -> tuple[dict, bytes]:
    # digits only: int() would also take '+5', ' 5' or '5_0'
    if not (args.isdigit() and args.isascii()):
        raise QFileFormatError(f"format version 2 needs a decimal LENGTH, not {args[:20]!r}")
    length = int(args)
    if length > len(data) - start:
        raise QFileFormatError(f"LENGTH {length} is beyond the end of the file "
                               f"({len(data) - start} bytes follow the first line): cut short")
    return _parse(data, start, start + length)


def _parse(data: bytes, start: int, stop: int) -> tuple[dict, bytes]:
    """Metadata from ``start`` to the separator, the message from there to ``stop``."""
    sep = data.find(SEPARATOR, start - 1, stop)
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
    return meta, data[sep + len(SEPARATOR):stop]


def _no_constant(name: str):
    # json.loads accepts NaN/Infinity, which dumps (allow_nan=False) refuses: such
    # a file could be read but never moved, shunted or updated.
    raise QFileFormatError(f"metadata holds {name}, which is not JSON")


_READERS = {1: _read_v1, 2: _read_v2}
