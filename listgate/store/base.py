"""The per-list store interface: what milter, policy, engine and runner may call.

Callers never see SQL. A backend (``sqlite`` now, PostgreSQL later) implements
:class:`ListStore`. One store per list; work on one list never waits for
another. All times are POSIX seconds from :mod:`listgate.clock`.

Errors: callers never see a backend's driver exceptions. A failure that
means "cannot read or write durably now" (disk full or read-only, lock
timeout, a corrupt, missing or unreachable database) is
:class:`StoreUnavailable`: front ends answer 4xx, the runner retries later.
Any other driver failure is a plain :class:`StoreError` (a bug). The
subclasses below are answers to a request (not a member, unknown token, ...).
"""
from __future__ import annotations

import abc
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Iterable

from ..addresses import match_key, normalize

DELIVERY_STATUSES = ("enabled", "by_user", "by_admin", "by_bounce")
# how a member takes posts: one by one, or collected in a MIME (RFC 2046 multipart/digest) or
# plain text (RFC 1153) digest (listgate.app.digests)
DELIVERY_MODES = ("regular", "mime_digest", "plain_digest")
PENDING_TYPES = ("subscription", "unsubscription", "change_of_address", "held_message", "re_enable", "probe")


class StoreError(Exception):
    """A request the store cannot honour (message is for humans)."""


class NotAMember(StoreError):
    pass


class AlreadyMember(StoreError):
    pass


class UnknownToken(StoreError):
    pass


class UnknownEvent(StoreError):
    pass


class StoreUnavailable(StoreError):
    """The store cannot be read or written durably now (disk full, read-only, locked): retry later."""


@dataclass
class Member:
    """A member and their bounce info.

    ``address`` is what the member typed (and what mail is delivered to);
    ``key`` its normalised form (:func:`listgate.addresses.normalize`: the
    local part as typed, the domain lower-cased), unique in the list. Which
    addresses find the member depends on the list's case rule
    (:attr:`ListStore.case_sensitive_local`).
    """

    address: str
    key: str
    display_name: str = ""
    delivery_status: str = "enabled"
    subscribed_at: float = 0.0
    status_changed_at: float | None = None
    bounce_score: float = 0.0
    last_bounce_day: str | None = None      # 'YYYY-MM-DD' of the last *scored* bounce
    last_bounce_at: float | None = None     # time of the last scored bounce (staleness)
    notices_left: int | None = None         # disabled-by-bounce warnings still to send
    last_notice_at: float | None = None
    re_enable_token: str | None = None
    delivery_mode: str = "regular"          # one of DELIVERY_MODES
    moderated: bool = False                 # the member's posts are held (Mailman's per-member flag)
    language: str = ""                      # preferred language code ('' : the list's)

    def __post_init__(self) -> None:
        self.moderated = bool(self.moderated)   # SQLite keeps it as 0/1


@dataclass
class BounceEvent:
    """One bounce seen (append-only record)."""

    at: float
    address: str | None          # member key, or the failing address if not a member
    bounce_class: str            # hard, soft, policy, complaint, autoreply, delayed, ..., unknown
    status: str | None = None    # enhanced status code, e.g. '5.1.1'
    attribution: str = ""        # verp, probe, dsn, detector, smtp (5xx at hand-over), none
    message_id: str | None = None
    action: str = ""             # what was done: scored, ignored, residual, non_member, probe_sent,
                                 # disabled, incident, forwarded, discarded, ...
    detail: str = ""             # diagnostic text (trimmed)
    id: int | None = None


@dataclass
class PendingRecord:
    token: str
    type: str                    # one of PENDING_TYPES
    payload: dict[str, Any] = field(default_factory=dict)
    created: float = 0.0
    expires: float = 0.0


@dataclass
class DigestPost:
    """A post collected for the list's digest: ``key`` names where it came from (collected once),
    ``message`` the raw post as sent to the list, ``claim`` the digest issue it went into (None:
    not yet)."""

    key: str
    at: float
    message: bytes
    claim: str | None = None
    id: int | None = None


@dataclass
class DigestState:
    """The list's digest numbering: the last ``volume`` and ``issue`` given (0: none yet), when
    the last digest went out (``last_sent``), and the last issue claimed (``claim``, at
    ``claimed_at``; None before any) with whether it is ``sent`` (its posts are gone)."""

    volume: int = 0
    issue: int = 0
    last_sent: float | None = None
    claim: str | None = None
    claimed_at: float | None = None
    sent: bool = False

    def __post_init__(self) -> None:
        self.sent = bool(self.sent)     # SQLite keeps it as 0/1


class ListStore(abc.ABC):
    """One list's members, bounce info, evidence, events and pending records.

    What every backend guarantees its callers:

    - Threads may share one store; each call (or :meth:`transaction` block)
      is atomic and sees only committed data of other threads and processes.
    - A store object used in a ``fork()``ed child works there, on the child's
      own connections (the parent's are never used or closed by the child).
    - Recovery without restart: after a :class:`StoreUnavailable` (database
      unreachable, corrupt, replaced or missing), a later call works as soon
      as the database is good again (nothing is kept from the failed state).
    """

    list_key: str
    # The list's case rule (its ``case_sensitive_local_parts``; ``open_store`` sets it from the
    # configuration it is given). False (the default, Mailman's rule): an address finds the
    # member whose address equals it ignoring case (:func:`listgate.addresses.match_key`), the
    # one typed exactly so first, else the oldest subscription (a store made before this rule
    # may hold two spellings of one address: both stay members, ``listgate check`` names
    # them). True: the local part must match as typed. Keys never change with the rule, so
    # switching it strands nobody.
    case_sensitive_local: bool = False

    # -- transactions -----------------------------------------------------
    @abc.abstractmethod
    def transaction(self) -> AbstractContextManager[None]:
        """Context manager: everything inside commits together or not at all.

        Takes the write lock at entry (read-modify-write of a score inside is
        serialised across processes). Re-entrant: nested uses join the outer.
        """

    # -- members ----------------------------------------------------------
    @abc.abstractmethod
    def get_member(self, address: str) -> Member | None:
        """The member ``address`` names under the list's case rule, or None (also for a malformed address)."""

    def same_address(self, one: str, other: str) -> bool:
        """Whether ``one`` and ``other`` name one member under the list's case rule (False when
        either is malformed). No database access: compare with ``member.address`` for a member."""
        try:
            return (match_key(one, self.case_sensitive_local)
                    == match_key(other, self.case_sensitive_local))
        except ValueError:
            return False

    def _filed_under(self, address: str | None) -> str | None:
        """The key events and evidence about ``address`` are filed under, so they are found
        again however it is spelt: the key of the member it names under the list's case rule,
        else its own key (``address`` itself when malformed)."""
        if address is None:
            return None
        if not self.case_sensitive_local:
            member = self.get_member(address)
            if member is not None:
                return member.key
        try:
            return normalize(address)
        except ValueError:
            return address

    def case_duplicates(self) -> list[list[Member]]:
        """Members whose addresses differ only in the case of their local part, grouped (each
        group ordered as lookups prefer them after the exact spelling: oldest first). Only a
        store made before the case rule, or a list that was case-sensitive, holds any; empty
        when the list is case-sensitive."""
        if self.case_sensitive_local:
            return []
        groups: dict[str, list[Member]] = {}
        for member in self.members():
            groups.setdefault(match_key(member.key), []).append(member)
        return [sorted(group, key=lambda m: (m.subscribed_at, m.key))
                for _, group in sorted(groups.items()) if len(group) > 1]

    def has_member(self, address: str) -> bool:
        """Whether ``address`` is a member, in any delivery status (False for a malformed address).

        What a posting rule asks on every RCPT. Raises :class:`StoreUnavailable`
        when the store cannot be read (callers answer 4xx).
        """
        return self.get_member(address) is not None

    def _require(self, address: str) -> Member:
        """The member with ``address``; raises NotAMember (for the backends' own use)."""
        member = self.get_member(address)
        if member is None:
            raise NotAMember(f"{address} is not a member of {self.list_key}")
        return member

    def _moving(self, old: str, new: str) -> tuple[Member, str]:
        """For :meth:`change_address`, inside its transaction: the member ``old`` names and ``new``
        as typed (angle brackets off). Raises NotAMember, AlreadyMember when ``new`` is another
        member (a new spelling of the same address is not: under the case rule it is this one),
        ValueError when ``new`` is malformed (for the backends' own use)."""
        from .common import bare_address
        bare = bare_address(new)
        member = self._require(old)
        other = self.get_member(bare)
        if other is not None and other.key != member.key:
            raise AlreadyMember(f"{bare} is already a member of {self.list_key}")
        return member, bare

    @abc.abstractmethod
    def add_member(self, address: str, display_name: str = "", status: str = "enabled") -> Member:
        """Raises AlreadyMember, or ValueError for a malformed address."""

    @abc.abstractmethod
    def add_members(self, members: Iterable[Member]) -> list[Member]:
        """Add many new members at once (an import): a few statements per thousands, in one transaction.

        ``members`` are records as :func:`listgate.store.common.new_member`
        makes them (other fields may then be set). One whose key is already a
        member, or came earlier in ``members``, is left out and changes
        nothing. Returns the members added, in the order given. ValueError
        (nothing added) for an unknown delivery status or mode.
        """

    @abc.abstractmethod
    def remove_member(self, address: str) -> Member:
        """Removes and returns the member; raises NotAMember."""

    @abc.abstractmethod
    def members(self, status: str | None = None) -> list[Member]:
        """All members (or those with delivery ``status``), ordered by key."""

    @abc.abstractmethod
    def save_member(self, member: Member) -> None:
        """Write every field of ``member`` back (matched by ``key``); raises NotAMember, or
        ValueError for a delivery status or mode that is not one of the known ones."""

    @abc.abstractmethod
    def change_address(self, old: str, new: str) -> Member:
        """Raises NotAMember / AlreadyMember."""

    # -- bounce evidence (capped count and size per member) ----------------
    @abc.abstractmethod
    def add_evidence(self, address: str, message: bytes, at: float) -> None: ...

    @abc.abstractmethod
    def evidence(self, address: str) -> list[tuple[float, bytes]]:
        """Newest first."""

    # -- bounce events (append-only) ---------------------------------------
    @abc.abstractmethod
    def add_event(self, event: BounceEvent) -> int: ...

    @abc.abstractmethod
    def events(self, address: str | None = None, since: float | None = None,
               limit: int | None = None, actions: Iterable[str] | None = None) -> list[BounceEvent]:
        """Newest first; only those whose ``action`` is in ``actions`` when given."""

    @abc.abstractmethod
    def event(self, event_id: int) -> BounceEvent | None:
        """The event with ``event_id``, None if there is none (a malformed id is None too)."""

    def strike_event(self, event_id: int) -> BounceEvent:
        """Mark event ``event_id`` wrongly scored: its ``action`` becomes ``struck`` and its
        ``detail`` starts with ``[struck, was ACTION]`` (the history stays); returns the
        event as it was. Raises :class:`UnknownEvent` for an id that names no event, or
        one already struck."""
        with self.transaction():
            found = self.event(event_id)
            if found is None or found.action == "struck":
                raise UnknownEvent(f"no bounce event {event_id!r} to strike in {self.list_key}")
            self._rewrite_event(event_id, "struck", f"[struck, was {found.action}] {found.detail or ''}".strip())
        return found

    @abc.abstractmethod
    def _rewrite_event(self, event_id: int, action: str, detail: str) -> None:
        """Set the ``action`` and ``detail`` of event ``event_id`` (for :meth:`strike_event`)."""

    # -- pending records -----------------------------------------------------
    @abc.abstractmethod
    def add_pending(self, type: str, payload: dict[str, Any], lifetime: float) -> PendingRecord:
        """New record with a fresh token (>= 128 bits from ``secrets``, local-part safe)."""

    @abc.abstractmethod
    def restore_pending(self, record: PendingRecord) -> bool:
        """Insert ``record`` with its own token, ``created`` and ``expires`` (moving a site: a
        confirmation another system mailed keeps working). True if written; False (nothing
        written) when this list already has that token. Raises ValueError for an unknown type,
        a token :func:`listgate.store.tokens.is_token` refuses, a payload JSON cannot hold, or a
        token another list of a shared database holds.
        """

    @abc.abstractmethod
    def peek_pending(self, token: str) -> PendingRecord | None:
        """The record, or None if unknown or expired. Does not remove it."""

    @abc.abstractmethod
    def confirm_pending(self, token: str, type: str | Iterable[str] | None = None) -> PendingRecord:
        """Atomically return and remove; raises UnknownToken (also if expired or of another type).

        When two processes confirm one token at once, exactly one gets it.
        """

    @abc.abstractmethod
    def repend(self, token: str, lifetime: float) -> PendingRecord:
        """Give the record a fresh lifetime from now; raises UnknownToken."""

    @abc.abstractmethod
    def evict_expired(self) -> list[PendingRecord]:
        """Remove and return records whose lifetime has passed."""

    @abc.abstractmethod
    def pending(self, type: str | None = None) -> list[PendingRecord]:
        """Unexpired records, oldest first."""

    # -- digest collection (listgate.app.digests) -----------------------------
    @abc.abstractmethod
    def collect_digest(self, key: str, message: bytes, at: float) -> bool:
        """Keep ``message`` for the next digest; False (nothing written) when a post with this
        ``key`` is already collected (a replayed qfile is collected once)."""

    @abc.abstractmethod
    def digest_posts(self, claim: str | None = None) -> list[DigestPost]:
        """The posts not yet in a digest (``claim`` None) or those of issue ``claim``, oldest first."""

    @abc.abstractmethod
    def digest_state(self) -> DigestState:
        """The list's digest numbering and open claim (a fresh :class:`DigestState` before any)."""

    def claim_digest(self, claim: str, volume: int, issue: int, at: float) -> list[DigestPost]:
        """In one transaction: every post not yet in a digest goes into issue ``claim`` (numbered
        ``volume``/``issue``), which becomes the last claim, not sent; returns those posts.
        Nothing is written when there is none (returns []). Raises :class:`StoreError` while the
        last claim is not sent (finish it with :meth:`digest_sent` first)."""
        with self.transaction():
            state = self.digest_state()
            if state.claim is not None and not state.sent:
                raise StoreError(f"digest issue {state.claim} of {self.list_key} is claimed and not sent")
            posts = self.digest_posts()
            if posts:
                self._write_claim(claim, volume, issue, state.last_sent, at, [p.id for p in posts])
        for post in posts:
            post.claim = claim
        return posts

    def digest_sent(self, claim: str) -> int:
        """In one transaction: claim ``claim`` is sent: its posts go, ``last_sent`` becomes its
        ``claimed_at``. Returns how many posts went; 0 (nothing written) when ``claim`` is not
        the last claim or is sent already."""
        with self.transaction():
            state = self.digest_state()
            if state.claim != claim or state.sent:
                return 0
            return self._close_claim(claim)

    @abc.abstractmethod
    def _write_claim(self, claim: str, volume: int, issue: int, last_sent: float | None, at: float,
                     ids: list[int]) -> None:
        """Mark posts ``ids`` with ``claim``; write the state (for :meth:`claim_digest`; a post collected
        meanwhile, outside the list's write lock, stays for the next issue)."""

    @abc.abstractmethod
    def _close_claim(self, claim: str) -> int:
        """Delete ``claim``'s posts, mark it sent; the count deleted (for :meth:`digest_sent`)."""

    # -- small durable facts -------------------------------------------------
    @abc.abstractmethod
    def remember(self, kind: str, key: str, ttl: float, owner: str | None = None) -> bool:
        """True if (kind, key) is not remembered (or expired), or is remembered
        with this same non-None owner; then remembers it as (kind, key, owner)
        for ``ttl`` seconds from ``clock.now()``, in one transaction. False
        otherwise (nothing written): remembered and alive, with another owner,
        with no owner, or asked with ``owner=None``.

        Used for duplicate suppression (keys of accepted posts; the runner
        passes the qfile id as ``owner``, so re-processing the same qfile after
        a crash is not a duplicate of itself) and once-only notices (domain
        incidents). ``kind`` and ``key`` are free text; ``ttl`` is seconds.
        Raises StoreUnavailable when the fact cannot be stored durably.
        """

    # -- leases (periodic tasks: once per list and period, however many runners) ----
    @abc.abstractmethod
    def try_lock(self, name: str, ttl: float, holder: str) -> bool:
        """Take the lease ``name`` of this list for ``ttl`` seconds from ``clock.now()``.

        True if it was free, expired, or already ``holder``'s (then it is
        renewed); False while another holder's lease is alive (nothing
        written). One atomic step in the database: of any number of
        processes or hosts asking at once, one gets True. A holder names one
        process (host and pid, say); a lease is not released by a crash, it
        expires. Periodic tasks take ``("tasks", period, runner)`` and do not
        unlock, so whoever ran a period's tasks holds them until the period
        ends (the hosts' clocks must agree, as NTP keeps them).
        """

    @abc.abstractmethod
    def unlock(self, name: str, holder: str) -> None:
        """Give up ``holder``'s lease ``name`` early (nothing happens if it is not ``holder``'s)."""

    @property
    @abc.abstractmethod
    def closed(self) -> bool:
        """True once :meth:`close` was called (``open_store`` then gives a new store)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release this process's connections; later calls raise :class:`StoreUnavailable`."""
