"""The SQLite backend's schema, how a connection to a list's file is opened, and its errors.

Opening: WAL mode (readers never wait for the writer), ``synchronous=FULL``
(a commit is on disk before we answer the MTA), a busy timeout (a writer waits
that long for the lock, then the caller gets :class:`StoreUnavailable` and
answers 4xx). The schema version lives in ``PRAGMA user_version``;
:data:`MIGRATIONS` brings an older file forward, under the write lock.

Errors: :func:`store_error` turns every ``sqlite3.Error`` into the store
contract's exceptions, so no caller ever sees the driver's.

Sources: https://www.sqlite.org/wal.html, https://www.sqlite.org/pragma.html,
https://www.sqlite.org/rescode.html, https://www.sqlite.org/uri.html (``mode=rw``).
"""
from __future__ import annotations

import sqlite3
import urllib.parse
from typing import Callable

from .base import StoreError, StoreUnavailable
from ..log import events
from .common import folded

log = events("listgate.store")

# SQLite primary result codes meaning "cannot read/write durably now"
# (https://www.sqlite.org/rescode.html): BUSY, LOCKED, NOMEM, READONLY, IOERR,
# CORRUPT, FULL, CANTOPEN, PROTOCOL, NOTADB.
_UNAVAILABLE_CODES = {5, 6, 7, 8, 10, 11, 13, 14, 15, 26}

# each step is an SQL statement, or a function of the connection (data SQL cannot compute)
MIGRATIONS: tuple[tuple[str | Callable[[sqlite3.Connection], object], ...], ...] = (
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
    # version 3: leases (try_lock) for periodic tasks
    (
        """CREATE TABLE leases (
            name TEXT PRIMARY KEY,
            holder TEXT NOT NULL,
            expires REAL NOT NULL
        )""",
    ),
    # version 4: delivery mode (digests), per-member moderation and language (moving from Mailman 2.1)
    (
        "ALTER TABLE members ADD COLUMN delivery_mode TEXT NOT NULL DEFAULT 'regular'",
        "ALTER TABLE members ADD COLUMN moderated INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE members ADD COLUMN language TEXT NOT NULL DEFAULT ''",
    ),
    # version 5: digest collection and numbering (listgate.app.digests)
    (
        """CREATE TABLE digest_posts (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            key TEXT NOT NULL UNIQUE,
            at REAL NOT NULL,
            message BLOB NOT NULL,
            claim TEXT
        )""",
        "CREATE INDEX digest_posts_claim ON digest_posts (claim, id)",
        """CREATE TABLE digest_state (
            one INTEGER PRIMARY KEY CHECK (one = 1),
            volume INTEGER NOT NULL,
            issue INTEGER NOT NULL,
            last_sent REAL,
            claim TEXT,
            claimed_at REAL,
            sent INTEGER NOT NULL DEFAULT 0
        )""",
    ),
    # version 6: members are looked up without case in the local part by default (the list's
    # case_sensitive_local_parts): the folded key, filled here for members made before. Rows
    # that differ only in case stay as they are, both members (ListStore.case_sensitive_local)
    (
        "ALTER TABLE members ADD COLUMN folded TEXT NOT NULL DEFAULT ''",
        lambda conn: conn.executemany("UPDATE members SET folded = ? WHERE key = ?",
                                      [(folded(key), key) for (key,) in conn.execute("SELECT key FROM members")]),
        "CREATE INDEX members_folded ON members (folded, subscribed_at)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)



def store_error(exc: sqlite3.Error, path: str) -> StoreError:
    """``exc`` as the store contract's exception: :class:`StoreUnavailable` if it means
    "cannot read or write durably now" (busy, read-only, full, corrupt, missing, I/O error),
    else :class:`StoreError` (a bug: the caller does not retry)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if (code is not None and (code & 0xFF) in _UNAVAILABLE_CODES) or (
            code is None and isinstance(exc, sqlite3.OperationalError)):
        return StoreUnavailable(f"list store {path}: {exc}")
    return StoreError(f"list store {path}: {exc}")


def connect(path: str, busy_timeout: float, *, create: bool) -> sqlite3.Connection:
    """A new connection to the list database ``path``, in WAL mode, its schema brought up to date.

    ``create``: make the file if it is missing (else a missing file is
    :class:`StoreUnavailable`, so a store file that disappears under a
    running process is not replaced by an empty one). Raises
    :class:`StoreUnavailable` when the file cannot be opened, is not a
    database, or its schema is newer than this code.
    """
    uri = f"file:{urllib.parse.quote(path)}?mode={'rwc' if create else 'rw'}"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=busy_timeout, isolation_level=None,
                               check_same_thread=False)
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"list store {path}: cannot open: {exc}") from None
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            log.warning("store_not_wal", "journal mode is not wal (readers will wait for writers)", store=path, mode=mode)
        conn.execute("PRAGMA synchronous=FULL")
        _migrate(conn, path)
    except sqlite3.Error as exc:
        conn.close()
        raise store_error(exc, path) from None
    except StoreError:
        conn.close()
        raise
    return conn


def _migrate(conn: sqlite3.Connection, path: str) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        return
    if version > SCHEMA_VERSION:
        raise StoreUnavailable(f"list store {path}: schema version {version} is newer than "
                               f"this listgate ({SCHEMA_VERSION}); upgrade listgate")
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Re-read under the write lock: another process may have migrated meanwhile.
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for number in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[number]:
                if callable(statement):
                    statement(conn)
                else:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number + 1}")
            if version:      # a new store is one line (store_created), not one per migration
                log.info("store_migrated", store=path, version=number + 1)
        conn.execute("COMMIT")
        if not version:
            log.info("store_created", store=path, schema=SCHEMA_VERSION)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
