"""Writing Mailman 2.1 files as Python 2 wrote them, for the import tests.

Python 2 pickled old-style classes (``email.Message.Message`` and
``Mailman.Message.Message`` in email 2.x/3.x, ``Mailman.UserDesc.UserDesc``)
with the INST (protocol 0) and OBJ (protocol 1) opcodes, which Python 3's
pickler never writes: :class:`Py2Pickler` writes them for :class:`OldStyle`
objects. New-style ones (``Mailman.Bouncer._BounceInfo``) are plain classes
whose ``__module__``/``__qualname__`` are Mailman's; Python 3 then writes
``copy_reg._reconstructor`` (protocols 0-1) or NEWOBJ (2), as Python 2 did.
Byte strings are written as Python 2 ``str`` (latin-1 text, ``fix_imports``
maps the module names back to ``__builtin__``/``copy_reg``).
"""
from __future__ import annotations

import io
import os
import pickle
import struct


class OldStyle:
    """An instance of old-style class ``module.name`` with ``state`` as its ``__dict__``."""

    def __init__(self, module: str, name: str, **state):
        self.module, self.name, self.state = module, name, state


class Py2Pickler(pickle._Pickler):
    dispatch = dict(pickle._Pickler.dispatch)

    def save_oldstyle(self, obj: OldStyle) -> None:
        write = self.write
        if self.proto >= 1:
            write(pickle.MARK)
            write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            write(pickle.OBJ)
        else:
            write(pickle.MARK + pickle.INST + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)
        self.save(obj.state)
        write(pickle.BUILD)

    dispatch[OldStyle] = save_oldstyle


def dumps(obj, protocol: int) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol, fix_imports=True).dump(obj)
    return buf.getvalue()


def bounce_info_class():
    """A class pickled as ``Mailman.Bouncer._BounceInfo`` (new-style in Mailman 2.1)."""
    cls = type("_BounceInfo", (), {})
    cls.__module__, cls.__qualname__ = "Mailman.Bouncer", "_BounceInfo"
    import sys
    import types
    for name in ("Mailman", "Mailman.Bouncer"):        # pickle checks the class can be found by name
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["Mailman.Bouncer"]._BounceInfo = cls
    return cls


def bounce_info(score, date, noticesleft, lastnotice, cookie):
    info = bounce_info_class()()
    info.__dict__.update(member=None, score=score, date=date, noticesleft=noticesleft,
                         lastnotice=lastnotice, cookie=cookie)
    return info


def message(headers, body, *, module="Mailman.Message", name="Message", parts=None, preamble=None):
    """A pickled-message object: ``headers`` a list of (name, value); ``parts`` for a multipart."""
    return OldStyle(module, name, _headers=list(headers), _payload=parts if parts is not None else body,
                    _charset=None, preamble=preamble, epilogue=None, _unixfrom=None,
                    _default_type="text/plain")


def user_desc(address, fullname, digest, language, password="secret"):
    return OldStyle("Mailman.UserDesc", "UserDesc", address=address, fullname=fullname, password=password,
                    digest=digest, language=language)


def write(path, data: bytes, mtime: float | None = None) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fp:
        fp.write(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def py2_marshal(value) -> bytes:
    """Python 2 ``marshal`` of plain data (strings as type 's' byte strings, as Python 2 wrote ``str``)."""
    if value is None:
        return b"N"
    if value is True or value is False:
        return b"T" if value else b"F"
    if isinstance(value, int):
        return b"i" + struct.pack("<i", value)
    if isinstance(value, float):
        return b"g" + struct.pack("<d", value)
    if isinstance(value, str):
        raw = value.encode("latin-1")
        return b"s" + struct.pack("<i", len(raw)) + raw
    if isinstance(value, (list, tuple)):
        return (b"[" if isinstance(value, list) else b"(") + struct.pack("<i", len(value)) + b"".join(
            py2_marshal(v) for v in value)
    if isinstance(value, dict):
        return b"{" + b"".join(py2_marshal(k) + py2_marshal(v) for k, v in value.items()) + b"0"
    raise TypeError(type(value))

