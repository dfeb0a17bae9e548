"""Mailman 2.1's pending records and held messages, read and turned into listgate's.

Pending records (Mailman 2.1 ``Pending.py``): a pickled dict ``{cookie:
(op, content...), 'evictions': {cookie: POSIX time of expiry}, 'version':
n}`` where a cookie is a SHA-1 hexdigest. Since 2.1.5 each list has
``lists/NAME/pending.pck``; earlier releases kept one site-wide
``data/pending.pck``. Ops and their content:

- ``S`` subscription: a ``Mailman.UserDesc.UserDesc`` (``address``,
  ``fullname``, ``digest``, ``language``); records converted from 2.0 carry
  (address, password, digest, language) instead;
- ``U`` unsubscription: (address,); ``C`` change of address: (old, new,
  globally); ``H`` held message: (request id,); ``E`` re-enable:
  (list name, address); ``P`` probe: (member address, probe message).

Held messages (``ListAdmin.py``): the list's ``request.pck`` is ``{id: (op,
data), 'version': n}``; op 1 (held message) has data (received time, sender,
subject, reason, file name in ``data/``, metadata), the file being a pickled
message (``heldmsg-LIST-ID.pck``) or its text (``.txt``); ops 2 and 3 are
subscriptions and unsubscriptions waiting for the admin (listgate has no
such queue: they are reported). 2.1.1 to 2.1.11 could store a record's
data without its op (a 6-tuple).
"""
from __future__ import annotations

import base64
import os
import stat
from dataclasses import dataclass, field
from typing import Any

from .message import MessageFormatError, flatten, is_message
from .unpickle import StandIn, UnsafePickle, is_a, loads

OPS = {"S": "subscription", "U": "unsubscription", "C": "change_of_address", "H": "held_message",
       "E": "re_enable", "P": "probe"}
HELDMSG, SUBSCRIPTION, UNSUBSCRIPTION = 1, 2, 3
MAX_FILE_BYTES = 64 * 1024 * 1024


@dataclass
class MailmanPending:
    """One Mailman pending record: ``token`` (its cookie), ``op`` (S/U/C/H/E/P), ``content``, ``expires``."""

    token: str
    op: str
    content: tuple
    expires: float | None
    source: str                           # the file it came from (for the report)
    list_name: str | None = None          # the list whose pending.pck held it (None: site-wide)

    def describe(self) -> dict[str, Any]:
        """The record for the admin's report: op, token, expiry and content as text."""
        return {"token": self.token, "op": self.op, "type": OPS.get(self.op, "?"), "expires": self.expires,
                "source": self.source, "content": [_plain(c) for c in self.content]}

    def address(self) -> str | None:
        """The address a subscription, unsubscription, re-enable or probe is about (the old one for C)."""
        first = self.content[0] if self.content else None
        if self.op == "S" and is_a(first, "Mailman.UserDesc.UserDesc"):
            first = first.get("address")
        if self.op == "E" and len(self.content) >= 2:
            first = self.content[1]
        return first if isinstance(first, str) and first else None


@dataclass
class HeldRequest:
    """One record of a list's ``request.pck``."""

    id: int
    op: int
    data: Any
    list_name: str


@dataclass
class Problem:
    """Something that could not be read or placed: what, where, why, and its content."""

    what: str
    where: str
    reason: str
    content: Any = None


@dataclass
class ReadResult:
    records: list = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def read_file(path: str) -> bytes | None:
    """The bytes of ``path`` (a regular file up to :data:`MAX_FILE_BYTES`), None if missing; OSError/ValueError."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as fp:
        st = os.fstat(fp.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        if st.st_size > MAX_FILE_BYTES:
            raise ValueError(f"larger than {MAX_FILE_BYTES} bytes")
        return fp.read(MAX_FILE_BYTES + 1)


def _load_db(path: str, what: str, out: ReadResult) -> Any:
    """The pickle at ``path``; None when it is missing or unreadable (then a problem in ``out``)."""
    try:
        data = read_file(path)
        return None if data is None else loads(data, what=f"Mailman {what}")
    except (OSError, ValueError) as exc:
        out.problems.append(Problem(what, path, f"cannot be read: {exc}"))
        return None


def read_pending(path: str, list_name: str | None) -> ReadResult:
    """The records of a ``pending.pck`` (per-list, or site-wide with ``list_name`` None)."""
    out = ReadResult()
    db = _load_db(path, "pending database", out)
    if db is None:
        return out
    if not isinstance(db, dict):
        out.problems.append(Problem("pending database", path, "not a dict of pending records"))
        return out
    evictions = db.get("evictions") if isinstance(db.get("evictions"), dict) else {}
    for cookie, content in db.items():
        if cookie in ("evictions", "version", "lastculltime"):
            continue
        token = str(cookie)
        if not (isinstance(content, tuple) and content and content[0] in OPS):
            out.problems.append(Problem("pending record", path, "unknown record layout",
                                        {"token": token, "content": _plain(content)}))
            continue
        expires = evictions.get(cookie)
        out.records.append(MailmanPending(token, content[0], content[1:],
                                          float(expires) if isinstance(expires, (int, float)) else None,
                                          path, list_name))
    return out


def read_requests(path: str, list_name: str) -> ReadResult:
    """The records of a list's ``request.pck`` (held messages, admin-held (un)subscriptions)."""
    out = ReadResult()
    db = _load_db(path, "request database", out)
    for key, value in (db.items() if isinstance(db, dict) else []):
        if key == "version" or not isinstance(key, int):
            continue
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], int):
            op, info = value
        elif isinstance(value, tuple) and len(value) == 6:      # 2.1.1-2.1.11: data without its op
            op, info = (SUBSCRIPTION if value[4] in (0, 1) else HELDMSG), value
        else:
            out.problems.append(Problem("request record", path, "unknown record layout",
                                        {"id": key, "content": _plain(value)}))
            continue
        out.records.append(HeldRequest(key, op, info, list_name))
    return out


def held_payload(req: HeldRequest, data_dir: str) -> tuple[dict, float]:
    """The ``held_message`` payload (as :func:`listgate.app.moderation.hold` makes it) and the
    time Mailman held the post; ValueError (with the reason) when the message cannot be had."""
    info = req.data
    if not (isinstance(info, tuple) and len(info) in (5, 6)):
        raise ValueError("unknown held message record layout")
    when, sender, subject, reason, filename = info[:5]
    meta = info[5] if len(info) == 6 and isinstance(info[5], dict) else {}
    if not isinstance(filename, str) or "/" in filename or filename.startswith("."):
        raise ValueError(f"unsafe held message file name {filename!r}")
    raw = read_file(os.path.join(data_dir, filename))
    if raw is None:
        raise ValueError(f"held message file data/{filename} is missing")
    if filename.endswith(".pck"):
        try:
            msg = flatten(loads(raw, what="held message"))
        except (UnsafePickle, MessageFormatError) as exc:
            raise ValueError(f"data/{filename}: {exc}") from None
    else:
        msg = raw
    from ..app import mail   # reading untrusted mail: one place
    m = mail.headers(msg)
    writer = mail.author(m)
    envelope = meta.get("original_sender") or meta.get("envsender") or sender
    return {
        "message": base64.b64encode(msg).decode("ascii"),
        "author": writer[1] if writer else (sender if isinstance(sender, str) else None),
        "envelope_sender": envelope if isinstance(envelope, str) else None,
        "subject": mail.header_text(m, "Subject") or (_plain(subject) if isinstance(subject, str) else ""),
        "message_id": mail.header_text(m, "Message-ID") or None,
        "reason": _plain(reason) if isinstance(reason, str) else "held by Mailman",
        "reply_ok": mail.auto_generated(m, envelope if isinstance(envelope, str) else None) is None,
        "arrival": float(when) if isinstance(when, (int, float)) else None,
        "mailman21": {"list": req.list_name, "id": req.id, "file": filename},
    }, (float(when) if isinstance(when, (int, float)) else 0.0)


def probe_message_id(content: tuple) -> str | None:
    """The Message-ID of a probe record's message (``P``: (member, message))."""
    if len(content) >= 2 and is_message(content[1]):
        for name, value in content[1].get("_headers") or []:
            if isinstance(name, str) and name.lower() == "message-id" and isinstance(value, str):
                return value.strip()
    return None


def _plain(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON-safe data for a report (stand-ins as their class and state)."""
    if depth > 8:
        return "..."
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, StandIn):
        if is_message(value):
            try:
                return {"class": value.mm_class, "message": flatten(value).decode("latin-1")[:20000]}
            except MessageFormatError as exc:
                return {"class": value.mm_class, "error": str(exc)}
        return {"class": value.mm_class, **{k: _plain(v, depth + 1) for k, v in value.__dict__.items()
                                             if k != "password"}}
    return repr(value)
