"""Retried SMTP transactions: stored twice at SMTP time, handled once by the runner.

Real routing and end-of-message core (``listgate.inject``), real qfiles, real
SQLite stores, the real runner delivering to a real SMTP sink.
"""
from __future__ import annotations

import threading

import pytest
from runner_helpers import LIST, OWNER, Env

from listgate import clock, inject
from listgate.routing import decide_rcpt
from listgate.runner import duplicates

MSG = (b"From: Alice <a@one.test>\r\nTo: demo@lists.example.org\r\nSubject: hi\r\n"
       b"Message-ID: <i1@one.test>\r\n\r\nbody \xff\x00 bytes\r\n")


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    e.members("a@one.test", "b@two.test")
    yield e
    e.close()


def smtp(env, msg=MSG, sender="a@one.test", rcpts=(LIST,)):
    """One SMTP transaction as the milter ends it: routed, then stored."""
    routed = [inject.Routed(f"<{r}>", decide_rcpt(env.site, r, sender=sender)) for r in rcpts]
    return inject.store_message(env.site, msg, sender, routed)


def posted(env, rcpt="b@two.test") -> int:
    return len(env.sink.messages_for(rcpt))


def test_retried_transaction_is_stored_twice_and_posted_once(env):
    first, again = smtp(env), smtp(env)
    assert [first[0].outcome, again[0].outcome] == ["queued", "queued"]
    assert len(env.queue("in").ids()) == 2
    env.run()
    assert posted(env) == 1
    assert env.queue("in").ids() == [] and env.queue("shunt").ids() == []


def test_duplicate_within_window_only(env):
    clock.freeze(1_800_000_000.0)
    smtp(env)
    env.run()
    clock.advance(env.site.conf.milter.duplicate_window - 1)
    smtp(env)
    env.run()
    assert posted(env) == 1
    clock.advance(2)
    smtp(env)
    env.run()
    assert posted(env) == 2


def test_duplicate_is_per_role(env):
    smtp(env, rcpts=(LIST, "demo-owner@lists.example.org"))
    smtp(env, rcpts=("demo-owner@lists.example.org", LIST))
    env.run()
    assert posted(env) == 1 and posted(env, OWNER) == 1
    smtp(env, rcpts=("demo-owner@lists.example.org",))   # owner mail of a new message is new
    env.run()
    assert posted(env, OWNER) == 1


def test_retry_without_message_id_is_recognised_by_content(env):
    body = b"From: a@one.test\r\nDate: Sun, 29 Nov 2026 09:00:00 +0000\r\nSubject: s\r\n\r\ntext\r\n"
    first = b"Received: from x by mx id AAA1\r\n" + body
    retry = b"Received: from x by mx id BBB2\r\n" + body
    assert duplicates.message_key(first) == duplicates.message_key(retry)
    assert duplicates.message_key(first) != duplicates.message_key(body.replace(b"text", b"other"))
    smtp(env, first)
    smtp(env, retry)
    smtp(env, body.replace(b"text", b"other"))
    env.run()
    assert posted(env) == 2


def test_same_message_from_another_envelope_sender_is_not_a_duplicate(env):
    """A retry comes from the same sender; someone else reusing a Message-ID
    (or identical bytes) cannot suppress the post."""
    env.members("mallory@three.test")
    smtp(env)
    smtp(env, sender="mallory@three.test")
    smtp(env, sender="A@one.test")        # the same sender, other case: a retry
    env.run()
    assert posted(env) == 2


def test_replayed_qfile_is_not_a_duplicate_of_itself(env):
    """A runner that crashed after recording the acceptance handles the same
    qfile again: it is still the first copy; another copy is not."""
    smtp(env)
    smtp(env)
    board = env.queue("in")
    one, two = board.dequeue(), board.dequeue()
    assert duplicates.first_acceptance(env.site, env.lc, one)
    assert duplicates.first_acceptance(env.site, env.lc, one)
    assert not duplicates.first_acceptance(env.site, env.lc, two)
    board.release(one)
    board.release(two)


def test_racing_copies_have_one_winner(env):
    """Two runners (threads, one store file) take the two copies at once."""
    for _ in range(2):
        smtp(env)
    board = env.queue("in")
    copies = [board.dequeue(), board.dequeue()]
    start = threading.Barrier(2)
    results = []

    def take(qf):
        start.wait()
        results.append(duplicates.first_acceptance(env.site, env.lc, qf))

    threads = [threading.Thread(target=take, args=(qf,)) for qf in copies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False, True]


def test_message_ids_differing_in_8bit_bytes_are_two_messages(env):
    """RFC 6532 allows UTF-8 in a Message-ID: its bytes are compared, not a lossy decoding."""
    one = MSG.replace(b"<i1@one.test>", "<ä.1@bücher.example>".encode())
    two = MSG.replace(b"<i1@one.test>", "<ö.1@bücher.example>".encode())
    latin = MSG.replace(b"<i1@one.test>", b"<\xe4.1@b\xfccher.example>")
    keys = {duplicates.message_key(m) for m in (one, two, latin)}
    assert len(keys) == 3
    for m in (one, two, latin, one):
        smtp(env, m)
    env.run()
    assert posted(env) == 3 and env.queue("shunt").ids() == []


def test_8bit_envelope_sender_and_huge_message_id_are_handled(env):
    """Keys the store cannot hold as text (surrogate escapes of 8-bit bytes) or
    would bloat it are stored as digests: no shunt, and the retry is still dropped."""
    env.edit_list("posting_policy: open")
    for _ in range(2):
        smtp(env, sender="caf\udce9@example.com")
    # folded over lines that SMTP can carry (RFC 5321 section 4.5.3.1.6: 998 octets)
    huge = MSG.replace(b"<i1@one.test>", b"<" + b"\r\n ".join([b"x" * 900] * 4) + b"@one.test>")
    for _ in range(2):
        smtp(env, huge)
    env.run()
    assert env.queue("shunt").ids() == [] and env.queue("in").ids() == []
    assert posted(env) == 2
    board = env.queue("in")
    qid = board.enqueue(huge, {"list": LIST, "role": "post", "envelope_sender": "a@one.test"})
    key = duplicates.duplicate_key(board.peek(qid).meta, huge)
    assert key.startswith("sha256:") and len(key) < 100


def test_qfiles_stored_before_the_upgrade_are_posted(env):
    """listgate 0.1's milter looked duplicates up at SMTP time and recorded the
    acceptance without an owner, writing ``message_key`` into the qfile: such
    a qfile still waiting at the upgrade is posted, a later copy is not."""
    key = duplicates.message_key(MSG)
    env.store.remember(duplicates.ACCEPTED_KIND, f"post::a@one.test:{key}", 3600)   # 0.1's record
    env.inject(MSG, sender="a@one.test")
    board = env.queue("in")
    [qid] = board.ids()
    qf = board.take(qid)
    board.update(qf, {**qf.meta, "message_key": key})      # as 0.1's milter wrote it
    board.release(qf)
    env.run()
    assert posted(env) == 1
    smtp(env)                                                 # a retry after the upgrade
    env.run()
    assert posted(env) == 1
