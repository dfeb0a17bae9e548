"""The shared :class:`~listgate.store.base.ListStore`: every list in one PostgreSQL database.

For sites with several MX hosts (site config ``store: {url: postgresql://...}``):
a probe token made on one host is known on the others, a member added on one
is a member on all. Tables and migrations: :mod:`listgate.store.postgres_schema`
(created by ``listgate store init``; the daemons only check the version).

Connections (:mod:`listgate.store.postgres_pool`): a thread takes one
connection of its process's pool for a call, or for a whole
:meth:`PostgresStore.transaction` block (nested blocks are savepoints on it).
Every wait is bounded by the store config's timeouts; past them the caller
gets :class:`StoreUnavailable` (4xx).

Exactly once, across hosts: each write block takes its list's transaction-level
advisory lock first (``pg_advisory_xact_lock``), which serialises one list's
read-modify-writes (a bounce score) as SQLite's write lock does, and never
waits on another list. The once-only answers rest on single statements and
constraints: ``confirm_pending`` is a ``DELETE ... RETURNING`` (one confirmer
gets the row), ``remember`` and ``try_lock`` an ``INSERT ... ON CONFLICT DO
UPDATE ... WHERE`` on the primary key (one writer wins), pending tokens the
primary key of their table (unique site-wide).

Fork: a store used in a child process takes the child's own pool
(:mod:`listgate.store.postgres_pool`).
"""
from __future__ import annotations

import json
import os
import threading
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

import psycopg
from psycopg.types.json import Jsonb

from .. import clock
from ..addresses import normalize
from ..config import mask_url
from .base import (AlreadyMember, BounceEvent, DigestPost, DigestState, ListStore, Member,
                   NotAMember, PENDING_TYPES, PendingRecord, StoreUnavailable, UnknownToken)
from .common import (DIGEST_POST_COLUMNS, DIGEST_STATE_COLUMNS, EVENT_COLUMNS, EVIDENCE_KEEP, MEMBER_COLUMNS, PENDING_COLUMNS, REMEMBER_PURGE_BATCH,
                     STORED_MEMBER_COLUMNS, check_member, clean_text, digest_post,
                     first_of_each_key, folded, member_lookup, member_values, new_member, pending_payload,
                     pending_record, restored_pending, truncate_evidence)
from .postgres_pool import database
from .postgres_schema import LOCK_LIST, check_schema, store_error
from .tokens import new_token
from ..log import events

log = events("listgate.store")

_MEMBER_SELECT = f"SELECT {', '.join(MEMBER_COLUMNS)} FROM members"
_PENDING_RETURNING = ", ".join(PENDING_COLUMNS)
_PENDING_SELECT = f"SELECT {_PENDING_RETURNING} FROM pending"
ADD_BATCH = 5000                    # members per insert statement in add_members


class _Held:
    """A connection a thread holds for a call or a transaction block, and the block's depth."""

    __slots__ = ("conn", "depth")

    def __init__(self, conn: psycopg.Connection):
        self.conn = conn
        self.depth = 0


class PostgresStore(ListStore):
    """List ``list_key``'s rows in the PostgreSQL database of store config ``conf``.

    Creating one does not connect; a call raises :class:`StoreUnavailable`
    when the server cannot be reached in time or its schema is not this
    code's (run ``listgate store init``).
    """

    def __init__(self, conf, list_key: str):
        self.conf = conf
        self.list_key = list_key.lower()
        self.where = f"list store {self.list_key} on {mask_url(conf.url)}"
        self._closed = False
        self._local = threading.local()
        self._pid = os.getpid()

    # -- connections -------------------------------------------------------
    @contextmanager
    def _lease(self) -> Iterator[_Held]:
        """This thread's connection for the whole block; nested leases in the thread get the same one."""
        if self._pid != os.getpid():
            self._local, self._pid = threading.local(), os.getpid()     # the parent's: never used here
        held = getattr(self._local, "held", None)
        if held is not None:
            yield held
            return
        if self._closed:
            raise StoreUnavailable(f"{self.where} is closed")
        db = database(self.conf)
        try:
            conn = db.pool.getconn()
        except psycopg.Error as exc:        # PoolTimeout: the server is unreachable or every connection busy
            raise store_error(exc, self.where) from None
        try:
            if not db.schema_ok:
                try:
                    check_schema(conn, self.where)
                except psycopg.Error as exc:
                    raise store_error(exc, self.where) from None
                db.schema_ok = True
            held = self._local.held = _Held(conn)
            yield held
        finally:
            if getattr(self._local, "held", None) is held:
                self._local.held = None
            db.pool.putconn(conn)           # the pool discards a broken connection, rolls back an open one

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        with self._lease() as held:
            try:
                return held.conn.execute(sql, tuple(params)).fetchall()
            except psycopg.Error as exc:
                raise store_error(exc, self.where) from exc

    def _exec(self, sql: str, params: Iterable[Any] = ()) -> psycopg.Cursor:
        with self._lease() as held:
            try:
                return held.conn.execute(sql, tuple(params))
            except psycopg.Error as exc:
                raise store_error(exc, self.where) from exc

    # -- transactions -----------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[None]:
        """``BEGIN`` and the list's advisory write lock ... ``COMMIT``; nested uses are savepoints.

        The lock is held until the outer block ends; a writer waits for it at
        most ``busy_timeout`` (then StoreUnavailable). A nested block that
        raises undoes only its own writes (the exception still propagates).
        """
        with self._lease() as held:
            try:
                with held.conn.transaction():
                    if held.depth == 0:
                        held.conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                                          (LOCK_LIST, self.list_key))
                    held.depth += 1
                    try:
                        yield
                    finally:
                        held.depth -= 1
            except psycopg.Error as exc:    # BEGIN, the lock, COMMIT or ROLLBACK failed
                raise store_error(exc, self.where) from exc

    # -- members ----------------------------------------------------------
    def get_member(self, address: str) -> Member | None:
        lookup = member_lookup(address, self.case_sensitive_local)
        if lookup is None or any(clean_text(p) != p for p in lookup[1]):
            return None
        rows = self._query(f"{_MEMBER_SELECT} WHERE list_key = %s AND {lookup[0].replace('?', '%s')}",
                           (self.list_key, *lookup[1]))
        return Member(*rows[0]) if rows else None

    def add_member(self, address: str, display_name: str = "", status: str = "enabled") -> Member:
        member = new_member(address, display_name, status)
        with self.transaction():
            if not self._insert_members([member]):
                raise AlreadyMember(f"{member.address} is already a member of {self.list_key}")
        return member

    def add_members(self, members: Iterable[Member]) -> list[Member]:
        """One ``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` per :data:`ADD_BATCH` members.

        Not add_member per member: that is a savepoint and a round trip each,
        and a hundred thousand subtransactions in one transaction slow every
        later one down (PostgreSQL's subtransaction cache overflows).
        """
        todo = first_of_each_key(members, self.case_sensitive_local)
        added: set[str] = set()
        with self.transaction():
            for start in range(0, len(todo), ADD_BATCH):
                added.update(self._insert_members(todo[start:start + ADD_BATCH]))
        return [m for m in todo if m.key in added]

    def _insert_members(self, members: list[Member]) -> list[str]:
        """Insert ``members`` (distinct under the list's case rule) but those already here (the
        same key, or, matching without case, another spelling of it); the keys inserted.

        The rows travel as one JSON array that ``jsonb_populate_recordset``
        reads with the members table's own column types.
        """
        rows = [dict(zip(STORED_MEMBER_COLUMNS, _member_values(m))) for m in members]
        columns = ", ".join(STORED_MEMBER_COLUMNS)
        spelt = ("" if self.case_sensitive_local else
                 "WHERE NOT EXISTS (SELECT 1 FROM members m WHERE m.list_key = %s AND m.folded = r.folded) ")
        params = (self.list_key, Jsonb(rows)) + (() if self.case_sensitive_local else (self.list_key,))
        return [key for key, in self._query(
            f"INSERT INTO members (list_key, {columns}) SELECT %s, {columns} "
            f"FROM jsonb_populate_recordset(NULL::members, %s) AS r {spelt}ON CONFLICT DO NOTHING RETURNING key",
            params)]

    def remove_member(self, address: str) -> Member:
        """Removes the member and their evidence (events stay: they are the history)."""
        with self.transaction():
            member = self._require(address)
            self._exec("DELETE FROM members WHERE list_key = %s AND key = %s", (self.list_key, member.key))
            self._exec("DELETE FROM evidence WHERE list_key = %s AND member_key = %s", (self.list_key, member.key))
        return member

    def members(self, status: str | None = None) -> list[Member]:
        if status is None:
            rows = self._query(f"{_MEMBER_SELECT} WHERE list_key = %s ORDER BY key", (self.list_key,))
        else:
            rows = self._query(f"{_MEMBER_SELECT} WHERE list_key = %s AND delivery_status = %s ORDER BY key",
                               (self.list_key, status))
        return [Member(*r) for r in rows]

    def save_member(self, member: Member) -> None:
        check_member(member)
        columns = [c for c in MEMBER_COLUMNS if c != "key"]
        values = [clean_text(v) if isinstance(v, str) else v for v in (getattr(member, c) for c in columns)]
        with self.transaction():
            cur = self._exec(f"UPDATE members SET {', '.join(f'{c} = %s' for c in columns)} "
                             "WHERE list_key = %s AND key = %s", [*values, self.list_key, member.key])
            if cur.rowcount == 0:
                raise NotAMember(f"{member.address} is not a member of {self.list_key}")

    def change_address(self, old: str, new: str) -> Member:
        """Move ``old``'s membership, bounce info and evidence to ``new`` (ValueError if malformed)."""
        with self.transaction():
            member, bare = self._moving(old, new)
            new_key = normalize(bare)
            self._exec("UPDATE members SET key = %s, address = %s, folded = %s WHERE list_key = %s AND key = %s",
                       (new_key, bare, folded(new_key), self.list_key, member.key))
            self._exec("UPDATE evidence SET member_key = %s WHERE list_key = %s AND member_key = %s",
                       (new_key, self.list_key, member.key))
        member.key, member.address = new_key, bare
        return member

    # -- bounce evidence ---------------------------------------------------
    def add_evidence(self, address: str, message: bytes, at: float) -> None:
        """Keep ``message`` (cut to EVIDENCE_MAX_BYTES) and only the EVIDENCE_KEEP newest per address."""
        key = clean_text(self._filed_under(address))
        with self.transaction():
            self._exec("INSERT INTO evidence (list_key, member_key, at, message) VALUES (%s, %s, %s, %s)",
                       (self.list_key, key, at, truncate_evidence(bytes(message))))
            self._exec("DELETE FROM evidence WHERE list_key = %s AND member_key = %s AND id NOT IN "
                       "(SELECT id FROM evidence WHERE list_key = %s AND member_key = %s "
                       "ORDER BY at DESC, id DESC LIMIT %s)", (self.list_key, key, self.list_key, key, EVIDENCE_KEEP))

    def evidence(self, address: str) -> list[tuple[float, bytes]]:
        key = clean_text(self._filed_under(address))
        rows = self._query("SELECT at, message FROM evidence WHERE list_key = %s AND member_key = %s "
                           "ORDER BY at DESC, id DESC", (self.list_key, key))
        return [(at, bytes(msg)) for at, msg in rows]

    # -- bounce events -------------------------------------------------------
    def add_event(self, event: BounceEvent) -> int:
        """Append ``event`` (address filed under its member key; NUL and lone surrogates replaced); its id."""
        values = [getattr(event, c) for c in EVENT_COLUMNS[:-1]]
        values[1] = self._filed_under(event.address)
        values = [clean_text(v) if isinstance(v, str) else v for v in values]
        with self.transaction():
            rows = self._query(f"INSERT INTO events (list_key, {', '.join(EVENT_COLUMNS[:-1])}) VALUES "
                               f"(%s, {', '.join(['%s'] * (len(EVENT_COLUMNS) - 1))}) RETURNING id",
                               [self.list_key, *values])
        event.id = rows[0][0]
        return event.id

    def events(self, address: str | None = None, since: float | None = None,
               limit: int | None = None, actions: Iterable[str] | None = None) -> list[BounceEvent]:
        where, params = ["list_key = %s"], [self.list_key]
        if address is not None:
            where.append("address = %s")
            params.append(clean_text(self._filed_under(address)))
        if since is not None:
            where.append("at >= %s")
            params.append(since)
        if actions is not None:
            wanted = list(actions)
            where.append(f"action IN ({', '.join(['%s'] * len(wanted)) or 'NULL'})")
            params.extend(wanted)
        sql = f"SELECT {', '.join(EVENT_COLUMNS)} FROM events WHERE {' AND '.join(where)} ORDER BY at DESC, id DESC"
        if limit is not None:
            sql += " LIMIT %s"
            params.append(int(limit))
        return [BounceEvent(**dict(zip(EVENT_COLUMNS, r))) for r in self._query(sql, params)]

    def event(self, event_id: int) -> BounceEvent | None:
        if not isinstance(event_id, int) or isinstance(event_id, bool) or not 0 < event_id < 2 ** 63:
            return None
        rows = self._query(f"SELECT {', '.join(EVENT_COLUMNS)} FROM events WHERE list_key = %s AND id = %s",
                           (self.list_key, event_id))
        return BounceEvent(**dict(zip(EVENT_COLUMNS, rows[0]))) if rows else None

    def _rewrite_event(self, event_id: int, action: str, detail: str) -> None:
        self._exec("UPDATE events SET action = %s, detail = %s WHERE list_key = %s AND id = %s",
                   (action, clean_text(detail), self.list_key, event_id))

    # -- pending records -----------------------------------------------------
    def add_pending(self, type: str, payload: dict[str, Any], lifetime: float) -> PendingRecord:
        """Raises ValueError for an unknown type or a payload JSON cannot hold."""
        text = pending_payload(type, payload)
        now = clock.now()
        with self.transaction():
            while True:  # the token is the primary key site-wide: a collision (never seen) draws again
                token = new_token()
                cur = self._exec("INSERT INTO pending (token, list_key, type, payload, created, expires) "
                                 "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (token) DO NOTHING",
                                 (token, self.list_key, type, text, now, now + lifetime))
                if cur.rowcount == 1:
                    break
        return PendingRecord(token=token, type=type, payload=json.loads(text), created=now, expires=now + lifetime)

    def restore_pending(self, record: PendingRecord) -> bool:
        text = restored_pending(record)
        with self.transaction():
            cur = self._exec("INSERT INTO pending (token, list_key, type, payload, created, expires) "
                             "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (token) DO NOTHING",
                             (record.token, self.list_key, record.type, text, float(record.created),
                              float(record.expires)))
            if cur.rowcount == 1:
                return True
            rows = self._query("SELECT list_key FROM pending WHERE token = %s", (record.token,))
        if rows and rows[0][0] != self.list_key:
            raise ValueError(f"token {record.token} is pending in another list ({rows[0][0]})")
        return False

    def peek_pending(self, token: str) -> PendingRecord | None:
        rows = self._query(f"{_PENDING_SELECT} WHERE token = %s AND list_key = %s AND expires > %s",
                           (clean_text(token), self.list_key, clock.now()))
        return pending_record(rows[0]) if rows else None

    def confirm_pending(self, token: str, type: str | Iterable[str] | None = None) -> PendingRecord:
        """One ``DELETE ... RETURNING``: of two hosts confirming at once, one gets the row.

        An expired record is left for :meth:`evict_expired` (whose caller acts on it).
        """
        types = [type] if isinstance(type, str) else (list(type) if type is not None else list(PENDING_TYPES))
        with self.transaction():
            rows = self._query(f"DELETE FROM pending WHERE token = %s AND list_key = %s AND expires > %s "
                               f"AND type = ANY(%s) RETURNING {_PENDING_RETURNING}",
                               (clean_text(token), self.list_key, clock.now(), types))
        if not rows:
            raise UnknownToken(f"unknown or expired token {token!r} for {self.list_key}")
        return pending_record(rows[0])

    def repend(self, token: str, lifetime: float) -> PendingRecord:
        now = clock.now()
        with self.transaction():
            rows = self._query(f"UPDATE pending SET expires = %s WHERE token = %s AND list_key = %s "
                               f"AND expires > %s RETURNING {_PENDING_RETURNING}",
                               (now + lifetime, clean_text(token), self.list_key, now))
        if not rows:
            raise UnknownToken(f"unknown or expired token {token!r} for {self.list_key}")
        return pending_record(rows[0])

    def evict_expired(self) -> list[PendingRecord]:
        with self.transaction():
            rows = self._query(f"WITH gone AS (DELETE FROM pending WHERE list_key = %s AND expires <= %s "
                               f"RETURNING {_PENDING_RETURNING}, seq) "
                               f"SELECT {_PENDING_RETURNING} FROM gone ORDER BY created, seq",
                               (self.list_key, clock.now()))
        return [pending_record(r) for r in rows]

    def pending(self, type: str | None = None) -> list[PendingRecord]:
        where, params = "list_key = %s AND expires > %s", [self.list_key, clock.now()]
        if type is not None:
            where += " AND type = %s"
            params.append(type)
        rows = self._query(f"{_PENDING_SELECT} WHERE {where} ORDER BY created, seq", params)
        return [pending_record(r) for r in rows]

    # -- digest collection ---------------------------------------------------
    def collect_digest(self, key: str, message: bytes, at: float) -> bool:
        """One insert on the unique (list, key) decides, so a post replayed on two hosts is kept once."""
        rows = self._query("INSERT INTO digest_posts (list_key, key, at, message) VALUES (%s, %s, %s, %s) "
                           "ON CONFLICT (list_key, key) DO NOTHING RETURNING 1",
                           (self.list_key, clean_text(key), at, bytes(message)))
        return bool(rows)

    def digest_posts(self, claim: str | None = None) -> list[DigestPost]:
        sql = (f"SELECT {', '.join(DIGEST_POST_COLUMNS)} FROM digest_posts "
               f"WHERE list_key = %s AND claim IS NOT DISTINCT FROM %s ORDER BY id")
        return [digest_post(r) for r in self._query(sql, (self.list_key, clean_text(claim)))]

    def digest_state(self) -> DigestState:
        rows = self._query(f"SELECT {', '.join(DIGEST_STATE_COLUMNS)} FROM digest_state WHERE list_key = %s",
                           (self.list_key,))
        return DigestState(*rows[0]) if rows else DigestState()

    def _write_claim(self, claim: str, volume: int, issue: int, last_sent: float | None, at: float,
                     ids: list[int]) -> None:
        self._exec("UPDATE digest_posts SET claim = %s WHERE list_key = %s AND id = ANY(%s)",
                   (clean_text(claim), self.list_key, ids))
        self._exec("INSERT INTO digest_state (list_key, volume, issue, last_sent, claim, claimed_at) "
                   "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (list_key) DO UPDATE SET volume = EXCLUDED.volume, "
                   "issue = EXCLUDED.issue, claim = EXCLUDED.claim, claimed_at = EXCLUDED.claimed_at, sent = false",
                   (self.list_key, volume, issue, last_sent, clean_text(claim), at))

    def _close_claim(self, claim: str) -> int:
        gone = self._exec("DELETE FROM digest_posts WHERE list_key = %s AND claim = %s",
                          (self.list_key, clean_text(claim))).rowcount
        self._exec("UPDATE digest_state SET last_sent = claimed_at, sent = true WHERE list_key = %s",
                   (self.list_key,))
        return gone

    # -- small durable facts -------------------------------------------------
    def remember(self, kind: str, key: str, ttl: float, owner: str | None = None) -> bool:
        """One upsert on the primary key decides, so two hosts remembering one key at once get one True."""
        now = clock.now()
        with self.transaction():
            rows = self._query(
                "INSERT INTO remembered AS r (list_key, kind, key, expires, owner) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (list_key, kind, key) DO UPDATE SET expires = EXCLUDED.expires, owner = EXCLUDED.owner "
                "WHERE r.expires <= %s OR r.owner = EXCLUDED.owner RETURNING 1",
                (self.list_key, clean_text(kind), clean_text(key), now + ttl, clean_text(owner), now))
            # Bounded clean-up so the table does not grow with every Message-ID ever seen.
            self._exec("DELETE FROM remembered WHERE ctid = ANY(ARRAY(SELECT ctid FROM remembered "
                       "WHERE list_key = %s AND expires <= %s LIMIT %s))", (self.list_key, now, REMEMBER_PURGE_BATCH))
        return bool(rows)

    def try_lock(self, name: str, ttl: float, holder: str) -> bool:
        """See :meth:`ListStore.try_lock`: one upsert on the lease's primary key decides."""
        now = clock.now()
        rows = self._query(
            "INSERT INTO leases AS l (list_key, name, holder, expires) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (list_key, name) DO UPDATE SET holder = EXCLUDED.holder, expires = EXCLUDED.expires "
            "WHERE l.expires <= %s OR l.holder = EXCLUDED.holder RETURNING 1",
            (self.list_key, clean_text(name), clean_text(holder), now + ttl, now))
        return bool(rows)

    def unlock(self, name: str, holder: str) -> None:
        self._exec("DELETE FROM leases WHERE list_key = %s AND name = %s AND holder = %s",
                   (self.list_key, clean_text(name), clean_text(holder)))

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Later calls raise StoreUnavailable; the process's pool (shared by every list) stays open."""
        self._closed = True


def _member_values(member: Member) -> list[Any]:
    return [clean_text(v) if isinstance(v, str) else v for v in member_values(member)]
