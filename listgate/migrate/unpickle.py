"""Reading Mailman 2.1's Python 2 pickles without running anything they name.

A Mailman 2.1 site keeps its state in pickles (``config.pck``, ``pending.pck``,
``request.pck``, held messages, queue entries): data from another system,
written by Python 2 (protocols 0 to 2). :func:`loads` reads one with
``encoding='latin1'`` (every Python 2 byte string comes back as a ``str``
whose code points are its bytes: nothing fails to decode, and
``text.encode('latin-1')`` gives the bytes back), through the pure-Python
unpickler with

- only the opcodes of protocols 0-2 (later ones carry length fields a
  damaged file can use to allocate gigabytes);
- only the globals in :data:`ALLOWED`: the Mailman and ``email`` classes
  Mailman pickled, each mapped to an inert :class:`StandIn` whose state is a
  plain dict (no method of the original class ever runs), plus ``set``,
  ``frozenset`` and ``copy_reg._reconstructor`` limited to making a
  stand-in. Any other global (``os.system``, ``subprocess.Popen``, ...)
  refuses the whole file with :class:`UnsafePickle`;
- a size bound (:data:`MAX_PICKLE_BYTES`) checked before reading.

Several pickles in one file (a queue entry: message, then metadata) are read
with :func:`load_all`.
"""
from __future__ import annotations

import io
import pickle
import pickletools
from typing import Any

MAX_PICKLE_BYTES = 64 * 1024 * 1024


class UnsafePickle(ValueError):
    """The data is not a pickle we read: damaged, too large, or naming a global we refuse."""


class StandIn:
    """An inert object for a pickled instance of a known Mailman or ``email`` class.

    ``mm_class`` is the original ``module.name``; the pickled state lands in
    ``__dict__`` (a dict state) or ``state`` (anything else). Nothing of the
    original class is imported or run.
    """

    mm_class = "?"

    def __init__(self, *args: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
            state = {**state[0], **(state[1] if isinstance(state[1], dict) else {})}  # (dict, slots)
        if isinstance(state, dict):
            self.__dict__.update({k: v for k, v in state.items() if isinstance(k, str)})
        else:
            self.state = state

    def get(self, name: str, default: Any = None) -> Any:
        return self.__dict__.get(name, default)

    def __repr__(self) -> str:
        return f"<{self.mm_class} stand-in>"


def _stand_in(module: str, name: str) -> type:
    return type(name, (StandIn,), {"mm_class": f"{module}.{name}", "__module__": __name__})


# Classes Mailman 2.1 pickled (module names as Python 2 wrote them; email 2.x/3.x used
# capitalised module names, email 4 lower case).
_CLASSES = [
    ("Mailman.Bouncer", "_BounceInfo"),
    ("Mailman.UserDesc", "UserDesc"),
    ("Mailman.Message", "Message"), ("Mailman.Message", "UserNotification"),
    ("Mailman.Message", "OwnerNotification"),
    ("email.Message", "Message"), ("email.message", "Message"),
    ("email.Header", "Header"), ("email.header", "Header"),
    ("email.Charset", "Charset"), ("email.charset", "Charset"),
]
# the message defects email 3+ records in Message.defects (email/Errors.py)
_DEFECTS = ["MessageDefect", "NoBoundaryInMultipartDefect", "StartBoundaryNotFoundDefect",
            "FirstHeaderLineIsContinuationDefect", "MisplacedEnvelopeHeaderDefect",
            "MalformedHeaderDefect", "MultipartInvariantViolationDefect"]
_CLASSES += [(module, name) for module in ("email.Errors", "email.errors") for name in _DEFECTS]

STAND_INS: dict[tuple[str, str], type] = {key: _stand_in(*key) for key in _CLASSES}


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """``copy_reg._reconstructor`` limited to making an empty stand-in (a new-style class's pickle)."""
    if not (isinstance(cls, type) and issubclass(cls, StandIn)) or base is not object or state is not None:
        raise pickle.UnpicklingError("unexpected copy_reg._reconstructor call")
    return cls.__new__(cls)


ALLOWED: dict[tuple[str, str], Any] = {
    **STAND_INS,
    ("copy_reg", "_reconstructor"): _reconstructor, ("copyreg", "_reconstructor"): _reconstructor,
    ("__builtin__", "object"): object, ("builtins", "object"): object,
    ("__builtin__", "set"): set, ("builtins", "set"): set,
    ("__builtin__", "frozenset"): frozenset, ("builtins", "frozenset"): frozenset,
    ("sets", "Set"): set,
}

_PROTOCOL_2_OPCODES = frozenset(op.code.encode("latin-1")[0] for op in pickletools.opcodes if op.proto <= 2)


class _RestrictedUnpickler(pickle._Unpickler):
    """The pure-Python unpickler (its opcode table can be cut down) with only :data:`ALLOWED` globals."""

    dispatch = {code: load for code, load in pickle._Unpickler.dispatch.items() if code in _PROTOCOL_2_OPCODES}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickle(f"refusing to load {module}.{name} from a Mailman pickle") from None


def load_all(data: bytes, count: int | None = None, *, what: str = "Mailman pickle") -> list[Any]:
    """The pickles in ``data``, one after another (``count`` of them, or to the end).

    Raises :class:`UnsafePickle` for data over :data:`MAX_PICKLE_BYTES`, a
    refused global, or anything that is not a readable protocol 0-2 pickle.
    """
    if len(data) > MAX_PICKLE_BYTES:
        raise UnsafePickle(f"{what} is larger than {MAX_PICKLE_BYTES} bytes")
    stream = io.BytesIO(data)
    found: list[Any] = []
    try:
        while (count is None and stream.tell() < len(data)) or (count is not None and len(found) < count):
            found.append(_RestrictedUnpickler(stream, encoding="latin1").load())
    except UnsafePickle:
        raise
    except Exception as exc:  # noqa: BLE001 - junk input raises anything from OverflowError to KeyError
        raise UnsafePickle(f"not a readable {what}: {type(exc).__name__}: {exc}") from None
    return found


def loads(data: bytes, *, what: str = "Mailman pickle") -> Any:
    """The first pickle in ``data`` (see :func:`load_all`)."""
    return load_all(data, 1, what=what)[0]


def looks_like_pickle(data: bytes) -> bool:
    """True if ``data`` starts like a protocol 0-2 pickle of a dict (what Mailman writes)."""
    return data[:2] == b"\x80\x02" or data[:1] in (b"}", b"(")


def is_a(obj: Any, module_name: str) -> bool:
    """Whether ``obj`` is the stand-in of class ``module_name`` (any of its module spellings)."""
    if not isinstance(obj, StandIn):
        return False
    return obj.mm_class.rsplit(".", 1)[-1] == module_name.rsplit(".", 1)[-1] and \
        obj.mm_class.lower().rsplit(".", 1)[0] == module_name.lower().rsplit(".", 1)[0]
