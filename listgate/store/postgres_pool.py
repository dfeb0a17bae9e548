"""How the PostgreSQL store connects: one psycopg_pool pool per process and store config.

Every list's :class:`~listgate.store.postgres.PostgresStore` in a process
shares its pool. The pool checks a connection before handing it out and
replaces broken ones, so after the server restarts or fails over the next
call works again, with no restart of listgate. Waits are bounded by the
store config: ``connect_timeout`` for a connection (connecting, or waiting
for a busy pool), ``busy_timeout`` for a list's write lock (PostgreSQL's
``lock_timeout``), ``statement_timeout`` for any statement, all set per
connection here.

Fork: a child process never uses its parent's pool (libpq forbids sharing a
connection across processes, https://www.postgresql.org/docs/current/libpq-connect.html);
it opens its own and keeps a reference to the parent's, so the parent's
connections are neither used nor closed by the child.

Credentials: the password is read from ``password_file`` at each connect and
never logged; messages name the URL with any password masked
(:func:`listgate.config.mask_url`).
"""
from __future__ import annotations

import os
import threading
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from ..config import mask_url
from .base import StoreUnavailable
from .postgres_schema import migrate, store_error


class _Database:
    """A process's pool for one store config, and whether its schema was found current."""

    def __init__(self, conf):
        self.where = f"PostgreSQL store {mask_url(conf.url)}"
        self.schema_ok = False
        self.pool = ConnectionPool(
            conf.url, min_size=conf.pool.min, max_size=conf.pool.max, kwargs=lambda: connect_kwargs(conf),
            timeout=conf.connect_timeout, check=ConnectionPool.check_connection, open=False, name="listgate",
            # the pool's own retries (with growing back-off) stop after connect_timeout; the next
            # caller then starts a fresh attempt, so a server that is back is used at once
            reconnect_timeout=conf.connect_timeout)
        self.pool.open(wait=False)          # a server down at start-up: callers get 4xx until it is up


_databases: dict[tuple, _Database] = {}
_databases_pid = os.getpid()
_inherited: list[_Database] = []            # the parent's pools, kept so the child never closes them
_databases_lock = threading.Lock()


def connect_kwargs(conf) -> dict[str, Any]:
    """libpq parameters for a new connection (https://www.postgresql.org/docs/current/libpq-connect.html).

    The password comes from ``conf.password_file`` (read now, so a changed
    password needs no restart); raises OSError if that file cannot be read.
    """
    options = (f"-c statement_timeout={int(conf.statement_timeout * 1000)} "
               f"-c lock_timeout={int(conf.busy_timeout * 1000)}")
    kwargs: dict[str, Any] = {"autocommit": True, "application_name": "listgate", "options": options,
                              "connect_timeout": max(1, round(conf.connect_timeout))}
    if conf.password_file:
        with open(conf.password_file, encoding="utf-8") as fh:
            kwargs["password"] = fh.read().strip("\r\n")
    return kwargs


def database(conf) -> _Database:
    """This process's :class:`_Database` for store config ``conf`` (made on first use)."""
    global _databases_pid
    key = (conf.url, conf.password_file, conf.pool.min, conf.pool.max, conf.connect_timeout,
           conf.statement_timeout, conf.busy_timeout)
    with _databases_lock:
        if _databases_pid != os.getpid():
            _inherited.extend(_databases.values())
            _databases.clear()
            _databases_pid = os.getpid()
        db = _databases.get(key)
        if db is None:
            db = _databases[key] = _Database(conf)
        return db


def close_databases() -> None:
    """Close every pool this process opened (tests, daemon shutdown)."""
    with _databases_lock:
        mine = list(_databases.values()) if _databases_pid == os.getpid() else []
        _databases.clear()
    for db in mine:
        db.pool.close(timeout=5)


def init(conf) -> list[int]:
    """Create or bring forward the schema (``listgate store init``); the versions applied.

    Connects on its own (no pool) with the site's credentials; the role needs
    the right to create tables in the database. Raises StoreUnavailable.
    """
    where = f"PostgreSQL store {mask_url(conf.url)}"
    try:
        with psycopg.connect(conf.url, **connect_kwargs(conf)) as conn:
            return migrate(conn)
    except psycopg.Error as exc:
        raise store_error(exc, where) from None
    except OSError as exc:
        raise StoreUnavailable(f"{where}: cannot read the password file: {exc.strerror}") from None
