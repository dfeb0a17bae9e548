"""The PostgreSQL backend's schema, its migrations, and its errors.

Every list shares one set of tables; each row carries its ``list_key``
(``name@domain``, lower case) and every index starts with it, so one list's
reads and writes never scan or lock another's rows. Pending tokens are the
primary key of ``pending`` on their own: unique site-wide, whichever host
made them.

Migrations are forward only: :data:`MIGRATIONS` ``[n]`` brings the schema from
version ``n`` to ``n + 1``; ``listgate_schema`` holds one row per version
applied. :func:`migrate` (``listgate store init``) applies what is missing
under an advisory lock, so two hosts running it at once do it once. The
daemons never change the schema (their role may lack the right to): a
database whose version differs from this code's is :class:`StoreUnavailable`.

Errors: :func:`store_error` turns every psycopg error into the store
contract's exceptions by SQLSTATE class
(https://www.postgresql.org/docs/current/errcodes-appendix.html).
"""
from __future__ import annotations

from typing import Callable

import psycopg

from .base import DELIVERY_MODES, DELIVERY_STATUSES, PENDING_TYPES, StoreError, StoreUnavailable
from ..log import events
from .common import folded

log = events("listgate.store")

# advisory lock keys (pg_advisory_xact_lock(int, int)): the first int says whose lock it is
LOCK_MIGRATE = (0x4C47, 0)        # 'LG', 0: schema migration
LOCK_LIST = 0x4C48                # (LOCK_LIST, hashtext(list_key)): a list's write lock

_IN = {"statuses": ", ".join(f"'{s}'" for s in DELIVERY_STATUSES),
       "types": ", ".join(f"'{t}'" for t in PENDING_TYPES),
       "modes": ", ".join(f"'{m}'" for m in DELIVERY_MODES)}

def _fill_folded(conn: psycopg.Connection) -> None:
    """Version 4's data step: each member's folded key, computed as the store computes it
    (Python's lower case, not the server's locale)."""
    rows = conn.execute("SELECT list_key, key FROM members").fetchall()
    with conn.cursor() as cur:
        cur.executemany("UPDATE members SET folded = %s WHERE list_key = %s AND key = %s",
                        [(folded(key), list_key, key) for list_key, key in rows])


# each step is an SQL statement, or a function of the connection (data SQL cannot compute)
MIGRATIONS: tuple[tuple[str | Callable[[psycopg.Connection], object], ...], ...] = (
    # version 1
    (
        f"""CREATE TABLE members (
            list_key text NOT NULL,
            key text COLLATE "C" NOT NULL,
            address text NOT NULL,
            display_name text NOT NULL DEFAULT '',
            delivery_status text NOT NULL DEFAULT 'enabled' CHECK (delivery_status IN ({_IN['statuses']})),
            subscribed_at double precision NOT NULL,
            status_changed_at double precision,
            bounce_score double precision NOT NULL DEFAULT 0,
            last_bounce_day text,
            last_bounce_at double precision,
            notices_left integer,
            last_notice_at double precision,
            re_enable_token text,
            PRIMARY KEY (list_key, key)
        )""",
        "CREATE INDEX members_status ON members (list_key, delivery_status, key)",
        """CREATE TABLE evidence (
            id bigserial PRIMARY KEY,
            list_key text NOT NULL,
            member_key text NOT NULL,
            at double precision NOT NULL,
            message bytea NOT NULL
        )""",
        "CREATE INDEX evidence_member ON evidence (list_key, member_key, at)",
        """CREATE TABLE events (
            id bigserial PRIMARY KEY,
            list_key text NOT NULL,
            at double precision NOT NULL,
            address text,
            bounce_class text NOT NULL,
            status text,
            attribution text NOT NULL DEFAULT '',
            message_id text,
            action text NOT NULL DEFAULT '',
            detail text NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX events_address ON events (list_key, address, at)",
        "CREATE INDEX events_at ON events (list_key, at)",
        f"""CREATE TABLE pending (
            token text PRIMARY KEY,
            list_key text NOT NULL,
            type text NOT NULL CHECK (type IN ({_IN['types']})),
            payload text NOT NULL,
            created double precision NOT NULL,
            expires double precision NOT NULL,
            seq bigserial NOT NULL
        )""",
        "CREATE INDEX pending_expires ON pending (list_key, expires)",
        "CREATE INDEX pending_type ON pending (list_key, type, created, seq)",
        """CREATE TABLE remembered (
            list_key text NOT NULL,
            kind text NOT NULL,
            key text NOT NULL,
            expires double precision NOT NULL,
            owner text,
            PRIMARY KEY (list_key, kind, key)
        )""",
        "CREATE INDEX remembered_expires ON remembered (list_key, expires)",
        """CREATE TABLE leases (
            list_key text NOT NULL,
            name text NOT NULL,
            holder text NOT NULL,
            expires double precision NOT NULL,
            PRIMARY KEY (list_key, name)
        )""",
    ),
    # version 2: delivery mode (digests), per-member moderation and language (moving from Mailman 2.1)
    (
        f"""ALTER TABLE members
            ADD COLUMN delivery_mode text NOT NULL DEFAULT 'regular' CHECK (delivery_mode IN ({_IN['modes']})),
            ADD COLUMN moderated boolean NOT NULL DEFAULT false,
            ADD COLUMN language text NOT NULL DEFAULT ''""",
    ),
    # version 3: digest collection and numbering (listgate.app.digests)
    (
        """CREATE TABLE digest_posts (
            id bigserial PRIMARY KEY,
            list_key text NOT NULL,
            key text NOT NULL,
            at double precision NOT NULL,
            message bytea NOT NULL,
            claim text,
            UNIQUE (list_key, key)
        )""",
        "CREATE INDEX digest_posts_claim ON digest_posts (list_key, claim, id)",
        """CREATE TABLE digest_state (
            list_key text PRIMARY KEY,
            volume integer NOT NULL,
            issue integer NOT NULL,
            last_sent double precision,
            claim text,
            claimed_at double precision,
            sent boolean NOT NULL DEFAULT false
        )""",
    ),
    # version 4: members are looked up without case in the local part by default (the list's
    # case_sensitive_local_parts): the folded key, filled here for members made before. Rows
    # that differ only in case stay as they are, both members (ListStore.case_sensitive_local)
    (
        """ALTER TABLE members ADD COLUMN folded text COLLATE "C" NOT NULL DEFAULT ''""",
        _fill_folded,
        "ALTER TABLE members ALTER COLUMN folded DROP DEFAULT",
        "CREATE INDEX members_folded ON members (list_key, folded, subscribed_at)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)
TABLES = ("members", "evidence", "events", "pending", "remembered", "leases", "digest_posts", "digest_state")

_SCHEMA_TABLE = """CREATE TABLE IF NOT EXISTS listgate_schema (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""

# SQLSTATE classes meaning "cannot read or write durably now": 08 connection exception,
# 40 transaction rollback (serialization failure, deadlock), 53 insufficient resources
# (disk full, out of memory, too many connections), 55 object not in prerequisite state
# (lock not available: lock_timeout), 57 operator intervention (statement_timeout, admin
# shutdown, cannot connect now), 58 system error (I/O), XX internal error (data corrupted);
# and 25006 read_only_sql_transaction (a standby after a failover).
_UNAVAILABLE_CLASSES = {"08", "40", "53", "55", "57", "58", "XX"}
_UNAVAILABLE_STATES = {"25006"}


def store_error(exc: Exception, where: str) -> StoreError:
    """``exc`` (a psycopg or psycopg_pool error) as the contract's exception.

    :class:`StoreUnavailable` for "cannot now" (the SQLSTATE classes above, or
    an error with no SQLSTATE at all: the server is unreachable, the
    connection broke, no pooled connection came in time); else
    :class:`StoreError` (a bug: the caller does not retry).
    """
    state = getattr(exc, "sqlstate", None)
    if state is None:
        if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
            return StoreUnavailable(f"{where}: {_first_line(exc)}")
        return StoreError(f"{where}: {_first_line(exc)}")
    if state[:2] in _UNAVAILABLE_CLASSES or state in _UNAVAILABLE_STATES:
        return StoreUnavailable(f"{where}: {_first_line(exc)}")
    return StoreError(f"{where}: {_first_line(exc)}")


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def schema_version(conn: psycopg.Connection) -> int:
    """The version recorded in ``listgate_schema`` (0 when the table does not exist)."""
    if conn.execute("SELECT to_regclass('listgate_schema')").fetchone()[0] is None:
        return 0
    return conn.execute("SELECT coalesce(max(version), 0) FROM listgate_schema").fetchone()[0]


def check_schema(conn: psycopg.Connection, where: str) -> None:
    """StoreUnavailable unless the database holds exactly this code's schema version."""
    version = schema_version(conn)
    if version == SCHEMA_VERSION:
        return
    if version > SCHEMA_VERSION:
        raise StoreUnavailable(f"{where}: schema version {version} is newer than this listgate "
                               f"({SCHEMA_VERSION}); upgrade listgate")
    raise StoreUnavailable(f"{where}: schema version {version}, this listgate needs {SCHEMA_VERSION}: "
                           f"run 'listgate store init'")


def migrate(conn: psycopg.Connection) -> list[int]:
    """Apply the missing migrations in one transaction; the versions applied (none: up to date).

    Raises StoreUnavailable for a schema newer than this code.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", LOCK_MIGRATE)
        conn.execute(_SCHEMA_TABLE)
        version = schema_version(conn)
        if version > SCHEMA_VERSION:
            raise StoreUnavailable(f"schema version {version} is newer than this listgate ({SCHEMA_VERSION})")
        applied = []
        for number in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[number]:
                if callable(statement):
                    statement(conn)
                else:
                    conn.execute(statement)
            conn.execute("INSERT INTO listgate_schema (version) VALUES (%s)", (number + 1,))
            applied.append(number + 1)
            if version:      # a new store is one line (store_created), not one per migration
                log.info("store_migrated", store="postgresql", version=number + 1)
    if version == 0 and applied:
        log.info("store_created", store="postgresql", schema=SCHEMA_VERSION)
    return applied
