"""Postfix SMTP access policy delegation: request parsing, decisions, replies.

Source: Postfix ``SMTPD_POLICY_README``, "Protocol description". A request is
a sequence of ``name=value`` lines (newline-terminated) ending with an empty
line; the reply is ``action=...`` followed by an empty line. The same
connection carries further requests. Attributes we do not know are ignored
(the protocol grows new ones). The document asks a server to close the
connection, without a reply, on a request it cannot parse.

Exim's ``${readsocket}`` sends the same attributes and may half-close
(``shutdown(SHUT_WR)``) without the final empty line: :meth:`RequestParser.finish`
returns that last request so it is answered too.
"""
from __future__ import annotations

from .. import routing

__all__ = ["ProtocolError", "RequestParser", "decide", "rcpt_decision", "format_reply", "action_for",
           "MAX_ATTRIBUTES"]

# Postfix sends about 30 attributes; a request with hundreds is not Postfix.
MAX_ATTRIBUTES = 256


class ProtocolError(ValueError):
    """A request that breaks the protocol (line without ``=``, line too long, too many attributes).

    ``complete``: the well-formed requests that came before it in the same
    input (a pipelining client still gets those answers).
    """

    def __init__(self, message: str, complete: list | None = None):
        super().__init__(message)
        self.complete = complete or []


class RequestParser:
    """Incremental parser: feed bytes, get complete requests (``dict[str, str]``) in order.

    ``max_line`` bounds one attribute line in bytes (``policy.max_line``).
    Values are decoded as UTF-8 with ``surrogateescape`` (8-bit junk survives,
    never raises). Raises :class:`ProtocolError`; after that the connection
    must be dropped.
    """

    __slots__ = ("max_line", "_buf", "_attrs")

    def __init__(self, max_line: int):
        self.max_line = max_line
        self._buf = b""
        self._attrs: dict[str, str] = {}

    def feed(self, data: bytes) -> list[dict[str, str]]:
        requests: list[dict[str, str]] = []
        try:
            self._feed(data, requests)
        except ProtocolError as exc:
            exc.complete = requests
            raise
        return requests

    def _feed(self, data: bytes, requests: list[dict[str, str]]) -> None:
        buf = self._buf + data
        cut = buf.rfind(b"\n") + 1            # the complete lines end here
        max_line = self.max_line
        if cut:
            attrs = self._attrs
            # one decode for all complete lines, not two per line: "\n" and "=" are ASCII, never part
            # of a multi-byte character, so splitting after decoding gives the same text
            text = buf[:cut - 1].decode("utf-8", "surrogateescape")
            lines = text.split("\n")
            if "\r" in text:
                lines = [line[:-1] if line.endswith("\r") else line for line in lines]
            long = cut > max_line               # else no line can be longer than max_line
            for line in lines:
                # a character is at most 4 bytes (an escaped byte is 1): count bytes only for long lines
                if long and len(line) * 4 > max_line and len(line.encode("utf-8", "surrogateescape")) > max_line:
                    raise ProtocolError(f"attribute line longer than {max_line} bytes")
                if not line:
                    requests.append(attrs)
                    attrs = {}
                    continue
                name, eq, value = line.partition("=")
                if not eq or not name:
                    raise ProtocolError(f"line without name=value: {line[:80].encode('utf-8', 'surrogateescape')!r}")
                if len(attrs) >= MAX_ATTRIBUTES:
                    raise ProtocolError(f"more than {MAX_ATTRIBUTES} attributes in one request")
                attrs[name] = value
            self._attrs = attrs
        rest = buf[cut:]
        if len(rest) > max_line:
            raise ProtocolError(f"attribute line longer than {max_line} bytes")
        self._buf = rest

    def finish(self) -> dict[str, str] | None:
        """At end of input: the unterminated last request (Exim), or None if there is none.

        A final line without its newline counts. Raises :class:`ProtocolError`
        if that line is malformed.
        """
        if self._buf:
            self.feed(b"\n")
        attrs, self._attrs = self._attrs, {}
        return attrs or None


_REFUSALS = ("reject", "tempfail")


def action_for(decision: routing.RcptDecision) -> str:
    """The ``action=`` value for a routing decision (Postfix access(5) actions).

    ``pass``/``accept`` → ``DUNNO`` (never ``OK``: the rest of the restrictions,
    e.g. ``reject_unauth_destination``, still apply); ``reject``/``tempfail`` →
    ``550 5.1.1 text`` / ``451 4.3.0 text`` (an explicit code: a bare ``REJECT``
    becomes 554 under Postfix's defaults); ``discard`` → ``DISCARD text``.
    """
    if decision.action in _REFUSALS:
        return _clean(decision.smtp_reply)
    if decision.action == "discard":
        return _clean(f"DISCARD {decision.text}".rstrip())
    return "DUNNO"


def decide(site, attrs: dict[str, str]) -> tuple[str, routing.RcptDecision | None]:
    """``(action, decision)`` for one request; only ``protocol_state=RCPT`` is decided.

    Other states (CONNECT, HELO, MAIL, DATA, END-OF-MESSAGE, VRFY, ETRN) get
    ``DUNNO`` and decision None. Raises what :func:`listgate.routing.decide_rcpt`
    raises for bugs only (store failures are already 451 decisions).
    """
    decision = rcpt_decision(site, attrs)
    return ("DUNNO" if decision is None else action_for(decision)), decision


def rcpt_decision(site, attrs: dict[str, str]) -> routing.RcptDecision | None:
    """:func:`listgate.routing.decide_rcpt` for a ``protocol_state=RCPT`` request, else None (:func:`decide`)."""
    if attrs.get("protocol_state", "").upper() != "RCPT":
        return None
    # an absent sender attribute is "unknown" (None); Postfix sends "sender=" for the null sender
    return routing.decide_rcpt(site, attrs.get("recipient", ""), attrs.get("sender"),
                               attrs.get("client_address") or None)


def format_reply(action: str) -> bytes:
    """``action=ACTION\\n\\n`` as bytes."""
    return f"action={action}\n\n".encode("utf-8", "surrogateescape")


_CONTROLS = {i: " " for i in (*range(0x20), 0x7f)}


def _clean(text: str) -> str:
    # a reply is one line: no control characters may reach Postfix
    return text if text.isprintable() else text.translate(_CONTROLS).rstrip()
