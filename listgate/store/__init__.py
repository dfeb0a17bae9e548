"""Per-list stores. ``open_store(site, list_key)`` is the only way callers get one.

CONTRACT: ``open_store(site, list_key) -> ListStore`` returns the (process-wide
cached) store for list ``"name@domain"``; the embedded backend is one SQLite
database per list at ``STATE_DIR/lists/NAME@DOMAIN.db``
(implemented in ``listgate.store.sqlite``). Raises ``KeyError`` for a list the
site does not define, ``StoreUnavailable`` when the database cannot be opened.
"""
from .base import (AlreadyMember, BounceEvent, DELIVERY_STATUSES, ListStore, Member, NotAMember,
                   PENDING_TYPES, PendingRecord, StoreError, StoreUnavailable, UnknownToken)

__all__ = ["AlreadyMember", "BounceEvent", "DELIVERY_STATUSES", "ListStore", "Member", "NotAMember",
           "PENDING_TYPES", "PendingRecord", "StoreError", "StoreUnavailable", "UnknownToken", "open_store"]
