"""Recipient decisions at RCPT: one implementation for milter, policy server and inject.

:func:`decide_rcpt` is on the hot path of every SMTP transaction to a managed
domain: it reads nothing but the :class:`~listgate.config.Site` the caller
passes (no config reload here) and, when needed, the list's store. What it
needs from a Site (domains, trusted networks, every list address as a dict
equal to :func:`listgate.addresses.parse`, posting rules and the decisions
that do not depend on the request) is worked out once per Site object; a
reload gives a new object. Three bounded memos (:mod:`listgate.memo`) hang
off that per-Site plan, all exact: what a recipient text is (managed domain,
postmaster, list address: a function of the text and the Site alone), the
split of a sender text (:func:`listgate.addresses.split_address`, a function
of the text), and per list the accept decision of each verified member VERP
(:func:`listgate.verp.decode` keeps its result object while the signature
stays valid, and the decision is a function of that result and the address).
Membership and probe tokens are asked of the store every time.

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
7. a post (``L@D``): the posting rule (:func:`listgate.app.posting.decide`)
   with the envelope sender: ``open`` lists → ``accept``; otherwise a sender that may
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
import os
from typing import Any, NamedTuple

from . import memo, verp
from .app import posting
from .addresses import ROLE_SUFFIXES, ListAddress, split_address, table_for
from .store import StoreUnavailable, open_store
from .store.tokens import is_token

__all__ = ["RcptDecision", "decide_rcpt", "ACTIONS"]

ACTIONS = ("pass", "accept", "reject", "discard", "tempfail")
log = logging.getLogger("listgate.routing")


class RcptDecision(NamedTuple):
    """The decision for one RCPT (immutable; a named tuple: cheap to build, see VerpResult).

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


# decisions are immutable: the ones that do not depend on the request are made once
_NO_SUCH_ADDRESS = _reject(None, "5.1.1", "no such list address")


def decide_rcpt(site, rcpt: str, sender: str | None = None, client_address: str | None = None) -> RcptDecision:
    """Decide what to do with envelope recipient ``rcpt`` (module docstring has the rules).

    ``sender`` is the envelope sender (``""`` or ``"<>"`` for the null sender,
    None if unknown); ``client_address`` the SMTP client's IP address (None if
    unknown: never trusted). Never raises for bad input; store failures become
    ``tempfail``.
    """
    plan = _plan(site)
    seen = plan.recipients.get(rcpt)
    if seen is None:
        seen = plan.recipient(rcpt)
    if seen is _NOT_OURS:
        return PASS
    address, lp, postmaster = seen
    # split once for the re-injection test and the posting rules ("" and "<>" give None)
    if sender:
        sender_parts = plan.senders.get(sender, _UNSEEN)
        if sender_parts is _UNSEEN:
            sender_parts = plan.sender(sender)
    else:
        sender_parts = None
    # only our own bounces address, sent from a trusted network, is a re-injection
    if (sender_parts is not None and client_address and sender_parts[1] in plan.domains
            and _is_reinjection(plan, sender, sender_parts, client_address)):
        return PASS
    if postmaster:
        return PASS
    if address is None:
        # no address in the texts: Postfix prefixes "<rcpt>: Recipient address rejected:"
        return _NO_SUCH_ADDRESS
    try:
        if address.role == "post":
            return _decide_post(lp, sender, sender_parts)
        if address.role == "bounces":
            return _decide_bounces(site, lp, address)
        if address.role == "confirm" and not is_token(address.extension.lower()):
            return _reject(address, "5.1.1", "not a valid confirmation address")
    except Exception as exc:  # noqa: BLE001 - any store failure: the client must retry, not lose mail
        if not _is_store_failure(exc):
            raise
        log.warning("store unavailable for %s: %s", address.list_key, exc)
        return _tempfail(address)
    return RcptDecision("accept", address=address)


def _decide_bounces(site, lp: _ListPlan, address: ListAddress) -> RcptDecision:
    ext = address.extension
    if ext is None:
        return RcptDecision("accept", address=address)
    result = verp.decode(site, lp.lc, ext, store=lp)
    if not result.valid:
        return _reject(address, "5.1.1", "not a valid bounce address", verp_result=result)
    if result.kind != "member":
        return RcptDecision("accept", address=address, verp=result)
    # a verified member VERP: verp.decode keeps its result object while the signature stays
    # valid, so the same object means the same decision (address is a function of ext)
    hit = lp.verp_accepts.get(ext)
    if hit is not None and hit.verp is result:
        return hit
    decision = RcptDecision("accept", address=address, verp=result)
    memo.put(lp.verp_accepts, ext, decision)
    return decision


def _decide_post(lp: _ListPlan, sender: str | None, sender_parts: tuple[str, str] | None) -> RcptDecision:
    # the posting rule (listgate.app.posting) with what RCPT knows: the envelope sender only.
    # An unknown sender (None) is decided after DATA; hold and discard are the runner's too.
    if sender is None:
        return lp.accept_post
    verdict = posting.decide(lp.lc, (sender,), lp.store)
    return lp.refuse_post if verdict.action == "reject" else lp.accept_post


def _is_store_failure(exc: Exception) -> bool:
    # an unreadable VERP key file is also "cannot decide now": 4xx, the admin fixes it
    return isinstance(exc, (StoreUnavailable, OSError, verp.VerpKeyError))


# -- per-Site plans: what decisions need from a Site, worked out once per Site object.
# The caller passes the current Site; a reload gives a new object and so a new plan.

class _ListPlan:
    """One list's posting rules, its constant decisions and its store (opened on first use)."""

    __slots__ = ("site", "lc", "list_key", "post_address", "accept_post", "refuse_post", "verp_accepts",
                 "_store")

    def __init__(self, site, list_key: str, lc):
        self.site = site
        self.lc = lc
        self.list_key = list_key
        name, _, domain = list_key.rpartition("@")
        self.post_address = ListAddress(name, domain, "post")     # what parse() gives for L@D
        self.accept_post = RcptDecision("accept", address=self.post_address)
        if lc.non_member_action == "reject":
            self.refuse_post = _reject(self.post_address, "5.7.1", posting.rcpt_refusal_text(lc))
        else:
            self.refuse_post = self.accept_post     # hold/discard: the runner acts after DATA
        self.verp_accepts: dict[str, RcptDecision] = {}     # extension -> accept of a verified member VERP
        self._store = None

    def store(self):
        """``open_store(site, list_key)``, kept; opened again once closed (``close_all``)."""
        store = self._store
        if store is None or getattr(store, "closed", False):
            store = self._store = open_store(self.site, self.list_key)
        return store

    def peek_pending(self, token: str):
        # verp.decode's ``store``: the store is opened only when a probe token is looked up
        return self.store().peek_pending(token)


class _Plan:
    __slots__ = ("site", "domains", "nets", "lists", "table", "recipients", "senders")

    def __init__(self, site):
        self.site = site
        self.domains = site.domains
        self.nets = tuple(ipaddress.ip_network(n, strict=False) for n in site.conf.trusted_networks)
        self.lists = {key: _ListPlan(site, key, lc) for key, lc in site.lists.items()}
        self.table = table_for(site.lists)
        # rcpt as received -> what recipient() found: a function of the text and this Site only
        self.recipients: dict[str | None, Any] = {}
        self.senders: dict[str, tuple[str, str] | None] = {}   # sender text -> split_address(text)

    def recipient(self, rcpt: str | None):
        """``_NOT_OURS`` (not in a managed domain: rule 1), or ``(address, list_plan, is_postmaster)``.

        ``address`` is :meth:`AddressTable.lookup`'s answer (None: unknown in a
        managed domain), ``list_plan`` its list's :class:`_ListPlan`. Kept in
        :attr:`recipients`, bounded.
        """
        parts = split_address(rcpt or "")
        if parts is None or parts[1] not in self.domains:
            seen = _NOT_OURS
        else:
            local, domain = parts
            address = self.table.lookup(local, domain)
            seen = (address, None if address is None else self.lists[address.list_key], local.lower() == "postmaster")
        if rcpt is not None:
            memo.put_text(self.recipients, rcpt, seen)
        return seen

    def sender(self, sender: str) -> tuple[str, str] | None:
        """``split_address(sender)``, kept in :attr:`senders` (bounded): posters send again and again."""
        parts = split_address(sender)
        memo.put_text(self.senders, sender, parts)
        return parts


_BOUNCES_SUFFIX = ROLE_SUFFIXES["bounces"]   # the scheme's, for a cheap pre-test
_NOT_OURS = object()
_UNSEEN = object()
_plans: dict[int, _Plan] = {}


def _plan(site) -> _Plan:
    plan = _plans.get(id(site))
    if plan is not None and plan.site is site:
        return plan
    plan = _Plan(site)
    memo.put(_plans, id(site), plan, limit=8)
    return plan


# a forked child opens its own stores (open_store does the same for its cache)
os.register_at_fork(after_in_child=_plans.clear)


def _is_reinjection(plan: _Plan, sender: str, parts: tuple[str, str], client_address: str) -> bool:
    """Whether ``sender`` (split: ``parts``, its domain one of ``plan.domains``) is a list's bounces
    address and ``client_address`` is in ``trusted_networks``: listgate's own mail coming back."""
    # the caller tested the domain; a cheap string test next: almost every sender is someone else's address
    if _BOUNCES_SUFFIX not in parts[0].lower():
        return False
    found = plan.table.lookup(*parts)
    if found is None or found.role != "bounces":
        return False
    try:
        ip = ipaddress.ip_address(client_address.strip("[]").removeprefix("IPv6:"))
    except ValueError:
        return False
    if getattr(ip, "ipv4_mapped", None):
        ip = ip.ipv4_mapped
    return any(ip in net for net in plan.nets)
