"""The embedded :class:`~listgate.store.base.ListStore`: one SQLite database per list.

File ``STATE_DIR/lists/NAME@DOMAIN.db``, opened as :mod:`listgate.store.sqlite_schema`
says (WAL, ``synchronous=FULL``, a busy timeout, migrations).

Connections: each store keeps the connections it opened in a small pool. A
thread takes one for a call, or for a whole :meth:`SQLiteStore.transaction`
block with every call and nested block inside it, and gives it back when the
block ends. libmilter runs a new thread per SMTP session, so a connection per
thread would be opened (and closed) once per session; the pool holds as many
connections as the most threads that used the store at the same time.
SQLite's file locks serialise writers across connections and processes.

Fork: SQLite forbids carrying a connection across ``fork()``
(https://www.sqlite.org/howtocorrupt.html section 2.6). A store notices at
its next call that it runs in another process, forgets the parent's
connections without closing them (they are the parent's), and opens its own.

Repair: a connection on which SQLite raised an error is closed instead of
going back to the pool, and each call that takes a connection first compares
the device and inode of the store's path (one ``stat``) with those of the
file the connection opened. So a store file found corrupt, then replaced by
a good copy (``mv``), is used again by the next call, without a restart; a
file that disappears makes the store unavailable (never silently empty)
until it is back.

Source for the locking rules: https://www.sqlite.org/lang_transaction.html
(``BEGIN IMMEDIATE``), https://www.sqlite.org/wal.html.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

from .. import clock
from ..addresses import normalize
from .base import (AlreadyMember, BounceEvent, DigestPost, DigestState, ListStore, Member,
                   NotAMember, PendingRecord, StoreUnavailable, UnknownToken)
from .common import (DIGEST_POST_COLUMNS, DIGEST_STATE_COLUMNS, EVENT_COLUMNS, EVIDENCE_KEEP, MEMBER_COLUMNS, PENDING_COLUMNS, REMEMBER_PURGE_BATCH,
                     STORED_MEMBER_COLUMNS, check_member, digest_post, first_of_each_key, folded,
                     member_lookup, member_values, new_member,
                     pending_payload, pending_record, restored_pending, truncate_evidence)
from .sqlite_schema import connect, store_error
from .tokens import new_token
from ..log import events

log = events("listgate.store")

_MEMBER_SELECT = f"SELECT {', '.join(MEMBER_COLUMNS)} FROM members"
_PENDING_SELECT = f"SELECT {', '.join(PENDING_COLUMNS)} FROM pending"


def _file_id(path: str) -> tuple[int, int] | None:
    """(device, inode) of the file at ``path`` (symlinks followed, as SQLite does), None if missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class _Connection:
    """A pooled connection: the file it opened (``file_id``), the process that opened it,
    its transaction depth (0: none open), and whether SQLite raised on it (then it is not reused)."""

    __slots__ = ("conn", "file_id", "pid", "depth", "broken")

    def __init__(self, conn: sqlite3.Connection, file_id: tuple[int, int] | None):
        self.conn = conn
        self.file_id = file_id
        self.pid = os.getpid()
        self.depth = 0
        self.broken = False


class SQLiteStore(ListStore):
    """One list's store in the SQLite file ``path``.

    Raises :class:`StoreUnavailable` when the file cannot be opened, is not a
    database, or its schema is newer than this code.
    """

    def __init__(self, path: str, list_key: str, *, busy_timeout: float = 10.0):
        self.path = path
        self.list_key = list_key
        self.busy_timeout = float(busy_timeout)
        self._closed = False
        self._opened = False                # once a file was opened, a missing one is not created again
        self._reset_pool()
        with self._lease():                 # open (and migrate) now: a broken file is reported at open time
            pass

    # -- connections -------------------------------------------------------
    def _reset_pool(self) -> None:
        """A pool of its own for this process (at creation, and in a child after ``fork()``)."""
        self._lock = threading.Lock()       # guards _idle against close()
        self._idle: list[_Connection] = []
        self._local = threading.local()     # .held: the connection this thread holds in a lease
        self._pid = os.getpid()

    def _take(self) -> _Connection:
        """An idle connection still on the file at ``path``, or a new one; StoreUnavailable once closed."""
        file_id = _file_id(self.path)
        while True:
            with self._lock:
                if self._closed:
                    raise StoreUnavailable(f"list store {self.path} is closed")
                held = self._idle.pop() if self._idle else None
            if held is None:
                break
            if held.file_id == file_id:
                return held
            log.info("store_reopened", "the file was replaced or removed; reopening", store=self.path)
            self._retire(held)
        conn = connect(self.path, self.busy_timeout, create=not self._opened)
        self._opened = True
        # stat before connect: if the file was replaced in between, the next call reopens once more
        return _Connection(conn, file_id or _file_id(self.path))

    def _give_back(self, held: _Connection) -> None:
        """Return ``held`` to the pool, or close it (the store is closed, or SQLite raised on it)."""
        if held.pid != os.getpid():
            return      # the parent's, held when this process forked: not ours to pool or close
        if held.conn.in_transaction:
            # only after a COMMIT and its ROLLBACK both failed: never pool a connection inside a
            # transaction (the next thread would see its writes, and it holds the write lock)
            held.broken = True
        with self._lock:
            if not held.broken and not self._closed:
                self._idle.append(held)
                return
        self._close(held)

    def _retire(self, held: _Connection) -> None:
        """Close ``held``, whose file is no longer at ``path``, leaving no WAL behind for the next file.

        SQLite neither checkpoints nor deletes the WAL of a database that was
        moved when its last connection closes, and a new file at the same name
        would be read through that WAL's frames (https://www.sqlite.org/howtocorrupt.html,
        "Mispairing database files and hot journals"): so its frames go into
        the old file first, which also leaves a file moved aside complete.
        Another process still reading the old file can keep SQLite from
        emptying the WAL (the checkpoint then waits up to the busy timeout).
        """
        try:
            held.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error as exc:
            log.warning("store_checkpoint_failed", "checkpoint of the replaced file failed", store=self.path, error=exc)
        self._close(held)

    def _close(self, held: _Connection) -> None:
        try:
            held.conn.close()
        except sqlite3.Error as exc:
            log.warning("store_close_failed", "closing a connection failed", store=self.path, error=exc)

    @contextmanager
    def _lease(self) -> Iterator[_Connection]:
        """This thread's connection for the whole block; nested leases in the thread get the same one."""
        if self._pid != os.getpid():
            self._reset_pool()              # the parent's connections: never used, never closed here
        local = self._local
        held = getattr(local, "held", None)
        if held is not None:
            yield held
            return
        held = self._take()
        local.held = held
        try:
            yield held
        finally:
            # cleared only if still ours: an abandoned block may be finished by the garbage
            # collector on another thread, whose own lease must stay
            if getattr(local, "held", None) is held:
                local.held = None
            self._give_back(held)

    def _failed(self, held: _Connection, exc: sqlite3.Error):
        """The contract's exception for ``exc``; ``held`` is not reused (it may have seen a bad file)."""
        held.broken = True
        return store_error(exc, self.path)

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        with self._lease() as held:
            try:
                return held.conn.execute(sql, tuple(params)).fetchall()
            except sqlite3.Error as exc:
                raise self._failed(held, exc) from exc

    def _exec(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        with self._lease() as held:
            try:
                return held.conn.execute(sql, tuple(params))
            except sqlite3.Error as exc:
                raise self._failed(held, exc) from exc

    # -- transactions -----------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; nested uses are savepoints inside the outer one.

        The thread keeps one connection for the whole block (nested blocks
        included), so every call inside sees the block's writes; other threads
        use other connections and see only committed data. A nested block that
        raises undoes only its own writes (the exception still propagates).
        Raises StoreUnavailable if the write lock cannot be had within the busy
        timeout or the commit cannot be made durable.
        """
        with self._lease() as held:
            conn, depth = held.conn, held.depth
            try:
                conn.execute("BEGIN IMMEDIATE" if depth == 0 else f"SAVEPOINT sp{depth}")
            except sqlite3.Error as exc:
                raise self._failed(held, exc) from exc
            held.depth = depth + 1
            try:
                yield
            except BaseException:
                held.depth = depth
                try:
                    if depth == 0:
                        conn.execute("ROLLBACK")
                    else:
                        conn.execute(f"ROLLBACK TO sp{depth}")
                        conn.execute(f"RELEASE sp{depth}")
                except sqlite3.Error as exc:  # e.g. SQLite already rolled back after SQLITE_FULL
                    log.debug("store_rollback_failed", store=self.path, error=exc)
                raise
            held.depth = depth
            try:
                conn.execute("COMMIT" if depth == 0 else f"RELEASE sp{depth}")
            except sqlite3.Error as exc:
                error = self._failed(held, exc)
                if depth == 0 and conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error as again:
                        log.debug("store_rollback_failed", "rollback after a failed commit", store=self.path, error=again)
                raise error from exc

    # -- members ----------------------------------------------------------
    def get_member(self, address: str) -> Member | None:
        lookup = member_lookup(address, self.case_sensitive_local)
        rows = self._query(f"{_MEMBER_SELECT} WHERE {lookup[0]}", lookup[1]) if lookup is not None else []
        return Member(*rows[0]) if rows else None

    def add_member(self, address: str, display_name: str = "", status: str = "enabled") -> Member:
        member = new_member(address, display_name, status)
        with self.transaction():
            if not self._insert_member(member):
                raise AlreadyMember(f"{member.address} is already a member of {self.list_key}")
        return member

    def add_members(self, members: Iterable[Member]) -> list[Member]:
        """One prepared insert per member in one transaction (in-process: no round trip to batch away)."""
        todo = first_of_each_key(members, self.case_sensitive_local)
        with self.transaction():
            return [m for m in todo if self._insert_member(m)]

    def _insert_member(self, member: Member) -> bool:
        """Insert ``member`` unless the list has it already under its case rule (the same key,
        or another spelling of it); whether it was inserted."""
        if self.get_member(member.address) is not None:
            return False
        cur = self._exec(f"INSERT INTO members ({', '.join(STORED_MEMBER_COLUMNS)}) VALUES "
                         f"({', '.join('?' * len(STORED_MEMBER_COLUMNS))}) ON CONFLICT (key) DO NOTHING",
                         member_values(member))
        return cur.rowcount == 1

    def remove_member(self, address: str) -> Member:
        """Removes the member and their evidence (events stay: they are the history)."""
        with self.transaction():
            member = self._require(address)
            self._exec("DELETE FROM members WHERE key = ?", (member.key,))
            self._exec("DELETE FROM evidence WHERE member_key = ?", (member.key,))
        return member

    def members(self, status: str | None = None) -> list[Member]:
        if status is None:
            rows = self._query(f"{_MEMBER_SELECT} ORDER BY key")
        else:
            rows = self._query(f"{_MEMBER_SELECT} WHERE delivery_status = ? ORDER BY key", (status,))
        return [Member(*r) for r in rows]

    def save_member(self, member: Member) -> None:
        check_member(member)
        columns = [c for c in MEMBER_COLUMNS if c != "key"]
        values = [getattr(member, c) for c in columns]
        with self.transaction():
            cur = self._exec(f"UPDATE members SET {', '.join(f'{c} = ?' for c in columns)} WHERE key = ?",
                             values + [member.key])
            if cur.rowcount == 0:
                raise NotAMember(f"{member.address} is not a member of {self.list_key}")

    def change_address(self, old: str, new: str) -> Member:
        """Move ``old``'s membership, bounce info and evidence to ``new`` (ValueError if malformed)."""
        with self.transaction():
            member, bare = self._moving(old, new)
            new_key = normalize(bare)
            self._exec("UPDATE members SET key = ?, address = ?, folded = ? WHERE key = ?",
                       (new_key, bare, folded(new_key), member.key))
            self._exec("UPDATE evidence SET member_key = ? WHERE member_key = ?", (new_key, member.key))
        member.key, member.address = new_key, bare
        return member

    # -- bounce evidence ---------------------------------------------------
    def add_evidence(self, address: str, message: bytes, at: float) -> None:
        """Keep ``message`` (cut to EVIDENCE_MAX_BYTES) and only the EVIDENCE_KEEP newest per address."""
        key = self._filed_under(address)
        with self.transaction():
            self._exec("INSERT INTO evidence (member_key, at, message) VALUES (?, ?, ?)",
                       (key, at, truncate_evidence(bytes(message))))
            self._exec("DELETE FROM evidence WHERE member_key = ? AND id NOT IN "
                       "(SELECT id FROM evidence WHERE member_key = ? ORDER BY at DESC, id DESC LIMIT ?)",
                       (key, key, EVIDENCE_KEEP))

    def evidence(self, address: str) -> list[tuple[float, bytes]]:
        key = self._filed_under(address)
        rows = self._query("SELECT at, message FROM evidence WHERE member_key = ? ORDER BY at DESC, id DESC",
                           (key,))
        return [(at, bytes(msg)) for at, msg in rows]

    # -- bounce events -------------------------------------------------------
    def add_event(self, event: BounceEvent) -> int:
        """Append ``event`` (address filed under its member key); returns its id."""
        values = [getattr(event, c) for c in EVENT_COLUMNS[:-1]]
        values[1] = self._filed_under(event.address)
        with self.transaction():
            cur = self._exec(f"INSERT INTO events ({', '.join(EVENT_COLUMNS[:-1])}) VALUES "
                             f"({', '.join('?' * (len(EVENT_COLUMNS) - 1))})", values)
        event.id = cur.lastrowid
        return event.id

    def events(self, address: str | None = None, since: float | None = None,
               limit: int | None = None, actions: Iterable[str] | None = None) -> list[BounceEvent]:
        where, params = [], []
        if address is not None:
            where.append("address = ?")
            params.append(self._filed_under(address))
        if since is not None:
            where.append("at >= ?")
            params.append(since)
        if actions is not None:
            wanted = list(actions)
            where.append(f"action IN ({', '.join(['?'] * len(wanted)) or 'NULL'})")
            params.extend(wanted)
        sql = f"SELECT {', '.join(EVENT_COLUMNS)} FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY at DESC, id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return [BounceEvent(**dict(zip(EVENT_COLUMNS, r))) for r in self._query(sql, params)]

    def event(self, event_id: int) -> BounceEvent | None:
        if not isinstance(event_id, int) or isinstance(event_id, bool):
            return None
        rows = self._query(f"SELECT {', '.join(EVENT_COLUMNS)} FROM events WHERE id = ?", (event_id,))
        return BounceEvent(**dict(zip(EVENT_COLUMNS, rows[0]))) if rows else None

    def _rewrite_event(self, event_id: int, action: str, detail: str) -> None:
        self._exec("UPDATE events SET action = ?, detail = ? WHERE id = ?", (action, detail, event_id))

    # -- pending records -----------------------------------------------------
    def add_pending(self, type: str, payload: dict[str, Any], lifetime: float) -> PendingRecord:
        """Raises ValueError for an unknown type or a payload JSON cannot hold."""
        text = pending_payload(type, payload)
        now = clock.now()
        with self.transaction():
            while True:  # a 128-bit collision is astronomically unlikely, but never overwrite
                token = new_token()
                if not self._query("SELECT 1 FROM pending WHERE token = ?", (token,)):
                    break
            self._exec("INSERT INTO pending (token, type, payload, created, expires) VALUES (?, ?, ?, ?, ?)",
                       (token, type, text, now, now + lifetime))
        return PendingRecord(token=token, type=type, payload=json.loads(text), created=now, expires=now + lifetime)

    def restore_pending(self, record: PendingRecord) -> bool:
        text = restored_pending(record)
        with self.transaction():
            if self._query("SELECT 1 FROM pending WHERE token = ?", (record.token,)):
                return False
            self._exec("INSERT INTO pending (token, type, payload, created, expires) VALUES (?, ?, ?, ?, ?)",
                       (record.token, record.type, text, float(record.created), float(record.expires)))
        return True

    def peek_pending(self, token: str) -> PendingRecord | None:
        rows = self._query(f"{_PENDING_SELECT} WHERE token = ? AND expires > ?", (token, clock.now()))
        return pending_record(rows[0]) if rows else None

    def confirm_pending(self, token: str, type: str | Iterable[str] | None = None) -> PendingRecord:
        """Select and delete under the write lock (``BEGIN IMMEDIATE``), so one confirmer wins.

        An expired record is left for :meth:`evict_expired` (whose caller acts on it).
        """
        types = (type,) if isinstance(type, str) else (tuple(type) if type is not None else None)
        with self.transaction():
            rows = self._query(f"{_PENDING_SELECT} WHERE token = ? AND expires > ?", (token, clock.now()))
            if not rows or (types is not None and rows[0][1] not in types):
                raise UnknownToken(f"unknown or expired token {token!r} for {self.list_key}")
            self._exec("DELETE FROM pending WHERE token = ?", (token,))
        return pending_record(rows[0])

    def repend(self, token: str, lifetime: float) -> PendingRecord:
        with self.transaction():
            record = self.peek_pending(token)
            if record is None:
                raise UnknownToken(f"unknown or expired token {token!r} for {self.list_key}")
            record.expires = clock.now() + lifetime
            self._exec("UPDATE pending SET expires = ? WHERE token = ?", (record.expires, token))
        return record

    def evict_expired(self) -> list[PendingRecord]:
        now = clock.now()
        with self.transaction():
            rows = self._query(f"{_PENDING_SELECT} WHERE expires <= ? ORDER BY created, rowid", (now,))
            self._exec("DELETE FROM pending WHERE expires <= ?", (now,))
        return [pending_record(r) for r in rows]

    def pending(self, type: str | None = None) -> list[PendingRecord]:
        now = clock.now()
        if type is None:
            rows = self._query(f"{_PENDING_SELECT} WHERE expires > ? ORDER BY created, rowid", (now,))
        else:
            rows = self._query(f"{_PENDING_SELECT} WHERE type = ? AND expires > ? ORDER BY created, rowid",
                               (type, now))
        return [pending_record(r) for r in rows]

    # -- digest collection ---------------------------------------------------
    def collect_digest(self, key: str, message: bytes, at: float) -> bool:
        cur = self._exec("INSERT OR IGNORE INTO digest_posts (key, at, message) VALUES (?, ?, ?)",
                         (key, at, bytes(message)))
        return cur.rowcount == 1

    def digest_posts(self, claim: str | None = None) -> list[DigestPost]:
        sql = f"SELECT {', '.join(DIGEST_POST_COLUMNS)} FROM digest_posts WHERE claim IS ? ORDER BY id"
        return [digest_post(r) for r in self._query(sql, (claim,))]

    def digest_state(self) -> DigestState:
        rows = self._query(f"SELECT {', '.join(DIGEST_STATE_COLUMNS)} FROM digest_state")
        return DigestState(*rows[0]) if rows else DigestState()

    def _write_claim(self, claim: str, volume: int, issue: int, last_sent: float | None, at: float,
                     ids: list[int]) -> None:
        self._exec(f"UPDATE digest_posts SET claim = ? WHERE id IN ({', '.join('?' * len(ids))})", [claim, *ids])
        self._exec("INSERT OR REPLACE INTO digest_state (one, volume, issue, last_sent, claim, claimed_at, sent) "
                   "VALUES (1, ?, ?, ?, ?, ?, 0)", (volume, issue, last_sent, claim, at))

    def _close_claim(self, claim: str) -> int:
        gone = self._exec("DELETE FROM digest_posts WHERE claim = ?", (claim,)).rowcount
        self._exec("UPDATE digest_state SET last_sent = claimed_at, sent = 1")
        return gone

    # -- small durable facts -------------------------------------------------
    def remember(self, kind: str, key: str, ttl: float, owner: str | None = None) -> bool:
        now = clock.now()
        with self.transaction():
            rows = self._query("SELECT expires, owner FROM remembered WHERE kind = ? AND key = ?", (kind, key))
            if rows and rows[0][0] > now and (owner is None or rows[0][1] != owner):
                return False
            self._exec("INSERT OR REPLACE INTO remembered (kind, key, expires, owner) VALUES (?, ?, ?, ?)",
                       (kind, key, now + ttl, owner))
            # Bounded clean-up so the table does not grow with every Message-ID ever seen.
            self._exec("DELETE FROM remembered WHERE rowid IN "
                       "(SELECT rowid FROM remembered WHERE expires <= ? LIMIT ?)", (now, REMEMBER_PURGE_BATCH))
        return True

    def try_lock(self, name: str, ttl: float, holder: str) -> bool:
        """See :meth:`ListStore.try_lock`: read and write under the write lock (``BEGIN IMMEDIATE``)."""
        now = clock.now()
        with self.transaction():
            rows = self._query("SELECT holder, expires FROM leases WHERE name = ?", (name,))
            if rows and rows[0][1] > now and rows[0][0] != holder:
                return False
            self._exec("INSERT OR REPLACE INTO leases (name, holder, expires) VALUES (?, ?, ?)",
                       (name, holder, now + ttl))
        return True

    def unlock(self, name: str, holder: str) -> None:
        self._exec("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close this process's connections; later calls raise StoreUnavailable.

        Idle connections close now. One that another thread holds is not cut
        off: that thread's block (its transaction included) runs to its end,
        and the connection closes when it comes back.
        """
        if self._pid != os.getpid():
            self._reset_pool()
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for held in idle:
            self._close(held)
