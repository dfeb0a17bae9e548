"""Digest delivery: digest members leave the fan-out, posts are collected in the store and sent
as a MIME (RFC 2046) or plain text (RFC 1153) digest by size or by period, numbered by volume
and issue, each post exactly once across crashes; members switch by email and by CLI; the
per-member moderation flag holds posts."""
from __future__ import annotations

import email
import email.policy
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from listgate import clock, routing, verp
from listgate.app import digests
from listgate.app.bounces import BounceEngine
from listgate.runner import tasks
from listgate.store import DigestState, open_store

from engine_helpers import dsn
from harness import available
from harness.stack import Stack
from runner_helpers import LIST, Env, message

REG, MIME, PLAIN = "reg@example.com", "mime@example.com", "plain@example.net"
T0 = datetime(2027, 3, 10, 9, 0, tzinfo=timezone.utc).timestamp()
DAY = 86400


@pytest.fixture
def env(tmp_path):
    clock.freeze(T0)
    e = Env(tmp_path, "posting_policy: members_only\ndigest_size_threshold: 4k\ndigest_period: 1d\n")
    e.members(REG, MIME, PLAIN)
    digests.set_mode(e.store, MIME, "mime")
    digests.set_mode(e.store, PLAIN, "plain")
    yield e
    e.close()


def post(env, subject: str, body: str = "Hello.\r\n", sender: str = REG) -> None:
    env.inject(message(sender, subject, body.encode()), sender=sender)
    env.run()


def tick(env) -> list[str]:
    """The runner's periodic tasks (the digest hook), then delivery of what they queued."""
    lines = tasks.run(env.site)
    env.run()
    return [line for line in lines if "digest" in line]


def digests_for(env, rcpt):
    return [d for d in env.sink.messages_for(rcpt) if "Digest, Vol" in str(d.message()["Subject"])]


def mime_posts(delivery) -> list[str]:
    """The subjects of the posts in a MIME digest, from its multipart/digest part."""
    msg = delivery.message()
    assert msg.get_content_type() == "multipart/mixed"
    toc, digest = msg.get_payload()
    assert toc.get_content_type() == "text/plain" and "Today's Topics:" in toc.get_content()
    assert digest.get_content_type() == "multipart/digest"
    parts = digest.get_payload()
    assert all(p.get_content_type() == "message/rfc822" for p in parts)
    return [str(p.get_payload(0)["Subject"]) for p in parts]


def plain_posts(delivery) -> tuple[str, list[str]]:
    """(preamble, [one block per post]) of an RFC 1153 digest: 70 hyphens, then 30 between posts."""
    msg = delivery.message()
    assert msg.get_content_type() == "text/plain"
    text = msg.get_content().replace("\r\n", "\n")
    preamble, rest = text.split("\n" + "-" * 70 + "\n", 1)
    blocks = rest.split("\n" + "-" * 30 + "\n")
    assert blocks[-1].strip().startswith("End of demo Digest")
    return preamble, [b.strip() for b in blocks[:-1]]


def test_digest_members_get_no_posts_one_by_one_and_a_digest_by_size(env):
    post(env, "first")
    assert [d.rcpt for d in env.sink.messages()] == [REG]          # digest members are left out
    assert tick(env) == [] and not digests_for(env, MIME)           # 1 small post: not due
    post(env, "second", ("x" * 70 + "\r\n") * 70)                   # now past 4 KiB
    [line] = tick(env)
    assert "vol 1 issue 1: 2 post(s) (size)" in line
    [mime] = digests_for(env, MIME)
    [plain] = digests_for(env, PLAIN)
    assert not digests_for(env, REG)
    assert mime_posts(mime) == ["[demo] first", "[demo] second"]
    preamble, blocks = plain_posts(plain)
    assert "   1. first (reg@example.com)" in preamble and "   2. second (reg@example.com)" in preamble
    # RFC 1153's fields in its order (the test posts carry no Date)
    assert [[f.split(":")[0] for f in b.split("\n\n")[0].splitlines()] for b in blocks] == \
        [["From", "Subject", "To", "Message-ID"]] * 2
    assert "Subject: [demo] first" in blocks[0] and blocks[0].endswith("Hello.")
    assert mime.message()["Subject"].endswith("demo Digest, Vol 1, Issue 1")
    assert mime.message()["List-Id"].endswith("<demo.lists.example.org>")
    assert tick(env) == []                                          # nothing left to send
    assert open_store(env.site, LIST).digest_posts() == []


def test_digest_by_period_numbers_issues_and_a_new_volume_each_year(env):
    post(env, "one")
    clock.advance(DAY - 60)
    assert tick(env) == []                                          # a day after the oldest post
    clock.advance(60)
    assert "vol 1 issue 1: 1 post(s) (period)" in tick(env)[0]
    post(env, "two")
    clock.advance(DAY - 1)
    assert tick(env) == []                                          # a day after the last digest
    clock.advance(1)
    assert "vol 1 issue 2" in tick(env)[0]
    clock.freeze(datetime(2027, 12, 31, 12, tzinfo=timezone.utc).timestamp())
    post(env, "three")
    assert "vol 1 issue 3" in tick(env)[0]
    post(env, "four")
    clock.advance(DAY)                                              # 2028: the next volume
    assert "vol 2 issue 1" in tick(env)[0]
    subjects = [str(d.message()["Subject"]).split("] ")[-1] for d in digests_for(env, MIME)]
    assert subjects == [f"demo Digest, Vol {v}, Issue {i}" for v, i in ((1, 1), (1, 2), (1, 3), (2, 1))]
    assert [mime_posts(d) for d in digests_for(env, MIME)] == [[f"[demo] {s}"] for s in
                                                               ("one", "two", "three", "four")]


def test_next_numbers():
    year = datetime(2027, 6, 1, tzinfo=timezone.utc).timestamp()
    assert digests.next_numbers(DigestState(), year) == (1, 1)
    assert digests.next_numbers(DigestState(volume=3, issue=7, last_sent=year), year + DAY) == (3, 8)
    assert digests.next_numbers(DigestState(volume=3, issue=7, last_sent=year), year + 365 * DAY) == (4, 1)


@pytest.mark.parametrize("fail_in", ["mime_digest", "plain_digest", "digest_sent", "release"])
def test_a_crash_while_sending_neither_loses_nor_repeats_a_post(env, monkeypatch, fail_in):
    """Raise inside the send step, deliver what the queues hold (a restarted runner does that
    first), collect one more post, run again: each post reaches each digest member once."""
    post(env, "alpha")
    post(env, "beta")
    clock.advance(DAY)

    def crash(*_a, **_k):
        raise RuntimeError("killed")
    if fail_in == "digest_sent":
        monkeypatch.setattr(type(env.store), "digest_sent", crash)
    elif fail_in == "release":
        monkeypatch.setattr(digests, "_release", crash)
    else:
        monkeypatch.setattr(digests, fail_in, crash)
    with pytest.raises(RuntimeError):
        digests.run(env.site, env.lc)
    monkeypatch.undo()
    env.run()                                            # the restarted runner delivers first:
    assert not digests_for(env, MIME) and not digests_for(env, PLAIN)   # nothing was released yet
    post(env, "gamma")                                   # collected after the claim: next issue
    lines = tick(env)
    if fail_in == "release":                             # sent before the crash: only released now
        assert lines == []
    else:
        assert len(lines) == 1 and "vol 1 issue 1: 2 post(s) (resumed)" in lines[0]
    clock.advance(DAY)
    assert "vol 1 issue 2: 1 post(s)" in tick(env)[0]
    assert [mime_posts(d) for d in digests_for(env, MIME)] == [["[demo] alpha", "[demo] beta"], ["[demo] gamma"]]
    assert [len(plain_posts(d)[1]) for d in digests_for(env, PLAIN)] == [2, 1]
    assert not env.queue("out").ids() and not env.queue("retry").ids()
    assert not list(Path(env.site.queue_dir, "out").glob("*.staged"))


def test_a_digest_bounce_scores_through_the_members_verp_sender(env):
    post(env, "bounce me")
    clock.advance(DAY)
    tick(env)
    [got] = digests_for(env, PLAIN)
    decision = routing.decide_rcpt(env.site, got.mail_from, sender="")
    assert decision.action == "accept" and decision.verp.kind == "member" and decision.verp.member == PLAIN
    outcome = BounceEngine(env.site).handle_bounce(env.lc, dsn(PLAIN), decision.address, verp_result=decision.verp,
                                                   envelope_sender="")
    assert [(a.address, a.action, a.attribution) for a in outcome.actions] == [(PLAIN, "scored", "verp")]
    assert open_store(env.site, LIST).get_member(PLAIN).bounce_score > 0


def test_mode_switch_by_email(env):
    env.inject(message(MIME, "digest off"), role="request", sender=MIME)
    env.inject(message(REG, "commands", b"digest plain\r\n"), role="request", sender=REG)
    env.inject(message("stranger@example.org", "digest on"), role="request", sender="stranger@example.org")
    env.run()
    store = open_store(env.site, LIST)
    assert store.get_member(MIME).delivery_mode == "regular"
    assert store.get_member(REG).delivery_mode == "plain_digest"
    replies = {d.rcpt: d.message().get_body(("plain",)).get_content() for d in env.sink.messages()}
    assert "now gets posts one by one" in replies[MIME]
    assert "now gets the plain text digest" in replies[REG]
    assert "stranger@example.org is not a member" in replies["stranger@example.org"]
    post(env, "after the switch")
    assert sorted(d.rcpt for d in env.sink.messages() if "after the switch" in str(d.message()["Subject"])) \
        == [MIME]


def test_mode_switch_by_cli(env):
    done = env.cli("members", "set", LIST, REG, "--digest", "plain", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["delivery_mode"] == "plain_digest"
    assert env.cli("members", "set", LIST, MIME, "--digest", "off").stdout.strip() == f"{MIME}: delivery regular"
    assert env.cli("members", "set", LIST, "nobody@example.com", "--digest", "mime").returncode == 1
    assert env.cli("members", "set", LIST, REG, "--digest", "weekly").returncode == 2
    store = open_store(env.site, LIST)
    assert [store.get_member(a).delivery_mode for a in (REG, MIME)] == ["plain_digest", "regular"]


def test_a_moderated_member_is_accepted_at_rcpt_and_held_after_data(env):
    store = env.store
    member = store.get_member(REG)
    member.moderated = True
    store.save_member(member)
    assert routing.decide_rcpt(env.site, LIST, sender=REG).action == "accept"
    env.inject(message(REG, "held please"), sender=REG)
    env.run()
    [held] = open_store(env.site, LIST).pending("held_message")
    assert "moderated" in json.dumps(held.payload)
    assert not [d for d in env.sink.messages() if d.rcpt in (REG, MIME, PLAIN)]
    assert routing.decide_rcpt(env.site, LIST, sender=MIME).action == "accept"   # others still post
    post(env, "not held", sender=MIME)
    assert [d.rcpt for d in env.sink.messages() if "not held" in str(d.message()["Subject"])] == [REG]


@pytest.mark.skipif(not available(), reason="needs Postfix and root")
def test_a_digest_member_receives_a_digest_through_postfix(tmp_path):
    """The real stack: a post through Postfix's smtpd reaches the regular member at once; a day
    later (the clock file) the runner's periodic tasks send the digest member the digest, from
    the member's signed VERP sender, through Postfix."""
    alice, dig = "alice@members.test", "dig@members.test"
    with Stack() as st:
        for address in (alice, dig):
            st.listgate("members", "add", "demo", address)
        st.listgate("members", "set", "demo", dig, "--digest", "mime")
        msg = (f"From: Alice <{alice}>\r\nTo: demo@lists.example.org\r\nSubject: through postfix\r\n"
               f"Message-ID: <digest-e2e@members.test>\r\n\r\nA post for the digest.\r\n").encode()
        assert st.send(alice, ["demo@lists.example.org"], msg) == {}
        st.sink.wait_for_message(alice)
        st.settle()
        assert not st.sink.messages_for(dig)
        st.advance_days(1.01)
        [got] = st.sink.wait_for_message(dig)
        assert "demo Digest, Vol 1, Issue 1" in str(got.message()["Subject"])
        assert mime_posts(got) == ["[demo] through postfix"]
        assert verp.decode(st.site, st.lc, got.mail_from.split("@")[0].split("+", 1)[1]).member == dig
