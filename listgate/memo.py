"""Bounded memos: dicts that keep what a pure function gave, emptied when full.

Every hot path keeps such memos (what a recipient or sender text is, a
verified VERP, an encoded reply, a store's read cache). One rule for all of
them: a full memo is emptied, not pruned, so a flood of new keys (a
dictionary attack on list addresses) costs one clear per ``limit`` entries
and memory stays bounded, and the next lookups simply fill it again.
"""
from __future__ import annotations

from typing import Any

__all__ = ["put", "put_text", "MAX_ENTRIES", "MAX_TEXT"]

MAX_ENTRIES = 4096      # per memo, unless the memo says otherwise
MAX_TEXT = 512          # longer address texts are not kept (RFC 5321 section 4.5.3.1.3: a path is <= 256 octets)


def put(memo: dict, key: Any, value: Any, limit: int = MAX_ENTRIES) -> None:
    """``memo[key] = value``, after emptying ``memo`` if it holds ``limit`` entries."""
    if len(memo) >= limit:
        memo.clear()
    memo[key] = value


def put_text(memo: dict, text: str, value: Any) -> None:
    """:func:`put` for a memo keyed by an address text; texts over :data:`MAX_TEXT` characters are not kept."""
    if len(text) <= MAX_TEXT:
        put(memo, text, value)
