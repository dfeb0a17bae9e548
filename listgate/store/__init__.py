"""Per-list stores. ``open_store(site, list_key)`` is the only way callers get one.

CONTRACT: ``open_store(site, list_key) -> ListStore`` returns the (process-wide
cached) store for list ``"name@domain"``. The site config's ``store`` picks the
backend: the embedded default is one SQLite database per list at
``STATE_DIR/lists/NAME@DOMAIN.db`` (``listgate.store.sqlite``); with
``store.url`` every list lives in one shared PostgreSQL database
(``listgate.store.postgres``, for several MX hosts). Raises ``KeyError`` for a
list the site does not define, ``StoreUnavailable`` when the database cannot
be opened. Only this module names a backend: callers see :mod:`listgate.store.base`.
"""
from __future__ import annotations

import os
import sys
import threading

from .base import (AlreadyMember, BounceEvent, DELIVERY_MODES, DELIVERY_STATUSES, DigestPost, DigestState, ListStore,
                   Member, NotAMember, PENDING_TYPES, PendingRecord, StoreError, StoreUnavailable, UnknownEvent, UnknownToken)

__all__ = ["AlreadyMember", "BounceEvent", "DELIVERY_MODES", "DELIVERY_STATUSES", "DigestPost", "DigestState",
           "ListStore", "Member", "NotAMember",
           "PENDING_TYPES", "PendingRecord", "StoreError", "StoreUnavailable", "UnknownEvent", "UnknownToken",
           "close_all", "describe", "exists", "init_schema", "open_store", "purge", "store_path"]

_cache: dict[str, ListStore] = {}
_cache_pid = os.getpid()
_cache_lock = threading.Lock()


def store_path(site, list_key: str) -> str:
    """``STATE_DIR/lists/NAME@DOMAIN.db`` for ``list_key`` (lower case)."""
    return os.path.join(site.state_dir, "lists", f"{list_key.lower()}.db")


def open_store(site, list_key: str) -> ListStore:
    """The store of list ``list_key`` (``"name@domain"``), cached per process and per database file.

    After ``fork()`` the child gets fresh stores (never its parent's SQLite
    connections). Raises KeyError for a list ``site`` does not define and
    StoreUnavailable when the database cannot be opened. The store matches member addresses
    by the case rule of the list as ``site`` configures it
    (:attr:`~listgate.store.base.ListStore.case_sensitive_local`).
    """
    global _cache_pid
    key = list_key.lower()
    if key not in site.lists:
        raise KeyError(list_key)
    url = site.conf.store.url
    path = f"{url} {key}" if url else store_path(site, key)
    with _cache_lock:
        if _cache_pid != os.getpid():
            _cache.clear()  # the parent's stores hold the parent's connections
            _cache_pid = os.getpid()
        store = _cache.get(path)
        if (store is None or store.closed) and url:
            from .postgres import PostgresStore
            store = _cache[path] = PostgresStore(site.conf.store, key)
        elif store is None or store.closed:
            from .sqlite import SQLiteStore
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
            except OSError as exc:
                raise StoreUnavailable(f"cannot create {os.path.dirname(path)}: {exc.strerror}") from None
            store = SQLiteStore(path, key, busy_timeout=site.conf.store.busy_timeout)
            _cache[path] = store
        # the case rule of the configuration asked with: a reloaded one takes effect at once
        store.case_sensitive_local = bool(site.lists[key].case_sensitive_local_parts)
        return store


def exists(site, list_key: str) -> bool:
    """Whether list ``list_key`` has a store yet (a SQLite file is made on first use; a PostgreSQL
    store always exists). Lets read-only commands skip a list instead of creating its store."""
    return bool(site.conf.store.url) or os.path.exists(store_path(site, list_key))


def describe(site, list_key: str) -> str:
    """Where list ``list_key``'s state is, for a person: the SQLite file, or the PostgreSQL database."""
    url = site.conf.store.url
    if url:
        from ..config import mask_url
        return f"the rows of {list_key.lower()} in {mask_url(url)}"
    return store_path(site, list_key)


def purge(site, list_key: str) -> str:
    """Delete list ``list_key``'s whole state (members, bounce info, events, pending records, digests);
    returns what was deleted (:func:`describe`). The list need not be in ``site.lists`` any more.

    SQLite: the database file with its ``-wal``/``-shm``/``-journal`` companions. PostgreSQL: the
    list's rows, in one transaction (:mod:`listgate.store.copy` writes the list empty). Raises
    StoreUnavailable (nothing deleted) or OSError.
    """
    key = list_key.lower()
    url = site.conf.store.url
    what = describe(site, key)
    with _cache_lock:
        stale = [path for path, store in _cache.items() if store.list_key == key]
        stores = [_cache.pop(path) for path in stale]
    for store in stores:
        store.close()
    if url:
        from .copy import empty_list
        empty_list(site.conf.store, key)
        return what
    path = store_path(site, key)
    for name in (path, path + "-wal", path + "-shm", path + "-journal"):
        try:
            os.unlink(name)
        except FileNotFoundError:
            pass
    return what


def close_all() -> None:
    """Close every store this process opened (tests, daemon shutdown)."""
    with _cache_lock:
        stores = list(_cache.values())
        _cache.clear()
    for store in stores:
        store.close()
    pools = sys.modules.get(f"{__name__}.postgres_pool")   # imported only by a site that uses it
    if pools is not None:
        pools.close_databases()


def init_schema(store_conf) -> list[int]:
    """``listgate store init``: create or bring forward the schema of ``store_conf``'s database;
    the versions applied (none for SQLite, whose files are made on first use). Raises StoreUnavailable."""
    if not store_conf.url:
        return []
    from .postgres_pool import init
    return init(store_conf)
