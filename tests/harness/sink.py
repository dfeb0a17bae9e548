"""An SMTP sink standing in for members' mail servers (aiosmtpd on loopback).

Every message accepted is stored once per recipient as a :class:`Delivery`
(envelope sender, recipient, message bytes), thread-safely. Each recipient can
be given a behaviour, decided at RCPT time except ``SPAM_REFUSE``:

- ``ACCEPT`` (the default for recipients not listed);
- ``UNKNOWN``: ``550 5.1.1`` at RCPT (RFC 3463: bad destination mailbox);
- ``TEMPFAIL``: ``451 4.3.0`` at RCPT (RFC 5321 section 4.2.5: try again);
- ``SPAM_REFUSE``: accepted at RCPT, ``550 5.7.1`` at end of DATA when the
  message contains ``spam_marker`` (case-insensitive, headers or body),
  accepted otherwise. The DATA reply covers the whole transaction (RFC 5321
  section 4.1.1.4), so such a message is refused for every recipient of that
  transaction -- as a real server would;
- any other string: that reply, verbatim, at RCPT (e.g. ``"452 4.2.2 Mailbox full"``).

A key ``@domain`` gives every address of that domain without one of its own a
behaviour (one remote domain failing for everyone).

An envelope sender can be refused at ``MAIL FROM`` (before any recipient is
named, RFC 5321 section 3.3): :meth:`SmtpSink.refuse_sender` gives an exact
sender address (e.g. one member's VERP address) the reply to send there.

Refusals are recorded too (:attr:`SmtpSink.refusals`) so a test can see that
Postfix really tried. For benches that only need throughput, Postfix's own
``smtp-sink`` (``/usr/sbin/smtp-sink -c 127.0.0.1:PORT 100``) is faster.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Callable, Iterable, TypeVar

from aiosmtpd.controller import Controller

from .postfix import free_port

ACCEPT = "accept"
UNKNOWN = "550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown"
TEMPFAIL = "451 4.3.0 <{rcpt}>: Temporary failure, try again later"
SPAM_REFUSE = "spam-refuse"
SPAM_REPLY = "550 5.7.1 Message refused: it looks like spam"
DEFAULT_SPAM_MARKER = b"X-Spam-Flag: YES"

T = TypeVar("T")


@dataclass(frozen=True)
class Delivery:
    """One message as received for one recipient."""

    mail_from: str          # envelope sender ("" for the null sender <>)
    rcpt: str
    data: bytes             # the message as received (CRLF line ends normalised by aiosmtpd)
    peer: str
    received_at: float = field(default_factory=time.time)

    def message(self) -> EmailMessage:
        """The parsed message (stdlib email, default policy)."""
        return message_from_bytes(self.data, policy=policy.default)


@dataclass(frozen=True)
class Refusal:
    """A sender, a recipient or a whole DATA the sink refused: stage is 'mail', 'rcpt' or 'data'."""

    stage: str
    mail_from: str
    rcpt: str
    reply: str


class _Handler:
    def __init__(self, sink: "SmtpSink"):
        self.sink = sink

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        reply = self.sink.sender_reply(address)
        if reply is not None:
            self.sink._record_refusal(Refusal("mail", address, "", reply))
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        behaviour = self.sink.behaviour_for(address)
        if behaviour not in (ACCEPT, SPAM_REFUSE):
            reply = behaviour.format(rcpt=address)
            self.sink._record_refusal(Refusal("rcpt", envelope.mail_from or "", address, reply))
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        data = envelope.original_content or envelope.content
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        sender = envelope.mail_from or ""
        if sender == "<>":
            sender = ""
        if self.sink.looks_like_spam(data) and any(
                self.sink.behaviour_for(r) == SPAM_REFUSE for r in envelope.rcpt_tos):
            for r in envelope.rcpt_tos:
                self.sink._record_refusal(Refusal("data", sender, r, SPAM_REPLY))
            return SPAM_REPLY
        peer = session.peer[0] if session.peer else ""
        self.sink._store([Delivery(sender, r, data, peer) for r in envelope.rcpt_tos])
        return "250 2.0.0 OK: stored"


class SmtpSink:
    """The sink (context manager). ``port`` is chosen free unless given.

    ``behaviours`` maps recipient address (case-insensitive) to a behaviour
    (see the module docstring); ``default`` applies to the rest.
    """

    def __init__(self, behaviours: dict[str, str] | None = None, *, default: str = ACCEPT,
                 spam_marker: bytes = DEFAULT_SPAM_MARKER, port: int | None = None,
                 hostname: str = "127.0.0.1"):
        self._lock = threading.Condition()
        self._behaviours = {k.lower(): v for k, v in (behaviours or {}).items()}
        self._sender_replies: dict[str, str] = {}
        self.default = default
        self.spam_marker = spam_marker.lower()
        self.hostname = hostname
        self._fixed_port = port
        self.port = port or 0
        self.deliveries: list[Delivery] = []
        self.refusals: list[Refusal] = []
        self._controller: Controller | None = None

    # -- behaviour -------------------------------------------------------------

    def set_behaviour(self, rcpt: str, behaviour: str) -> None:
        with self._lock:
            self._behaviours[rcpt.lower()] = behaviour

    def behaviour_for(self, rcpt: str) -> str:
        """The behaviour of ``rcpt``: its own, else its domain's (key ``@domain``), else ``default``."""
        address = rcpt.strip("<>").lower()
        with self._lock:
            found = self._behaviours.get(address)
            if found is None:
                found = self._behaviours.get("@" + address.rpartition("@")[2], self.default)
            return found

    def refuse_sender(self, sender: str, reply: str) -> None:
        """Answer ``reply`` (a 4xx/5xx line) to ``MAIL FROM:<sender>`` (case-insensitive)."""
        with self._lock:
            self._sender_replies[sender.lower()] = reply

    def sender_reply(self, sender: str) -> str | None:
        with self._lock:
            return self._sender_replies.get((sender or "").strip("<>").lower())

    def looks_like_spam(self, data: bytes) -> bool:
        return self.spam_marker in data.lower()

    # -- life cycle ----------------------------------------------------------

    def start(self) -> "SmtpSink":
        """Listen on ``hostname:port``; a taken auto-chosen port is replaced (3 tries)."""
        last: Exception | None = None
        for _ in range(3):
            port = self._fixed_port or free_port(self.hostname)
            controller = Controller(_Handler(self), hostname=self.hostname, port=port,
                                    decode_data=False, enable_SMTPUTF8=True,
                                    ident="listgate test sink", data_size_limit=64 * 1024 * 1024)
            try:
                controller.start()
            except (OSError, RuntimeError) as exc:
                last = exc
                if self._fixed_port:
                    break
                continue
            self._controller, self.port = controller, port
            return self
        raise RuntimeError(f"SMTP sink could not listen: {last}")

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> "SmtpSink":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- what arrived --------------------------------------------------------

    def _store(self, items: Iterable[Delivery]) -> None:
        with self._lock:
            self.deliveries.extend(items)
            self._lock.notify_all()

    def _record_refusal(self, refusal: Refusal) -> None:
        with self._lock:
            self.refusals.append(refusal)
            self._lock.notify_all()

    def messages(self) -> list[Delivery]:
        """A snapshot of every delivery so far, in arrival order."""
        with self._lock:
            return list(self.deliveries)

    def messages_for(self, rcpt: str) -> list[Delivery]:
        rcpt = rcpt.lower()
        with self._lock:
            return [d for d in self.deliveries if d.rcpt.lower() == rcpt]

    def clear(self) -> None:
        with self._lock:
            self.deliveries.clear()
            self.refusals.clear()

    def wait_for(self, predicate: Callable[["SmtpSink"], T], timeout: float = 30.0) -> T:
        """Wait until ``predicate(sink)`` is truthy and return its value.

        The predicate runs under the sink's lock each time something arrives
        (it may call ``messages_for`` etc.). Raises TimeoutError otherwise.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                value = predicate(self)
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"sink condition not met in {timeout}s; got "
                                       f"{[(d.mail_from, d.rcpt) for d in self.deliveries]}, "
                                       f"refused {[(r.stage, r.rcpt) for r in self.refusals]}")
                self._lock.wait(remaining)

    def wait_for_message(self, rcpt: str, count: int = 1, timeout: float = 30.0) -> list[Delivery]:
        """Wait until ``rcpt`` has at least ``count`` messages; return them."""
        return self.wait_for(lambda s: (lambda m: m if len(m) >= count else None)(s.messages_for(rcpt)),
                             timeout)
