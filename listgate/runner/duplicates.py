"""Retried SMTP transactions: a message stored twice is handled once.

A client that lost our 250 (timeout, dropped connection) sends the message
again, and the milter or ``listgate inject`` stores it again: nothing at SMTP
time looks for duplicates, so accepting a message costs no store access. The
runner drops the second copy here, before it posts, answers or forwards
anything: :func:`first_acceptance` is called once per ``in`` qfile.

Two qfiles are the same message when they share list, role, extension,
envelope sender (case-insensitive) and :func:`message_key`, and the second
is handled within ``milter.duplicate_window`` of the first. The record is
``ListStore.remember("accepted", key, window, owner=qfile id)`` in the list's
store: one atomic check-and-record, so two runner slices racing on the two
copies cannot both win, and a qfile replayed after a runner crash (same id)
is still the first acceptance, not a duplicate of itself.
"""
from __future__ import annotations

import hashlib
import re
from email import policy as email_policy
from email.parser import BytesHeaderParser

from ..config import Site
from ..messages import list_key
from ..store import open_store

# ListStore.remember() kind for "this (role, message) was accepted".
ACCEPTED_KIND = "accepted"
_BODY_START = re.compile(rb"\r?\n\r?\n")
KEY_MAX = 1000   # characters of a key kept as text; a longer one is stored as its digest


def message_key(msg: bytes) -> str:
    """What identifies a message across SMTP retries.

    The Message-ID (RFC 5322 section 3.6.4) when there is one; otherwise a
    SHA-256 over the body and the author's From/Date/Subject (the trace fields
    the MTA adds differ from one attempt to the next, these do not). Field
    values are taken raw, 8-bit bytes kept (as surrogate escapes): two
    Message-IDs that differ only in non-ASCII bytes (RFC 6532 allows UTF-8)
    are two messages.
    """
    headers = BytesHeaderParser(policy=email_policy.compat32).parsebytes(msg)
    raw: dict[str, str] = {}
    for name, value in headers.raw_items():
        raw.setdefault(name.lower(), value)
    mid = " ".join(raw.get("message-id", "").split())
    if mid:
        return mid
    digest = hashlib.sha256()
    for name in ("from", "date", "subject"):
        digest.update(" ".join(raw.get(name, "").split()).encode("utf-8", "surrogateescape") + b"\0")
    sep = _BODY_START.search(msg)
    digest.update(msg[sep.end():] if sep else b"")
    return "sha256:" + digest.hexdigest()


def duplicate_key(meta: dict, msg: bytes) -> str:
    """The remembered key for an ``in`` qfile's ``meta`` and message: text that
    the store can hold (UTF-8, at most :data:`KEY_MAX` characters), else its
    SHA-256, so 8-bit junk or a huge Message-ID neither fails nor bloats it."""
    # A retry comes from the same envelope sender: with it in the key, nobody can
    # suppress another sender's post by sending first with its Message-ID.
    sender = (meta.get("envelope_sender") or "")
    sender = sender.lower() if isinstance(sender, str) else repr(sender)
    key = f"{meta.get('role')}:{meta.get('extension') or ''}:{sender}:{message_key(msg)}"
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:   # surrogate escapes of 8-bit bytes: SQLite text must be UTF-8
        pass
    else:
        if len(key) <= KEY_MAX:
            return key
    return "sha256:" + hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def first_acceptance(site: Site, lc, qf) -> bool:
    """True if ``qf`` (a held ``in`` qfile) is the first copy of its message for
    list ``lc`` within the window (it is recorded as such), False for a retried
    transaction's copy. Raises StoreUnavailable (the runner puts the qfile back).

    A qfile whose metadata has ``message_key`` was stored by a listgate before
    0.2, whose milter looked for duplicates at SMTP time and recorded the
    acceptance without an owner: it is a first acceptance (already checked),
    and the ownerless record it left makes later copies duplicates.
    """
    if "message_key" in qf.meta:
        return True
    store = open_store(site, list_key(lc))
    return store.remember(ACCEPTED_KIND, duplicate_key(qf.meta, qf.msg),
                          site.conf.milter.duplicate_window, owner=qf.id)
