"""The qfile format: metadata and the raw message in one plain text file.

A qfile (version 1, what :func:`dumps` writes) is, byte for byte::

    listgate-qfile 1\n                  magic and format version
    {\n "arrival": 1764408000.5,\n ...}  metadata: a JSON object (RFC 8259), UTF-8,
                                         one key per line, keys sorted
    \n--- message ---\n                 separator line
    <raw message bytes>                  to the end of the file: 8-bit, CRLF, NUL and
                                         broken MIME are kept as received

The file holds nothing else, so an admin can edit it with a text editor (in
place, or with ``listgate queue edit ID``) and it is read as edited: there is
no length or checksum to keep right. (Mailman 2.1.5 kept its queue files
editable on purpose.) The separator cannot occur inside the JSON text: JSON
escapes newlines in strings, and ``---`` is no JSON token, so the first
separator line ends the metadata.

Version 2 (``listgate-qfile 2 LENGTH CRC32``) was written by listgate
releases that reused 64 KiB slot files: LENGTH is the number of bytes of the
qfile proper after the first line, CRC32 is zlib.crc32 of exactly those
bytes (8 lowercase hex digits), and whatever follows them is padding, the
old content of the slot file. Such files are still read, so an upgrade
strands no queued mail, and never written; a LENGTH beyond the end of the
file or a wrong CRC32 (a version 2 file edited in place) is a
:class:`QFileFormatError`, since the padding holds other people's old mail
that must not reach a recipient. ``listgate queue edit`` hands the editor
such a file as version 1 text.

VERSION and LENGTH are ASCII decimal digits without sign, spaces or leading
zeros. Nothing here unpickles or evaluates anything: qfiles hold mail from
strangers. Whatever :func:`loads` accepts, :func:`dumps` can write back (no
NaN or infinite numbers, no integers beyond Python's 4300-digit conversion
limit), so any qfile that is read can also be moved or shunted. A file of
another version, or one that does not parse, raises
:class:`QFileFormatError`, which the switchboard turns into a move to ``bad``.
"""
from __future__ import annotations

import json
import math
import zlib

MAGIC = b"listgate-qfile"
FORMAT_VERSION = 1          # what dumps writes; loads also reads 2 (_READERS)
SEPARATOR = b"\n--- message ---\n"
_MAX_FIRST_LINE = 64


class QFileFormatError(ValueError):
    """The bytes are not a qfile this listgate can read (message says why)."""


def dumps(meta: dict, msg: bytes) -> bytes:
    """Serialise ``meta`` (a JSON-safe dict) and ``msg`` (raw bytes) as a version 1 qfile.

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
    """Parse a qfile's bytes (padding included) into ``(meta, msg)``; raises :class:`QFileFormatError`."""
    end = data.find(b"\n", 0, _MAX_FIRST_LINE)
    if end < 0:
        raise QFileFormatError("no 'listgate-qfile VERSION' first line")
    magic, _, rest = data[:end].rstrip(b"\r").partition(b" ")
    if magic != MAGIC:
        raise QFileFormatError(f"first line is not 'listgate-qfile VERSION': {data[:end][:40]!r}")
    version, _, args = rest.partition(b" ")
    if not _is_decimal(version):
        raise QFileFormatError(f"bad format version {version[:20]!r}")
    ver = int(version)
    reader = _READERS.get(ver)
    if reader is None:
        raise QFileFormatError(f"format version {ver} is not readable by this listgate "
                               f"(reads {' and '.join(map(str, _READERS))})")
    return reader(data, end + 1, args)


def _read_v1(data: bytes, start: int, args: bytes) -> tuple[dict, bytes]:
    if args:
        raise QFileFormatError(f"bad format version {(b'1 ' + args)[:20]!r}")
    return _parse(data, start, len(data))


def _read_v2(data: bytes, start: int, args: bytes) -> tuple[dict, bytes]:
    # written by releases with a pool of slot files: padding follows LENGTH bytes
    field, _, crc = args.partition(b" ")
    if not _is_decimal(field):
        raise QFileFormatError(f"format version 2 needs a decimal LENGTH, not {field[:20]!r}")
    if not _is_crc(crc):
        raise QFileFormatError(f"format version 2 needs 'LENGTH CRC32' (8 lowercase hex digits) "
                               f"after the version, not {args[:30]!r}")
    length = int(field)
    if length > len(data) - start:
        raise QFileFormatError(f"LENGTH {length} is beyond the end of the file "
                               f"({len(data) - start} bytes follow the first line): cut short")
    stop = start + length
    if zlib.crc32(memoryview(data)[start:stop]) != int(crc, 16):
        raise QFileFormatError(f"CRC32 of the {length} bytes after the first line is not {crc.decode()}: "
                               "edited or damaged (a wrong LENGTH, or changed content)")
    return _parse(data, start, stop)


def _is_decimal(field: bytes) -> bool:
    # int() would also take '+5', ' 5', '5_0', '05' or non-ASCII digits
    return field.isdigit() and field.isascii() and (field == b"0" or not field.startswith(b"0"))


def _is_crc(field: bytes) -> bool:
    return len(field) == 8 and field.isascii() and all(c in b"0123456789abcdef" for c in field)


def _parse(data: bytes, start: int, stop: int) -> tuple[dict, bytes]:
    """Metadata from ``start`` to the separator, the message from there to ``stop``."""
    sep = data.find(SEPARATOR, start - 1, stop)
    if sep < 0:
        raise QFileFormatError("no '--- message ---' separator line after the metadata")
    try:
        meta = json.loads(data[start:sep].decode("utf-8"), parse_constant=_no_constant, parse_float=_finite)
    except QFileFormatError:
        raise  # from _no_constant or _finite
    except UnicodeDecodeError as exc:
        raise QFileFormatError(f"metadata is not UTF-8: {exc.reason} at byte {start + exc.start}") from None
    except json.JSONDecodeError as exc:
        raise QFileFormatError(f"metadata is not valid JSON: {exc.msg} (line {exc.lineno + 1} of the file)") from None
    except RecursionError:
        raise QFileFormatError("metadata is nested too deeply") from None
    except ValueError as exc:
        # an integer beyond the int/str conversion limit (sys.int_info.str_digits_check_threshold):
        # dumps could not write it back either
        raise QFileFormatError(f"metadata holds a number that cannot be read: {exc}") from None
    if not isinstance(meta, dict):
        raise QFileFormatError(f"metadata is a JSON {type(meta).__name__}, not an object")
    return meta, data[sep + len(SEPARATOR):stop]


def _no_constant(name: str):
    # json.loads accepts NaN/Infinity, which dumps (allow_nan=False) refuses: such
    # a file could be read but never moved, shunted or updated.
    raise QFileFormatError(f"metadata holds {name}, which is not JSON")


def _finite(text: str) -> float:
    # 1e999 parses to inf without calling parse_constant; dumps would refuse it
    value = float(text)
    if not math.isfinite(value):
        raise QFileFormatError(f"metadata holds {text[:30]}, which overflows a float")
    return value


_READERS = {1: _read_v1, 2: _read_v2}
