"""Moving an instance's list state between its SQLite files and a PostgreSQL database.

``listgate store copy --to postgresql://...`` copies every list of the site
from ``STATE_DIR/lists/NAME@DOMAIN.db`` into PostgreSQL; ``--from
postgresql://... --to sqlite`` copies back, so an admin can try PostgreSQL and
return. What is copied: members with their bounce info, evidence, events,
pending records (same tokens: probes and confirmations in flight stay
valid), remembered facts (duplicate suppression) and the digest's collected
posts and numbering. Leases are not: they
belong to the runners of the moment.

Idempotent: each list's rows at the destination are replaced, in one
transaction per list, by the source's; copying twice gives the same result.
After each list the rows of every table are counted on both sides; a
difference is an error (nothing else is checked twice). Run it with the
daemons stopped (or the MTA deferring mail): changes made meanwhile at the
source are not carried over.
"""
from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field

import psycopg

from ..config import mask_url
from .base import StoreError, StoreUnavailable
from .common import (DIGEST_POST_COLUMNS, DIGEST_STATE_COLUMNS, EVENT_COLUMNS, PENDING_COLUMNS,
                     STORED_MEMBER_COLUMNS, clean_text)
from .postgres_pool import connect_kwargs
from .postgres_schema import LOCK_LIST, migrate, store_error
from .sqlite_schema import connect as sqlite_connect
from .sqlite_schema import store_error as sqlite_store_error

# table -> (columns copied, order of copying at the source: SQLite, PostgreSQL)
TABLES: dict[str, tuple[tuple[str, ...], str, str]] = {
    "members": (STORED_MEMBER_COLUMNS, "key", "key"),
    "evidence": (("member_key", "at", "message"), "id", "id"),
    "events": (EVENT_COLUMNS[:-1], "id", "id"),
    "pending": (PENDING_COLUMNS, "created, rowid", "created, seq"),
    "remembered": (("kind", "key", "expires", "owner"), "kind, key", "kind, key"),
    "digest_posts": (DIGEST_POST_COLUMNS[:-1], "id", "id"),
    "digest_state": (DIGEST_STATE_COLUMNS, "volume", "volume"),
}


@dataclass
class CopyReport:
    """Rows copied per list and table: ``counts[list_key][table]``."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)


class _SQLiteSide:
    """The instance's SQLite files (made, with their schema, when written to)."""

    def __init__(self, site, busy_timeout: float):
        from . import store_path
        self.path = lambda key: store_path(site, key)
        self.busy_timeout = busy_timeout

    def read(self, key: str) -> dict[str, list[tuple]]:
        path = self.path(key)
        if not os.path.exists(path):
            return {table: [] for table in TABLES}
        conn = sqlite_connect(path, self.busy_timeout, create=False)
        try:
            return {table: conn.execute(f"SELECT {', '.join(cols)} FROM {table} ORDER BY {order}").fetchall()
                    for table, (cols, order, _) in TABLES.items()}
        except sqlite3.Error as exc:
            raise sqlite_store_error(exc, path) from None
        finally:
            conn.close()

    def write(self, key: str, rows: dict[str, list[tuple]]) -> dict[str, int]:
        path = self.path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        conn = sqlite_connect(path, self.busy_timeout, create=True)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for table, (cols, _, _) in TABLES.items():
                    conn.execute(f"DELETE FROM {table}")
                    conn.executemany(f"INSERT INTO {table} ({', '.join(cols)}) VALUES "
                                     f"({', '.join('?' * len(cols))})", rows[table])
                counts = {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in TABLES}
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return counts
        except sqlite3.Error as exc:
            raise sqlite_store_error(exc, path) from None
        finally:
            conn.close()


class _PostgresSide:
    """One PostgreSQL database (its schema made or brought forward first)."""

    def __init__(self, conf):
        self.where = f"PostgreSQL store {mask_url(conf.url)}"
        try:
            self.conn = psycopg.connect(conf.url, **connect_kwargs(conf))
            migrate(self.conn)
        except psycopg.Error as exc:
            raise store_error(exc, self.where) from None
        except OSError as exc:
            raise StoreUnavailable(f"{self.where}: cannot read the password file: {exc.strerror}") from None

    def read(self, key: str) -> dict[str, list[tuple]]:
        try:
            return {table: self.conn.execute(f"SELECT {', '.join(cols)} FROM {table} WHERE list_key = %s "
                                             f"ORDER BY {order}", (key,)).fetchall()
                    for table, (cols, _, order) in TABLES.items()}
        except psycopg.Error as exc:
            raise store_error(exc, self.where) from None

    def write(self, key: str, rows: dict[str, list[tuple]]) -> dict[str, int]:
        try:
            with self.conn.transaction():
                self.conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LOCK_LIST, key))
                counts = {}
                with self.conn.cursor() as cur:
                    for table, (cols, _, _) in TABLES.items():
                        cur.execute(f"DELETE FROM {table} WHERE list_key = %s", (key,))
                        # COPY: one stream per table, not a statement per row (100,000 members in seconds)
                        with cur.copy(f"COPY {table} (list_key, {', '.join(cols)}) FROM STDIN") as stream:
                            for row in rows[table]:
                                stream.write_row((key, *(_pg_value(c, v) for c, v in zip(cols, row))))
                        counts[table] = cur.execute(f"SELECT count(*) FROM {table} WHERE list_key = %s",
                                                    (key,)).fetchone()[0]
            return counts
        except psycopg.Error as exc:
            raise store_error(exc, self.where) from None

    def close(self) -> None:
        self.conn.close()


def empty_list(conf, key: str) -> None:
    """Delete every row of list ``key`` from the PostgreSQL store ``conf`` (``listgate lists remove
    --purge``): the list written empty, in one transaction. Raises StoreUnavailable."""
    side = _PostgresSide(conf)
    try:
        side.write(key, {table: [] for table in TABLES})
    finally:
        side.close()


def _pg_value(column: str, value):
    """A value read from either side as PostgreSQL takes it (SQLite keeps booleans as 0/1)."""
    if column in ("moderated", "sent"):
        return bool(value)
    return clean_text(value) if isinstance(value, str) else value


def copy(site, source_conf, target_conf, progress=None) -> CopyReport:
    """Copy every list of ``site`` from ``source_conf`` to ``target_conf``; the rows per list and table.

    Each ``*_conf`` is a store config: with ``url`` PostgreSQL, without it the
    site's SQLite files. Raises StoreUnavailable when a side cannot be used,
    StoreError when the counts differ after a list was written.
    """
    sides = []
    try:
        for conf in (source_conf, target_conf):
            sides.append(_PostgresSide(conf) if conf.url else _SQLiteSide(site, conf.busy_timeout))
        source, target = sides
        report = CopyReport()
        for key in sorted(site.lists):
            rows = source.read(key)
            counts = target.write(key, rows)
            expected = {table: len(rows[table]) for table in TABLES}
            if counts != expected:
                raise StoreError(f"{key}: copied {expected} rows but the destination holds {counts}")
            report.counts[key] = counts
            if progress:
                progress(key, counts)
        return report
    finally:
        for side in sides:
            if isinstance(side, _PostgresSide):
                side.close()
