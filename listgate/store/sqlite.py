"""The embedded :class:`~listgate.store.base.ListStore`: one SQLite database per list.

File ``STATE_DIR/lists/NAME@DOMAIN.db`` in WAL mode (readers never wait for
the writer), ``synchronous=FULL`` (a commit is on disk before we answer the
MTA), a busy timeout (a writer waits that long for the lock, then the caller
gets :class:`StoreUnavailable` and answers 4xx). The schema version lives in
``PRAGMA user_version``; :data:`MIGRATIONS` brings an older file forward.

Threads: each store keeps a pool of connections shared by all threads
(libmilter runs one new thread per SMTP session, so a connection per thread
would leak one per session and always start with a cold cache). A thread
leases a connection for one call, or for a whole :meth:`SQLiteStore.transaction`
block with every call and nested block inside it, and gives it back when the
block ends (leases are context-managed: no thread keeps one past its block).
Idle connections are reused most recent first, so the pool holds as many
connections as the most threads that used the store at the same time.
SQLite's file locks serialise writers across connections and processes.
Fork: a child never touches its parent's connections (SQLite forbids carrying
a connection across ``fork()``); it opens its own on first use.

Read cache: :meth:`SQLiteStore.get_member`, :meth:`SQLiteStore.has_member` and
:meth:`SQLiteStore.peek_pending` (what every RCPT decision reads) keep, per connection, the rows they have
read, valid for one ``PRAGMA data_version``: that number changes when another
connection (another in the pool, in this process or in another) commits to
the database, and the cache is then emptied before it answers. A pooled
connection's cache serves every thread that leases it, so it stays warm
across SMTP sessions. The connection's own commits do not change it,
so every transaction of this connection empties the cache when it ends, and
reads inside a transaction bypass the cache (they must see its uncommitted
writes). A lookup costs the pragma and a dict access instead of a query, and
never answers from an older state of the database than a query would. The
pragma itself (a read transaction: two lock calls and an ``fstat``) is skipped
while the WAL-index header, read from a shared mapping just before it, has
not changed: every commit rewrites that header (:class:`_WalIndex`); when it
cannot be read, the pragma runs every time.
Inside :func:`read_batch` (a server answering requests that had all arrived
before the block began), each connection checks once, at its first lookup in
the block, instead of at every lookup (the argument is there).
Source: https://www.sqlite.org/pragma.html#pragma_data_version

Source for the locking rules: https://www.sqlite.org/lang_transaction.html
(``BEGIN IMMEDIATE``), https://www.sqlite.org/wal.html,
https://www.sqlite.org/howtocorrupt.html section 2.6 (fork).
"""
from __future__ import annotations

import itertools
import json
import logging
import mmap
import os
import sqlite3
import stat
import threading
import weakref
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

from .. import clock, memo
from ..addresses import normalize
from ..config import valid_address
from .base import (AlreadyMember, BounceEvent, DELIVERY_STATUSES, ListStore, Member, NotAMember,
                   PENDING_TYPES, PendingRecord, StoreUnavailable, UnknownToken)
from .tokens import new_token

log = logging.getLogger("listgate.store")

EVIDENCE_KEEP = 5                 # bouncing messages kept per member (newest)
EVIDENCE_MAX_BYTES = 256 * 1024   # per message; longer ones are cut with a note
REMEMBER_PURGE_BATCH = 100        # expired (kind, key) facts dropped per remember() call

# SQLite primary result codes meaning "cannot read/write durably now"
# (https://www.sqlite.org/rescode.html): BUSY, LOCKED, NOMEM, READONLY, IOERR,
# CORRUPT, FULL, CANTOPEN, PROTOCOL, NOTADB.
_UNAVAILABLE_CODES = {5, 6, 7, 8, 10, 11, 13, 14, 15, 26}

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # version 1
    (
        """CREATE TABLE members (
            key TEXT PRIMARY KEY,
            address TEXT NOT NULL,
            display_name TEXT NOT NULL DEFAULT '',
            delivery_status TEXT NOT NULL DEFAULT 'enabled',
            subscribed_at REAL NOT NULL,
            status_changed_at REAL,
            bounce_score REAL NOT NULL DEFAULT 0,
            last_bounce_day TEXT,
            last_bounce_at REAL,
            notices_left INTEGER,
            last_notice_at REAL,
            re_enable_token TEXT
        )""",
        "CREATE INDEX members_status ON members (delivery_status, key)",
        """CREATE TABLE evidence (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            member_key TEXT NOT NULL,
            at REAL NOT NULL,
            message BLOB NOT NULL
        )""",
        "CREATE INDEX evidence_member ON evidence (member_key, at)",
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at REAL NOT NULL,
            address TEXT,
            bounce_class TEXT NOT NULL,
            status TEXT,
            attribution TEXT NOT NULL DEFAULT '',
            message_id TEXT,
            action TEXT NOT NULL DEFAULT '',
            detail TEXT NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX events_address ON events (address, at)",
        "CREATE INDEX events_at ON events (at)",
        """CREATE TABLE pending (
            token TEXT PRIMARY KEY,
            type TEXT NOT NULL,
            payload TEXT NOT NULL,
            created REAL NOT NULL,
            expires REAL NOT NULL
        )""",
        "CREATE INDEX pending_expires ON pending (expires)",
        "CREATE INDEX pending_type ON pending (type, created)",
        """CREATE TABLE remembered (
            kind TEXT NOT NULL,
            key TEXT NOT NULL,
            expires REAL NOT NULL,
            PRIMARY KEY (kind, key)
        )""",
        "CREATE INDEX remembered_expires ON remembered (expires)",
    ),
    # version 2: who remembered a fact (remember(..., owner=)); rows from version 1 have none
    (
        "ALTER TABLE remembered ADD COLUMN owner TEXT",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

_MEMBER_COLUMNS = ("address", "key", "display_name", "delivery_status", "subscribed_at", "status_changed_at",
                   "bounce_score", "last_bounce_day", "last_bounce_at", "notices_left", "last_notice_at",
                   "re_enable_token")
_MEMBER_SELECT = f"SELECT {', '.join(_MEMBER_COLUMNS)} FROM members"
_EVENT_COLUMNS = ("at", "address", "bounce_class", "status", "attribution", "message_id", "action", "detail", "id")
_PENDING_SELECT = "SELECT token, type, payload, created, expires FROM pending"
_MEMBER_BY_KEY = f"{_MEMBER_SELECT} WHERE key = ?"
_PENDING_BY_TOKEN = f"{_PENDING_SELECT} WHERE token = ?"
_DATA_VERSION = "PRAGMA data_version"
READ_CACHE_MAX = 4096             # rows kept per connection and kind; a full cache is emptied
_MISSING = object()


# this process's id, kept by a fork hook: no getpid() system call per store access
_pid = os.getpid()
_fork_lock = threading.Lock()       # one thread of a child forgets a store's inherited pool


def _after_fork_in_child() -> None:
    global _pid, _fork_lock
    _pid = os.getpid()
    _fork_lock = threading.Lock()
    # the child maps the wal-index files anew with its own connections; the parent's mappings
    # and descriptors are left open, never closed (closing would drop the child's locks on the file)
    _WalIndex._open = {}
    _WalIndex._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def unavailable(exc: sqlite3.Error, path: str) -> StoreUnavailable | None:
    """The :class:`StoreUnavailable` for ``exc`` if it means "cannot store now", else None (a bug)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and (code & 0xFF) in _UNAVAILABLE_CODES:
        return StoreUnavailable(f"list store {path}: {exc}")
    if code is None and isinstance(exc, sqlite3.OperationalError):
        return StoreUnavailable(f"list store {path}: {exc}")
    return None


def _member(row: tuple) -> Member:
    return Member(*row)     # _MEMBER_COLUMNS is Member's field order (asserted below)


def _pending(row: tuple) -> PendingRecord:
    return PendingRecord(token=row[0], type=row[1], payload=_payload(row[2]), created=row[3], expires=row[4])


_flat_payloads: dict[str, dict] = {}     # payload JSON text -> its parse, for flat objects


def _payload(text: str) -> Any:
    """``json.loads(text)``; a flat object (str/number/bool/null values) is parsed once and copied."""
    flat = _flat_payloads.get(text)
    if flat is not None:
        return dict(flat)       # a fresh dict of immutable values: the same as parsing again
    payload = json.loads(text)
    if type(payload) is dict and all(v is None or type(v) in (str, int, float, bool) for v in payload.values()):
        memo.put(_flat_payloads, text, payload, limit=1024)
        return dict(payload)
    return payload


def _event_address(address: str | None) -> str | None:
    """Events about an address are filed under its member key so they can be found again."""
    if address is None:
        return None
    try:
        return normalize(address)
    except ValueError:
        return address


def _member_key(address: str) -> str | None:
    """``normalize(address)``, None for a malformed address; kept per text (posters look up again and again)."""
    key = _member_keys.get(address, _MISSING)
    if key is _MISSING:
        try:
            key = normalize(address)
        except ValueError:
            key = None
        memo.put_text(_member_keys, address, key)
    return key


_member_keys: dict[str, str | None] = {}    # bounded (listgate.memo)


def truncate_evidence(message: bytes, limit: int = EVIDENCE_MAX_BYTES) -> bytes:
    """``message`` if it fits in ``limit`` bytes, else its head plus a note saying it was cut."""
    if len(message) <= limit:
        return message
    note = f"\n\n[listgate: bounce truncated from {len(message)} to at most {limit} bytes]\n".encode("ascii")
    return message[: max(0, limit - len(note))] + note


class SQLiteStore(ListStore):
    """One list's store in the SQLite file ``path``.

    Raises :class:`StoreUnavailable` when the file cannot be opened or its
    schema is newer than this code.
    """

    def __init__(self, path: str, list_key: str, *, busy_timeout: float = 10.0):
        self.path = path
        self.list_key = list_key
        self.busy_timeout = float(busy_timeout)
        self._lock = threading.Lock()       # guards _open_count and opening after close()
        self._local = threading.local()     # .slot: the connection this thread holds in a lease()
        self._idle: list[_Slot] = []        # LIFO: the most recently used connection has the warmest cache
        self._open_count = 0                # connections open in this process: idle + leased
        self._pid = _pid
        self._closed = False
        self._release(self._acquire())  # open (and migrate) now so a broken file is reported at open time

    # -- connections and errors --------------------------------------------
    def _open(self) -> _Slot:
        # opened, counted and mapped under the database's lock, which its closes also hold
        # (_WalIndex: so the mapping is always of the file SQLite uses)
        # SQLite follows a symlinked database file: its wal-index is next to the real file
        index = _WalIndex.of(os.path.realpath(self.path) + "-shm")
        with index.held():
            try:
                conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                                       check_same_thread=False)
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"list store {self.path}: cannot open: {exc}") from None
            try:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if mode.lower() != "wal":
                    log.warning("list store %s: journal mode is %s, not wal (readers will wait for writers)",
                                self.path, mode)
                conn.execute("PRAGMA synchronous=FULL")
                self._migrate(conn)
            except sqlite3.Error as exc:
                conn.close()
                raise unavailable(exc, self.path) or StoreUnavailable(f"list store {self.path}: {exc}") from None
            except StoreUnavailable:
                conn.close()
                raise
            # in WAL mode SQLite now holds DB-shm open: it is this connection's wal-index (not in
            # another mode: a DB-shm left there is nobody's, and its header would never move). Mapped
            # only if SQLite names the same file: otherwise the pragma runs at every check.
            return _Slot(conn, index.attach(wal=mode.lower() == "wal" and _wal_index_path(conn) == index.path))

    def _forked(self) -> None:
        """In a child after ``fork()``: forget the parent's connections (never use or close them)."""
        with _fork_lock:
            if self._pid == _pid:
                return                      # another thread of this child did it
            self._lock = threading.Lock()   # another parent thread may have held it at the fork
            self._local = threading.local()
            self._idle = []
            self._open_count = 0
            self._pid = _pid                # last: the other threads test it without the lock

    def _acquire(self) -> _Slot:
        """An idle connection (the most recently returned), or a new one; StoreUnavailable once closed."""
        if self._closed:
            raise StoreUnavailable(f"list store {self.path} is closed")
        try:
            # list.pop() is atomic under the GIL: no lock on the path every RCPT takes. A close()
            # that runs meanwhile is settled by _release (the slot comes back to a closed store).
            return self._idle.pop()
        except IndexError:
            pass
        with self._lock:
            if self._closed:
                raise StoreUnavailable(f"list store {self.path} is closed")
            self._open_count += 1
        try:
            return self._open()     # outside the lock: opening may wait for a migration's write lock
        except BaseException:
            with self._lock:
                self._open_count -= 1
            raise

    def _release(self, slot: _Slot) -> None:
        """Return ``slot`` to the pool; close it instead if the store is closed or it cannot be reused."""
        if slot.pid != _pid:
            return      # the parent's, leased when this process forked: not ours to pool or close
        if slot.conn.in_transaction:
            # Only after a COMMIT and its ROLLBACK both failed: never pool a connection inside a
            # transaction (the next borrower's reads would see its writes, and it holds the write lock).
            slot.view.reset(None)
            slot.depth = 0
            try:
                slot.conn.execute("ROLLBACK")
            except sqlite3.Error as exc:
                log.warning("list store %s: dropping a connection that cannot roll back: %s", self.path, exc)
                self._discard(slot)
                return
        self._idle.append(slot)
        if self._closed:
            # close() may have emptied the pool before the append: empty it again. Every slot is
            # popped by exactly one thread, so each connection is closed once.
            self._close_idle()

    def _discard(self, slot: _Slot) -> None:
        with self._lock:
            self._open_count -= 1
        slot.close()

    def _close_idle(self) -> None:
        idle = self._idle
        while True:
            try:
                slot = idle.pop()
            except IndexError:
                return
            self._discard(slot)

    @contextmanager
    def _lease(self) -> Iterator[_Slot]:
        """This thread's connection for the whole block; nested leases in the thread get the same one.

        The connection goes back to the pool when the outermost block ends,
        however it ends, so no thread can keep one past its block.
        """
        if self._pid != _pid:
            self._forked()
        local = self._local
        slot = getattr(local, "slot", None)
        if slot is not None:
            yield slot
            return
        slot = self._acquire()
        local.slot = slot
        try:
            yield slot
        finally:
            # Cleared only if it is still ours: an abandoned block may be finished by the garbage
            # collector on another thread, whose own lease must stay.
            if getattr(local, "slot", None) is slot:
                local.slot = None
            self._release(slot)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise StoreUnavailable(f"list store {self.path}: schema version {version} is newer than "
                                   f"this listgate ({SCHEMA_VERSION}); upgrade listgate")
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-read under the write lock: another process may have migrated meanwhile.
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            for number in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[number]:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number + 1}")
                log.info("list store %s: schema migrated to version %d", self.path, number + 1)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _wrapped(self, exc: sqlite3.Error) -> StoreUnavailable:
        """``exc`` as StoreUnavailable if it means "cannot store now"; re-raises it otherwise (a bug)."""
        wrapped = unavailable(exc, self.path)
        if wrapped is None:
            raise exc
        return wrapped

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Turn sqlite3 errors that mean "cannot store now" into StoreUnavailable."""
        try:
            yield
        except sqlite3.Error as exc:
            raise self._wrapped(exc) from exc

    def _run(self, fn, *args):
        """``fn(slot, *args)`` on this thread's leased connection, or on one leased for this call only."""
        if self._pid != _pid:
            self._forked()
        try:
            slot = getattr(self._local, "slot", None)
            if slot is not None:
                return fn(slot, *args)
            slot = self._acquire()
            try:
                return fn(slot, *args)
            finally:
                self._release(slot)
        except sqlite3.Error as exc:
            raise self._wrapped(exc) from exc

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        return self._run(_fetchall, sql, tuple(params))

    def _exec(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        return self._run(_execute, sql, tuple(params))

    def _cached_row(self, kind: str, key: str, sql: str) -> tuple | None:
        """The row ``sql`` (one ``?``: ``key``) selects, through the connection's read cache (module docstring).

        :meth:`_run` written out: this is every RCPT's path.
        """
        if self._pid != _pid:
            self._forked()
        try:
            # the thread's own dict: getattr(local, "slot", None) raises and catches an
            # AttributeError whenever no lease is held, which is every RCPT's case
            slot = self._local.__dict__.get("slot")
            if slot is not None:
                return _read_through(slot, kind, key, sql)
            slot = self._acquire()
            try:
                return _read_through(slot, kind, key, sql)
            finally:
                self._release(slot)
        except sqlite3.Error as exc:
            raise self._wrapped(exc) from exc

    # -- transactions -----------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; nested uses are savepoints inside the outer one.

        The thread keeps one connection leased for the whole block (nested
        blocks included), so every call inside sees the block's writes; other
        threads use other connections and see only committed data. A nested
        block that raises undoes only its own writes (the exception still
        propagates). Raises StoreUnavailable if the write lock cannot be had
        within the busy timeout or the commit cannot be made durable.
        """
        with self._lease() as slot:
            conn = slot.conn
            depth = slot.depth
            if depth == 0:
                with self._guard():
                    conn.execute("BEGIN IMMEDIATE")
            else:
                with self._guard():
                    conn.execute(f"SAVEPOINT sp{depth}")
            slot.depth = depth + 1
            try:
                yield
            except BaseException:
                slot.depth = depth
                if depth == 0:
                    slot.view.reset(None)
                try:
                    if depth == 0:
                        conn.execute("ROLLBACK")
                    else:
                        conn.execute(f"ROLLBACK TO sp{depth}")
                        conn.execute(f"RELEASE sp{depth}")
                except sqlite3.Error as exc:  # e.g. SQLite already rolled back after SQLITE_FULL
                    log.debug("list store %s: rollback: %s", self.path, exc)
                raise
            slot.depth = depth
            if depth == 0:
                slot.view.reset(None)    # our own commit does not change data_version
                try:
                    with self._guard():
                        conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            else:
                with self._guard():
                    conn.execute(f"RELEASE sp{depth}")

    # -- members ----------------------------------------------------------
    def get_member(self, address: str) -> Member | None:
        """The member with ``address`` (domain case-insensitive), or None (also for a malformed address)."""
        row = self._member_row(address)
        return None if row is None else Member(*row)

    def has_member(self, address: str) -> bool:
        return self._member_row(address) is not None

    def _member_row(self, address: str) -> tuple | None:
        key = _member_key(address)
        return None if key is None else self._cached_row("members", key, _MEMBER_BY_KEY)

    def add_member(self, address: str, display_name: str = "", status: str = "enabled") -> Member:
        bare = _bare_address(address)
        if status not in DELIVERY_STATUSES:
            raise ValueError(f"unknown delivery status {status!r} (one of {', '.join(DELIVERY_STATUSES)})")
        now = clock.now()
        member = Member(address=bare, key=normalize(bare), display_name=display_name or "",
                        delivery_status=status, subscribed_at=now,
                        status_changed_at=None if status == "enabled" else now)
        with self.transaction():
            if self._query("SELECT 1 FROM members WHERE key = ?", (member.key,)):
                raise AlreadyMember(f"{bare} is already a member of {self.list_key}")
            self._exec(f"INSERT INTO members ({', '.join(_MEMBER_COLUMNS)}) VALUES "
                       f"({', '.join('?' * len(_MEMBER_COLUMNS))})", _member_values(member))
        return member

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
        return [_member(r) for r in rows]

    def save_member(self, member: Member) -> None:
        if member.delivery_status not in DELIVERY_STATUSES:
            raise ValueError(f"unknown delivery status {member.delivery_status!r}")
        columns = [c for c in _MEMBER_COLUMNS if c != "key"]
        values = [getattr(member, c) for c in columns]
        with self.transaction():
            cur = self._exec(f"UPDATE members SET {', '.join(f'{c} = ?' for c in columns)} WHERE key = ?",
                             values + [member.key])
            if cur.rowcount == 0:
                raise NotAMember(f"{member.address} is not a member of {self.list_key}")

    def change_address(self, old: str, new: str) -> Member:
        """Move ``old``'s membership, bounce info and evidence to ``new`` (ValueError if malformed)."""
        bare = _bare_address(new)
        new_key = normalize(bare)
        with self.transaction():
            member = self._require(old)
            if new_key != member.key and self._query("SELECT 1 FROM members WHERE key = ?", (new_key,)):
                raise AlreadyMember(f"{bare} is already a member of {self.list_key}")
            self._exec("UPDATE members SET key = ?, address = ? WHERE key = ?", (new_key, bare, member.key))
            self._exec("UPDATE evidence SET member_key = ? WHERE member_key = ?", (new_key, member.key))
        member.key, member.address = new_key, bare
        return member

    def _require(self, address: str) -> Member:
        member = self.get_member(address)
        if member is None:
            raise NotAMember(f"{address} is not a member of {self.list_key}")
        return member

    # -- bounce evidence ---------------------------------------------------
    def add_evidence(self, address: str, message: bytes, at: float) -> None:
        """Keep ``message`` (cut to EVIDENCE_MAX_BYTES) and only the EVIDENCE_KEEP newest per address."""
        key = _member_key(address) or address
        with self.transaction():
            self._exec("INSERT INTO evidence (member_key, at, message) VALUES (?, ?, ?)",
                       (key, at, truncate_evidence(bytes(message))))
            self._exec("DELETE FROM evidence WHERE member_key = ? AND id NOT IN "
                       "(SELECT id FROM evidence WHERE member_key = ? ORDER BY at DESC, id DESC LIMIT ?)",
                       (key, key, EVIDENCE_KEEP))

    def evidence(self, address: str) -> list[tuple[float, bytes]]:
        key = _member_key(address) or address
        rows = self._query("SELECT at, message FROM evidence WHERE member_key = ? ORDER BY at DESC, id DESC",
                           (key,))
        return [(at, bytes(msg)) for at, msg in rows]

    # -- bounce events -------------------------------------------------------
    def add_event(self, event: BounceEvent) -> int:
        """Append ``event`` (address filed under its member key); returns its id."""
        values = [getattr(event, c) for c in _EVENT_COLUMNS[:-1]]
        values[1] = _event_address(event.address)
        with self.transaction():
            cur = self._exec(f"INSERT INTO events ({', '.join(_EVENT_COLUMNS[:-1])}) VALUES "
                             f"({', '.join('?' * (len(_EVENT_COLUMNS) - 1))})", values)
        event.id = cur.lastrowid
        return event.id

    def events(self, address: str | None = None, since: float | None = None,
               limit: int | None = None) -> list[BounceEvent]:
        where, params = [], []
        if address is not None:
            where.append("address = ?")
            params.append(_event_address(address))
        if since is not None:
            where.append("at >= ?")
            params.append(since)
        sql = f"SELECT {', '.join(_EVENT_COLUMNS)} FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY at DESC, id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return [BounceEvent(**dict(zip(_EVENT_COLUMNS, r))) for r in self._query(sql, params)]

    # -- pending records -----------------------------------------------------
    def add_pending(self, type: str, payload: dict[str, Any], lifetime: float) -> PendingRecord:
        """Raises ValueError for an unknown type or a payload JSON cannot hold."""
        if type not in PENDING_TYPES:
            raise ValueError(f"unknown pending type {type!r} (one of {', '.join(PENDING_TYPES)})")
        try:
            text = json.dumps(payload, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"pending payload is not JSON-safe: {exc}") from None
        now = clock.now()
        with self.transaction():
            while True:  # a 128-bit collision is astronomically unlikely, but never overwrite
                token = new_token()
                if not self._query("SELECT 1 FROM pending WHERE token = ?", (token,)):
                    break
            self._exec("INSERT INTO pending (token, type, payload, created, expires) VALUES (?, ?, ?, ?, ?)",
                       (token, type, text, now, now + lifetime))
        return PendingRecord(token=token, type=type, payload=json.loads(text), created=now, expires=now + lifetime)

    def peek_pending(self, token: str) -> PendingRecord | None:
        row = self._cached_row("pending", token, _PENDING_BY_TOKEN)
        return _pending(row) if row is not None and row[4] > clock.now() else None

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
        return _pending(rows[0])

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
        return [_pending(r) for r in rows]

    def pending(self, type: str | None = None) -> list[PendingRecord]:
        now = clock.now()
        if type is None:
            rows = self._query(f"{_PENDING_SELECT} WHERE expires > ? ORDER BY created, rowid", (now,))
        else:
            rows = self._query(f"{_PENDING_SELECT} WHERE type = ? AND expires > ? ORDER BY created, rowid",
                               (type, now))
        return [_pending(r) for r in rows]

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

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close this process's connections; later calls raise StoreUnavailable.

        Idle connections close now. One that another thread holds is not cut
        off: that thread's block (its transaction included) runs to its end,
        and the connection closes when it comes back.
        """
        if self._pid != _pid:
            self._forked()
        self._closed = True
        self._close_idle()


class _Slot:
    """One pooled connection with its read cache and its transaction depth (0: none open).

    ``wal_index``: its database's :class:`_WalIndex` (one per database and process).
    A slot dropped without :meth:`close` (a store nobody closed) still closes its
    connection and leaves the wal-index, when the garbage collector takes it.
    """

    __slots__ = ("conn", "view", "depth", "pid", "wal_index", "_closer", "__weakref__")

    def __init__(self, conn: sqlite3.Connection, wal_index: _WalIndex):
        self.conn = conn
        self.view = _View()
        self.depth = 0
        self.pid = _pid
        self.wal_index = wal_index
        # holds the connection: it is closed by _WalIndex.collected, in order, not by its own finalizer
        self._closer = weakref.finalize(self, wal_index.collected, conn, _pid)
        self._closer.atexit = False

    def close(self) -> None:
        """Close the connection and leave the wal-index (once; a parent's slot in a forked child: nothing)."""
        if self.pid == _pid and self._closer.detach() is not None:
            self.wal_index.close(self.conn)


class _WalIndex:
    """A database's WAL-index file (``DB-shm``) mapped read-only: :meth:`header` tells whether anyone committed.

    The unix VFS keeps the wal-index in ``DB-shm``; its header is two 48-byte
    copies at offset 0, rewritten by every commit (``iChange`` counts
    transactions; a WAL reset changes the salts), so equal header bytes mean
    no commit in between. Source: https://www.sqlite.org/walformat.html
    section 2.1 ("The WAL-Index Header"). A writer writes the second copy,
    then the first, and a reader (``walIndexTryHdr`` in SQLite's wal.c) takes
    the header only when both copies agree: a commit is visible once the
    first copy is written. So a look that still finds the second copy's old
    ``iChange`` was made before the commit became visible, whatever order
    the bytes were read in.

    One mapping per file and process, shared by every store connection to
    the database. Closing a descriptor drops every POSIX lock the process
    holds on the file, SQLite's included (https://www.sqlite.org/howtocorrupt.html
    section 2.2), and while any connection to the database is open in the
    process SQLite keeps using the file it opened first (one per database
    file and process, even when another name is unlinked or made); the last
    connection to close may delete it (https://www.sqlite.org/wal.html), and
    the next one makes a new file. So the descriptor must close exactly when
    the last connection does, and the mapping be made anew with the first
    one after that: every store connection to the database is opened,
    counted (:meth:`attach`) and closed (:meth:`close`) under this object's
    lock (:meth:`held`), one per file (:meth:`of` takes the real path, as
    SQLite does; a connection whose ``PRAGMA database_list`` names another
    file is not mapped). listgate opens its stores only through
    :class:`SQLiteStore`; another SQLite connection to a store file in the
    same process could lose its locks when this one closes. A connection the
    garbage collector takes (:meth:`collected`) is closed under the lock too,
    by the thread that holds it, before it lets go.
    """

    __slots__ = ("path", "users", "fd", "map", "lock", "orphans")

    HEADER_BYTES = 96
    _open: dict[str, _WalIndex] = {}        # real path of DB-shm -> its object (kept: one lock per database)
    _lock = threading.Lock()                # guards _open

    def __init__(self, path: str):
        self.path = path
        self.users = 0                      # connections open, counted under self.lock
        self.fd = -1
        self.map: mmap.mmap | None = None
        self.lock = threading.Lock()
        self.orphans: list[sqlite3.Connection] = []     # collected connections left to close

    @classmethod
    def of(cls, path: str) -> _WalIndex:
        """The object of wal-index file ``path``, a real path (no symlink in it): one per file."""
        with cls._lock:
            index = cls._open.get(path)
            if index is None:
                index = cls._open[path] = cls(path)
        return index

    def attach(self, wal: bool) -> _WalIndex:
        """One more connection, just opened under :attr:`lock`; ``wal``: it is in WAL mode (then map)."""
        self.users += 1
        if wal and self.map is None:
            self._map()
        return self

    def close(self, conn: sqlite3.Connection) -> None:
        """Close ``conn`` (one of this database's connections), then unmap if it was the last."""
        with self.held():
            self._close(conn)

    @contextmanager
    def held(self) -> Iterator[None]:
        """The lock, for opening or closing a connection; collected connections are closed before it is let go."""
        self.lock.acquire()
        try:
            yield
        finally:
            self._unlock()

    def _unlock(self) -> None:
        while True:
            self._close_orphans()
            self.lock.release()
            # a collection that ran after the last look left its connection here: take it back
            if not self.orphans or not self.lock.acquire(blocking=False):
                return

    def collected(self, conn: sqlite3.Connection, pid: int) -> None:
        """A slot holding ``conn`` was garbage collected: close it under :attr:`lock`, now or by its holder."""
        if pid != _pid:
            return      # a parent's connection, in a forked child: never ours to close
        self.orphans.append(conn)
        # the lock may be held, by another thread or by this one (the collector runs anywhere):
        # whoever holds it closes the orphans before letting go
        if self.lock.acquire(blocking=False):
            self._unlock()

    def _close_orphans(self) -> None:
        while self.orphans:
            self._close(self.orphans.pop())

    def _close(self, conn: sqlite3.Connection) -> None:
        try:
            conn.close()
        except sqlite3.Error as exc:
            # maybe still open: keep counting it, so the file stays open (and SQLite's locks with it)
            log.warning("list store %s: closing a connection: %s", self.path, exc)
            return
        self.users -= 1
        if self.users == 0:
            mapping, self.map = self.map, None
            fd, self.fd = self.fd, -1
            if mapping is not None:
                mapping.close()
            if fd >= 0:
                os.close(fd)

    def header(self) -> bytes | None:
        """Both header copies (96 bytes), or None when they cannot be read: then ask SQLite."""
        mapping = self.map
        if mapping is None:
            return None
        header = mapping[:self.HEADER_BYTES]
        # isInit (offset 12) is 1 once SQLite has built the index; anything else: ask SQLite
        return header if header[12] == 1 else None

    def _map(self) -> None:
        if self.fd < 0:
            try:
                self.fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                return
        # kept open even when it cannot be mapped: it may be SQLite's file, and closing it would drop
        # SQLite's locks (it closes with the last connection)
        try:
            st = os.fstat(self.fd)
            if stat.S_ISREG(st.st_mode) and st.st_size >= self.HEADER_BYTES:
                self.map = mmap.mmap(self.fd, self.HEADER_BYTES, mmap.MAP_SHARED, mmap.PROT_READ)
        except (OSError, ValueError):
            pass


def _wal_index_path(conn: sqlite3.Connection) -> str | None:
    """The wal-index file SQLite uses for ``conn``'s main database (its real path + ``-shm``)."""
    for _, name, file in conn.execute("PRAGMA database_list").fetchall():
        if name == "main" and file:
            return os.path.realpath(file) + "-shm"
    return None


def _fetchall(slot: _Slot, sql: str, params: tuple) -> list[tuple]:
    return slot.conn.execute(sql, params).fetchall()


def _execute(slot: _Slot, sql: str, params: tuple) -> sqlite3.Cursor:
    return slot.conn.execute(sql, params)


class _ReadBatch(threading.local):
    """This thread's :func:`read_batch`: ``number`` (None outside one)."""

    number: int | None = None


_read_batch = _ReadBatch()
_read_batch_numbers = itertools.count(1)


class read_batch:
    """``with read_batch():`` cached reads in this thread check freshness (the WAL-index
    header, then ``PRAGMA data_version`` if it moved) once per connection for the whole
    block, at that connection's first lookup in it.

    For a server that answers, in one block, requests that had all arrived
    before the block began (:mod:`listgate.policy.server`: the requests read
    during one event loop turn). Exactness: a connection's check runs inside
    the block, so after every one of those requests arrived; the rows its cache
    then holds are the database at the moment of the check (no other
    connection has committed since they were read), and a row read later in
    the block is from a later moment still. So every answer reflects the
    database at a moment after its request arrived, as a check per lookup would
    (the moment may be a little earlier within the block). Commits made by
    another connection during the block are seen by the next block. The
    connection's own transactions still empty its cache when they end, so the
    next lookup checks again. Blocks nest (the inner one is a new batch);
    other threads are not affected.
    """

    __slots__ = ("_outer",)

    def __enter__(self) -> None:
        self._outer = _read_batch.number
        _read_batch.number = next(_read_batch_numbers)

    def __exit__(self, *exc) -> None:
        _read_batch.number = self._outer


def _read_through(slot: _Slot, kind: str, key: str, sql: str) -> tuple | None:
    """The row ``sql`` selects for ``key``, from ``slot``'s cache while its data_version holds (module docstring)."""
    conn = slot.conn
    if conn.in_transaction:     # must see the transaction's own uncommitted writes
        rows = conn.execute(sql, (key,)).fetchall()
        return rows[0] if rows else None
    view = slot.view
    batch = _read_batch.number
    if batch is None or view.batch != batch:
        # read before the pragma: a commit between the two shows as a changed header next time
        header = slot.wal_index.header()
        if header is None or header != view.header:
            version = conn.execute(_DATA_VERSION).fetchone()[0]
            if view.version != version:
                view.reset(version)
            view.header = header
        view.batch = batch      # checked in this read_batch (None: outside one, check every time)
    cache = view.members if kind == "members" else view.pending
    row = cache.get(key, _MISSING)
    if row is _MISSING:
        rows = conn.execute(sql, (key,)).fetchall()
        row = rows[0] if rows else None
        memo.put(cache, key, row, limit=READ_CACHE_MAX)
    return row


class _View:
    """One connection's read cache: rows by key, valid while ``PRAGMA data_version`` is ``version``.

    ``batch``: the :func:`read_batch` in which ``version`` was last checked (None: none);
    ``header``: the WAL-index header read just before that check (None: none).
    """

    __slots__ = ("version", "batch", "header", "members", "pending")

    def __init__(self):
        self.reset(None)

    def reset(self, version: int | None) -> None:
        self.version = version
        self.batch = None
        self.header: bytes | None = None
        self.members: dict[str, tuple | None] = {}
        self.pending: dict[str, tuple | None] = {}


def _bare_address(address: str) -> str:
    """``address`` as typed, minus angle brackets and surrounding space; ValueError unless valid."""
    bare = (address or "").strip()
    if bare.startswith("<") and bare.endswith(">"):
        bare = bare[1:-1].strip()
    if not valid_address(bare):
        raise ValueError(f"malformed address {address!r}")
    return bare


def _member_values(member: Member) -> list[Any]:
    return [getattr(member, c) for c in _MEMBER_COLUMNS]


assert tuple(Member.__dataclass_fields__) == _MEMBER_COLUMNS, "_member() builds Member positionally"
