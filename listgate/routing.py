"""Recipient decisions at RCPT: one implementation for milter, policy server and inject.

:func:`decide_rcpt` is on the hot path of every SMTP transaction to a managed
domain: it reads nothing but the :class:`~listgate.config.Site` the caller
passes (no config reload here) and, when needed, the list's store.

Rules (docs/ARCHITECTURE.md, "Routing"), in order:

1. recipient not in a managed domain → ``pass``;
2. envelope sender is one of our list bounce addresses (``L-bounces[+EXT]@D``)
   and the client is in ``trusted_networks`` → ``pass`` (our own re-injection);
3. ``postmaster@D`` (RFC 5321 section 4.5.1 requires it) → ``pass``;
4. no list and role matches → ``reject 550 5.1.1`` (RFC 3463: bad destination
   mailbox address);
5. ``L-bounces@D`` → ``accept``; ``L-bounces+EXT@D`` → ``accept`` for a verified
   member VERP, a live probe token or accepted unsigned VERP, else
   ``reject 550 5.1.1`` "not a valid bounce address";
6. ``L-confirm+EXT@D`` whose extension is not token-shaped → ``reject 550 5.1.1``
   (a well-formed but unknown or expired token is accepted: the runner tells
   the sender it expired);
7. a post (``L@D``): ``open`` lists → ``accept``; otherwise a sender that may
   not post (not a member for ``members_only``/``moderated``, not an owner or
   moderator for ``announce``; owners and moderators may always post; the null
   sender is nobody's) gets ``non_member_action``: ``reject`` → ``550 5.7.1``
   (RFC 3463: delivery not authorized), ``hold``/``discard`` → ``accept`` (the
   runner holds or drops it after DATA). Unknown sender (``None``) → ``accept``;
8. other roles (request, join, leave, owner) → ``accept``.

A store that cannot be read gives ``tempfail 451 4.3.0`` (RFC 3463: mail
system full / other mail system status): the client retries, nothing is lost.
"""
from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from . import verp
from .addresses import ListAddress, parse, split_address
from .store.tokens import is_token

__all__ = ["RcptDecision", "decide_rcpt", "ACTIONS"]

ACTIONS = ("pass", "accept", "reject", "discard", "tempfail")
log = logging.getLogger("listgate.routing")


@dataclass(frozen=True)
class RcptDecision:
    """The decision for one RCPT.

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


def decide_rcpt(site, rcpt: str, sender: str | None = None, client_address: str | None = None) -> RcptDecision:
    """Decide what to do with envelope recipient ``rcpt`` (module docstring has the rules).

    ``sender`` is the envelope sender (``""`` or ``"<>"`` for the null sender,
    None if unknown); ``client_address`` the SMTP client's IP address (None if
    unknown: never trusted). Never raises for bad input; store failures become
    ``tempfail``.
    """
    parts = split_address(rcpt or "")
    if parts is None or parts[1] not in _domains(site):
        return PASS
    if sender and client_address and _is_reinjection(site, sender, client_address):
        return PASS
    if parts[0].lower() == "postmaster":
        return PASS
    address = parse(rcpt, site.lists)
    if address is None:
        # no address in the texts: Postfix prefixes "<rcpt>: Recipient address rejected:"
        return _reject(None, "5.1.1", "no such list address")
    lc = site.lists[address.list_key]
    try:
        if address.role == "bounces":
            return _decide_bounces(site, lc, address)
        if address.role == "confirm" and not is_token(address.extension.lower()):
            return _reject(address, "5.1.1", "not a valid confirmation address")
        if address.role == "post":
            return _decide_post(site, lc, address, sender)
    except Exception as exc:  # noqa: BLE001 - any store failure: the client must retry, not lose mail
        if not _is_store_failure(exc):
            raise
        log.warning("store unavailable for %s: %s", address.list_key, exc)
        return _tempfail(address)
    return RcptDecision("accept", address=address)


def _decide_bounces(site, lc, address: ListAddress) -> RcptDecision:
    if address.extension is None:
        return RcptDecision("accept", address=address)
    result = verp.decode(site, lc, address.extension)
    if not result.valid:
        return _reject(address, "5.1.1", "not a valid bounce address", verp_result=result)
    return RcptDecision("accept", address=address, verp=result)


def _decide_post(site, lc, address: ListAddress, sender: str | None) -> RcptDecision:
    policy = lc.posting_policy
    if policy == "open" or sender is None:
        return RcptDecision("accept", address=address)
    sender_parts = split_address(sender) if sender not in ("", "<>") else None
    if sender_parts is not None and _may_post(site, lc, policy, sender_parts):
        return RcptDecision("accept", address=address)
    if lc.non_member_action == "reject":
        text = ("only the list's moderators may post to this list" if policy == "announce"
                else "only members may post to this list")
        return _reject(address, "5.7.1", text)
    return RcptDecision("accept", address=address)


def _may_post(site, lc, policy: str, sender_parts: tuple[str, str]) -> bool:
    local, domain = sender_parts
    sender = f"{local}@{domain}"
    staff = _staff(lc)
    if sender.lower() in staff:
        return True
    if policy == "announce":
        return False
    try:
        sender.encode("utf-8")
    except UnicodeEncodeError:
        return False    # 8-bit junk (surrogate-escaped): no member address looks like that
    from .store import open_store
    return open_store(site, f"{lc.name}@{lc.domain}").get_member(sender) is not None


def _staff(lc) -> frozenset[str]:
    return _staff_of(tuple(lc.owners), tuple(lc.moderators))


@lru_cache(maxsize=256)
def _staff_of(owners: tuple[str, ...], moderators: tuple[str, ...]) -> frozenset[str]:
    return frozenset(a.lower() for a in owners + moderators)


def _is_store_failure(exc: Exception) -> bool:
    import sqlite3

    from .store import StoreUnavailable
    # an unreadable VERP key file is also "cannot decide now": 4xx, the admin fixes it
    return isinstance(exc, (StoreUnavailable, sqlite3.Error, OSError, verp.VerpKeyError))


# -- per-Site caches: the caller passes the current Site; a reload gives a new object
_site_cache: dict[int, tuple[Any, frozenset[str], tuple]] = {}


def _cached(site) -> tuple[frozenset[str], tuple]:
    hit = _site_cache.get(id(site))
    if hit is not None and hit[0] is site:
        return hit[1], hit[2]
    nets = tuple(ipaddress.ip_network(n, strict=False) for n in site.conf.trusted_networks)
    if len(_site_cache) >= 8:
        _site_cache.clear()
    _site_cache[id(site)] = (site, site.domains, nets)
    return site.domains, nets


def _domains(site) -> frozenset[str]:
    return _cached(site)[0]


def _is_reinjection(site, sender: str, client_address: str) -> bool:
    # cheap string tests first: almost every sender is someone else's address
    parts = split_address(sender)
    if parts is None or parts[1] not in _domains(site) or "-bounces" not in parts[0].lower():
        return False
    sender_address = parse(sender, site.lists)
    if sender_address is None or sender_address.role != "bounces":
        return False
    try:
        ip = ipaddress.ip_address(client_address.strip("[]").removeprefix("IPv6:"))
    except ValueError:
        return False
    if getattr(ip, "ipv4_mapped", None):
        ip = ip.ipv4_mapped
    return any(ip in net for net in _cached(site)[1])
