"""The one bounded-memo rule (listgate.memo): a full memo is emptied, long texts are not kept."""
from __future__ import annotations

from listgate import memo


def test_a_full_memo_is_emptied_before_the_new_entry():
    kept: dict = {}
    for i in range(3):
        memo.put(kept, i, str(i), limit=3)
    assert kept == {0: "0", 1: "1", 2: "2"}
    memo.put(kept, 3, "3", limit=3)
    assert kept == {3: "3"}
    memo.put(kept, 3, "again", limit=3)             # an existing key in a memo below its limit: replaced
    assert kept == {3: "again"}


def test_texts_over_the_limit_are_not_kept():
    kept: dict = {}
    memo.put_text(kept, "a" * memo.MAX_TEXT, 1)
    memo.put_text(kept, "b" * (memo.MAX_TEXT + 1), 2)
    assert list(kept.values()) == [1]
