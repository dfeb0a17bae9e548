"""Generated mail: build a notice and put it durably in the ``virgin`` queue.

Everything listgate writes itself (probes, disabled-member notices, owner
notices, forwards of unrecognised bounces, confirmations, command replies)
goes through two calls::

    msg = make_notice(sender=..., to=..., subject=..., body=..., domain=lc.domain,
                      samples=[raw_bounce])            # -> EmailMessage
    qid = queue_virgin(site, lc, msg,
                       deliveries=[{"rcpt": "m@example.com", "sender": "L-bounces+...@D"}],
                       kind="probe")                    # -> qfile id

``make_notice`` gives every message ``From``, ``To``, ``Date`` (from
:mod:`listgate.clock`), ``Message-ID`` and ``Auto-Submitted: auto-generated``
(RFC 3834 section 5: automatic responders must not answer it). Bodies are
UTF-8. ``samples`` (raw messages from strangers: bounces, replies) are attached
as ``message/rfc822`` parts; one that cannot be re-serialised (8-bit junk,
broken MIME) is attached byte-exact as ``application/octet-stream`` instead,
and an oversized one is cut down to its header (``text/rfc822-headers``,
RFC 6522 section 3) so a notice never grows without bound.

``queue_virgin`` writes one qfile whose metadata carries the delivery envelope
(``deliveries``: per-recipient RCPT and envelope sender, ``""`` meaning the
null reverse-path ``<>``) as docs/ARCHITECTURE.md, "Queues and qfile
metadata", describes. Sending it is the runner's job.

The texts of notices come from :mod:`listgate.app.texts`.
"""
from __future__ import annotations

import email
import email.errors
import email.policy
import email.utils
from email.message import EmailMessage, Message
from typing import Iterable, Mapping, Sequence

from . import addresses, clock
from .addresses import list_key  # noqa: F401 - messages.list_key: the list key, for message builders

__all__ = ["make_notice", "queue_virgin", "new_message_id", "list_key", "MAX_SAMPLE_BYTES"]

# A sample (bounce attached to a probe or an owner notice) larger than this is
# attached as its header only: the evidence that matters is in the header and
# the first MIME parts, and a notice must stay deliverable.
MAX_SAMPLE_BYTES = 256 * 1024

_POLICY = email.policy.default.clone(linesep="\n")
# RFC 6531/6532: a non-ASCII address can only be written as UTF-8, never as an
# RFC 2047 encoded word (which the default policy would produce, invalidly).
_POLICY_UTF8 = email.policy.SMTPUTF8.clone(linesep="\n")
# Top-level defects after which the parsed form no longer holds the sample's
# header text: attach those byte-exact rather than re-serialised.
_LOSSY_DEFECTS = (email.errors.MissingHeaderBodySeparatorDefect,
                  email.errors.MultipartInvariantViolationDefect)
_ADDRESS_HEADERS = ("From", "To", "Cc", "Reply-To", "Sender")


def new_message_id(domain: str) -> str:
    """A fresh ``<...@domain>`` Message-ID (RFC 5322 section 3.6.4)."""
    return email.utils.make_msgid(domain=domain or "localhost")


def _one_line(value: str) -> str:
    # Header values come partly from strangers (subjects, addresses): a CR or
    # LF would let them inject header fields, and EmailMessage refuses them.
    return " ".join(str(value).split())


def _attach_sample(msg: EmailMessage, raw: bytes, index: int) -> None:
    """Attach one sample: message/rfc822 when it round-trips, else byte-exact."""
    if len(raw) > MAX_SAMPLE_BYTES:
        head, sep, _ = raw.replace(b"\r\n", b"\n").partition(b"\n\n")
        if not sep:
            head = raw[:8192]
        msg.add_attachment(head[:65536].decode("utf-8", "replace") + "\n", subtype="rfc822-headers",
                           filename=f"sample-{index}-headers.txt")
        return
    try:
        inner = email.message_from_bytes(raw, policy=_POLICY)
        inner.as_bytes(policy=_POLICY)  # proves the generator can write it back
        if any(isinstance(d, _LOSSY_DEFECTS) for d in inner.defects):
            raise ValueError("header block would not survive a round trip")
    except Exception:  # noqa: BLE001 - any parser/generator failure: keep the bytes as they are
        msg.add_attachment(raw, maintype="application", subtype="octet-stream",
                           filename=f"sample-{index}.eml")
        return
    msg.add_attachment(inner)


def make_notice(*, sender: str, to: str | Sequence[str], subject: str, body: str,
                domain: str, samples: Iterable[bytes] = (), headers: Mapping[str, str] | None = None,
                message_id: str | None = None, in_reply_to: str | None = None) -> EmailMessage:
    """Build a generated message.

    ``sender`` goes into ``From`` (an address, optionally ``"Name <addr>"``);
    ``to`` one address or several (``To``); ``body`` text (any Unicode, sent as
    UTF-8); ``domain`` the right-hand side of the Message-ID; ``samples`` raw
    messages (bytes) to attach; ``headers`` extra header fields (e.g.
    ``List-Id``); ``message_id`` to choose it (e.g. recorded in a pending
    record before the message is built). CR/LF in header values are folded to
    spaces. Never raises on the content of ``samples``; raises ValueError for
    an empty ``sender`` or ``to``.
    """
    recipients = [to] if isinstance(to, str) else list(to)
    if not sender or not recipients or not all(recipients):
        raise ValueError("a notice needs a sender and at least one recipient")
    msg = EmailMessage(policy=_POLICY)
    msg["From"] = _one_line(sender)
    msg["To"] = ", ".join(_one_line(r) for r in recipients)
    msg["Subject"] = _one_line(subject)
    msg["Date"] = email.utils.format_datetime(clock.now_dt())
    msg["Message-ID"] = message_id or new_message_id(domain)
    if in_reply_to:
        msg["In-Reply-To"] = _one_line(in_reply_to)
    msg["Auto-Submitted"] = "auto-generated"
    for name, value in (headers or {}).items():
        msg[name] = _one_line(value)
    msg.set_content(body if body.endswith("\n") else body + "\n", charset="utf-8")
    for i, raw in enumerate(samples, 1):
        if raw:
            _attach_sample(msg, bytes(raw), i)
    return msg


def _needs_utf8(msg: Message) -> bool:
    for name in _ADDRESS_HEADERS:
        for value in msg.get_all(name) or ():
            if not str(value).isascii():
                return True
    return False


def serialize(msg: EmailMessage | bytes) -> tuple[bytes, bool]:
    """``(bytes, smtputf8)`` for a message: SMTPUTF8 (RFC 6531) only when an address needs it."""
    if isinstance(msg, (bytes, bytearray)):
        return bytes(msg), False
    utf8 = _needs_utf8(msg)
    return msg.as_bytes(policy=_POLICY_UTF8 if utf8 else _POLICY), utf8


def _check_deliveries(deliveries: Sequence[Mapping[str, str]]) -> list[dict]:
    checked = []
    for d in deliveries:
        rcpt, sender = d.get("rcpt"), d.get("sender", "")
        if not rcpt or addresses.split_address(rcpt) is None:
            raise ValueError(f"delivery without a valid RCPT address: {d!r}")
        if sender and addresses.split_address(sender) is None:
            raise ValueError(f"delivery with a malformed envelope sender: {d!r}")
        if any(c in (rcpt + (sender or "")) for c in "\r\n<> "):
            raise ValueError(f"delivery addresses must be bare addresses: {d!r}")
        checked.append({"rcpt": rcpt, "sender": sender or ""})
    if not checked:
        raise ValueError("a generated message needs at least one delivery")
    return checked


def queue_virgin(site, lc, msg: EmailMessage | bytes, deliveries: Sequence[Mapping[str, str]], *,
                 kind: str, meta: Mapping | None = None) -> str:
    """Durably enqueue ``msg`` in the ``virgin`` queue; returns the qfile id.

    ``deliveries``: ``[{"rcpt": address, "sender": envelope sender or ""}, ...]``
    (``""`` is the null reverse-path). ``kind`` says what it is (``probe``,
    ``disabled_notice``, ``owner_notice``, ``forward``, ``confirmation``,
    ``reply``, ...) for logs and ``listgate queue ls``. ``meta`` adds keys
    (e.g. ``probe_token``: the runner reports a 5xx for it with
    ``BounceEngine.register_failure(..., probe_token=...)``).

    Metadata written: ``list``, ``kind``, ``deliveries``, ``done`` (``[]``),
    ``recipients``, ``envelope_sender`` (of the first delivery), ``arrival``
    (clock seconds), ``attempts`` (0), ``smtputf8`` (the message needs
    RFC 6531 SMTPUTF8), plus ``meta``.

    Raises ValueError for malformed deliveries and
    :class:`listgate.queue.QueueError` when the qfile cannot be stored durably.
    """
    from .queue import Switchboard  # the queue module imports nothing from here

    checked = _check_deliveries(deliveries)
    data, utf8 = serialize(msg)
    now = clock.now()
    qmeta = {
        "list": list_key(lc),
        "kind": kind,
        "deliveries": checked,
        "done": [],
        "recipients": [d["rcpt"] for d in checked],
        "envelope_sender": checked[0]["sender"],
        "arrival": now,
        "attempts": 0,
        "smtputf8": utf8,
    }
    qmeta.update(meta or {})
    return Switchboard.for_site(site, "virgin").enqueue(data, qmeta, arrival=now)
