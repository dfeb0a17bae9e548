"""Recipient decisions at RCPT: one implementation for milter, policy server and inject.

:func:`decide_rcpt` reads nothing but the :class:`~listgate.config.Site` the
caller passes (no config reload here) and, when needed, the list's store:
the Site's ``domains`` and ``address_table`` (built once per loaded
configuration), :func:`listgate.verp.decode` for bounce addresses, and the
store for membership and probe tokens, asked every time.

Rules (docs/ARCHITECTURE.md, "Routing"), in order:

1. recipient not in a managed domain → ``pass``;
2. envelope sender is one of our list bounce addresses (``L-bounces[+EXT]@D``)
   and the client is in ``trusted_networks`` → ``pass`` (our own re-injection);
3. ``postmaster@D`` (RFC 5321 section 4.5.1 requires it) → ``pass``;
4. no list and role matches → ``reject 550 5.1.1`` (RFC 3463: bad destination
   mailbox address), unless it is an address of a list whose file the loaded
   configuration refused (``Site.broken_lists``) → ``tempfail 451 4.3.0``;
5. ``L-bounces@D`` → ``accept``; ``L-bounces+EXT@D`` → ``accept`` for a verified
   member VERP within ``verp.max_age`` of its day, a live probe token or
   accepted unsigned VERP, else ``reject 550 5.1.1`` "not a valid bounce
   address" ("bounce address expired" for an old or undated one; like BATV);
6. ``L-confirm+EXT@D`` whose extension is not token-shaped → ``reject 550 5.1.1``
   (a well-formed but unknown or expired token is accepted: the runner tells
   the sender it expired);
7. a post (``L@D``): the posting rule (:func:`listgate.app.posting.decide`)
   with the envelope sender; a sender that may not post (the null sender is
   nobody) gets ``non_member_action``: ``reject`` → ``550 5.7.1``
   (RFC 3463: delivery not authorized), ``hold``/``discard`` → ``accept`` (the
   runner holds or drops it after DATA). Unknown sender (``None``) → ``accept``;
8. other roles (request, join, leave, owner) → ``accept``.

A store that cannot be read gives ``tempfail 451 4.3.0`` (RFC 3463: mail
system full / other mail system status): the client retries, nothing is lost.
"""
from __future__ import annotations

import ipaddress
from typing import Any, NamedTuple

from . import verp
from .app import posting
from .addresses import ListAddress, split_address
from .store import StoreError, open_store
from .store.tokens import is_token
from .log import events

__all__ = ["RcptDecision", "decide_rcpt", "ACTIONS"]

ACTIONS = ("pass", "accept", "reject", "discard", "tempfail")
log = events("listgate.routing")


class RcptDecision(NamedTuple):
    """The decision for one RCPT (immutable).

    ``action``: one of :data:`ACTIONS`. For ``reject``/``tempfail``: ``code``
    (``550``, ``451``), ``dsn`` (enhanced status, RFC 3463) and ``text``.
    ``address``: the :class:`~listgate.addresses.ListAddress` (None for
    ``pass`` of a foreign or non-list address); ``verp``: the
    :class:`~listgate.verp.VerpResult` for ``L-bounces+EXT``.
    """

    action: str
    code: int | None = None
    dsn: str | None = None
    text: str = ""
    address: ListAddress | None = None
    verp: Any = None

    @property
    def smtp_reply(self) -> str | None:
        """``"550 5.1.1 text"`` for reject/tempfail, else None."""
        if self.code is None:
            return None
        return f"{self.code} {self.dsn} {self.text}".rstrip()


PASS = RcptDecision("pass")


def _reject(address, dsn: str, text: str, code: int = 550, verp_result=None) -> RcptDecision:
    return RcptDecision("reject", code, dsn, text, address, verp_result)


def _tempfail(address, text: str = "list store temporarily unavailable, try again later") -> RcptDecision:
    return RcptDecision("tempfail", 451, "4.3.0", text, address)


_NO_SUCH_ADDRESS = _reject(None, "5.1.1", "no such list address")


def decide_rcpt(site, rcpt: str, sender: str | None = None, client_address: str | None = None) -> RcptDecision:
    """Decide what to do with envelope recipient ``rcpt`` (module docstring has the rules).

    ``sender`` is the envelope sender (``""`` or ``"<>"`` for the null sender,
    None if unknown); ``client_address`` the SMTP client's IP address (None if
    unknown: never trusted). Never raises for bad input; store failures become
    ``tempfail``.
    """
    parts = split_address(rcpt or "")
    if parts is None or parts[1] not in site.domains:
        return PASS
    local, domain = parts
    address = site.address_table.lookup(local, domain)
    # split once for the re-injection test and the posting rules ("" and "<>" give None)
    sender_parts = split_address(sender) if sender else None
    # only our own bounces address, sent from a trusted network, is a re-injection
    if sender_parts is not None and client_address and _is_reinjection(site, sender_parts, client_address):
        return PASS
    if local.lower() == "postmaster":
        return PASS
    if address is None:
        broken = site.broken_table.lookup(local, domain)
        if broken is not None:     # its YAML is being fixed: the client retries, nothing is lost
            return _tempfail(broken, "list temporarily unavailable, try again later")
        # no address in the texts: Postfix prefixes "<rcpt>: Recipient address rejected:"
        return _NO_SUCH_ADDRESS
    try:
        if address.role == "post":
            return _decide_post(_ListPlan(site, address.list_key, site.lists[address.list_key]), sender)
        if address.role == "bounces":
            return _decide_bounces(site, address)
        if address.role == "confirm" and not is_token(address.extension.lower()):
            return _reject(address, "5.1.1", "not a valid confirmation address")
    except Exception as exc:  # noqa: BLE001 - any store failure: the client must retry, not lose mail
        if not _is_store_failure(exc):
            raise
        log.warning("store_unavailable", list=address.list_key, error=exc)
        return _tempfail(address)
    return RcptDecision("accept", address=address)


def _decide_bounces(site, address: ListAddress) -> RcptDecision:
    ext = address.extension
    if ext is None:
        return RcptDecision("accept", address=address)
    result = verp.decode(site, site.lists[address.list_key], ext)
    if not result.valid:
        # an expired (or undated, old-format) VERP address is refused like a forged one: 5.1.1
        text = "bounce address expired" if result.error in ("expired", "undated") else "not a valid bounce address"
        return _reject(address, "5.1.1", text, verp_result=result)
    return RcptDecision("accept", address=address, verp=result)


def _decide_post(lp: _ListPlan, sender: str | None) -> RcptDecision:
    # the posting rule (listgate.app.posting) with what RCPT knows: the envelope sender only.
    # An unknown sender (None) is decided after DATA; hold and discard are the runner's too.
    if sender is None:
        return lp.accept_post
    verdict = posting.decide(lp.lc, (sender,), lp.store)
    return lp.refuse_post if verdict.action == "reject" else lp.accept_post


def _is_store_failure(exc: Exception) -> bool:
    # an unreadable VERP key file is also "cannot decide now": 4xx, the admin fixes it
    # (StoreError: the store contract's failures; the backend's driver errors never get here)
    return isinstance(exc, (StoreError, OSError, verp.VerpKeyError))


class _ListPlan:
    """One list's posting decisions at RCPT (for :func:`_decide_post`); its store opened on demand."""

    __slots__ = ("site", "lc", "list_key", "accept_post", "refuse_post")

    def __init__(self, site, list_key: str, lc):
        self.site = site
        self.lc = lc
        self.list_key = list_key
        post_address = ListAddress(lc.name, lc.domain, "post")     # what parse() gives for L@D
        self.accept_post = RcptDecision("accept", address=post_address)
        if lc.non_member_action == "reject":
            self.refuse_post = _reject(post_address, "5.7.1", posting.rcpt_refusal_text(lc))
        else:
            self.refuse_post = self.accept_post     # hold/discard: the runner acts after DATA

    def store(self):
        return open_store(self.site, self.list_key)


def _is_reinjection(site, parts: tuple[str, str], client_address: str) -> bool:
    """Whether the sender (split: ``parts``) is a list's bounces address and ``client_address``
    is in ``trusted_networks``: listgate's own mail coming back."""
    found = site.address_table.lookup(*parts)
    if found is None or found.role != "bounces":
        return False
    try:
        ip = ipaddress.ip_address(client_address.strip("[]").removeprefix("IPv6:"))
    except ValueError:
        return False
    if getattr(ip, "ipv4_mapped", None):
        ip = ip.ipv4_mapped
    return any(ip in ipaddress.ip_network(net, strict=False) for net in site.conf.trusted_networks)
