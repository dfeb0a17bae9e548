"""Delivery: per-recipient VERP fan-out into a real SMTP sink, 4xx retry, 5xx to the bounce engine, crash resume."""
from __future__ import annotations

import asyncio
import re
import signal
import threading

import pytest
from harness import TEMPFAIL, UNKNOWN
from runner_helpers import LIST, Env, message, wait_until

from listgate import clock, messages, routing, verp
from listgate.runner import delivery


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    yield e
    e.close()


def test_fanout_one_transaction_per_member_with_signed_verp(env):
    env.members("a@one.test", "b@two.test", "c@three.test")
    env.store.add_member("off@four.test", status="by_user")
    body = b"caf\xc3\xa9 8-bit body\r\nline two\r\n"
    env.inject(message("a@one.test", "hello", body), sender="a@one.test")
    env.run()
    got = {d.rcpt: d for d in env.sink.messages()}
    assert set(got) == {"a@one.test", "b@two.test", "c@three.test"}  # only enabled members
    for rcpt, d in got.items():
        assert d.mail_from == verp.member_bounce_address(env.site, env.lc, rcpt)
        decoded = verp.decode(env.site, env.lc, d.mail_from.split("+", 1)[1].split("@")[0])
        assert decoded.kind == "member" and decoded.member.lower() == rcpt
        assert d.data.split(b"\r\n\r\n", 1)[1] == body  # body bytes untouched
    assert env.queue("out").ids() == [] and env.queue("retry").ids() == []


def test_5xx_at_handover_is_a_bounce_for_the_member(env):
    env.members("a@one.test", "gone@two.test")
    env.sink.set_behaviour("gone@two.test", UNKNOWN)
    env.inject(message("a@one.test", "hello"), sender="a@one.test")
    env.run()
    events = env.store.events("gone@two.test")
    assert [(e.attribution, e.status, e.bounce_class) for e in events][:1] == [("smtp", "5.1.1", "hard")]
    assert env.store.get_member("gone@two.test").bounce_score > 0
    assert env.sink.messages_for("a@one.test")
    assert env.queue("retry").ids() == []


def test_probe_refused_at_handover_disables_member_and_reenable_works(env):
    # threshold 1: the first hard failure sends a probe; the probe is refused too -> disabled by bounce
    env.edit_list("bounce_score_threshold: 1.0")
    env.members("a@one.test", "gone@two.test")
    env.sink.set_behaviour("gone@two.test", UNKNOWN)
    env.inject(message("a@one.test", "hello"), sender="a@one.test")
    env.run()
    member = env.store.get_member("gone@two.test")
    assert member.delivery_status == "by_bounce"
    probe_refusals = [r for r in env.sink.refusals if r.rcpt == "gone@two.test" and "+" in r.mail_from]
    # the post (member VERP), then the probe (probe token), then the disabled notice
    assert len(probe_refusals) >= 2
    assert verp.decode(env.site, env.lc, probe_refusals[0].mail_from.split("+", 1)[1].split("@")[0]).kind == "member"
    # a probe address (its token is single-use and already spent by the probe bounce)
    assert re.fullmatch(r"demo-bounces\+[a-z2-7]{26}@lists\.example\.org", probe_refusals[1].mail_from)
    # the disabled notice carries a re_enable token; confirming it (from the member) re-enables
    env.sink.set_behaviour("gone@two.test", "accept")
    token = env.store.pending("re_enable")[0].token
    env.inject(message("gone@two.test", f"Re: confirm {token}"), role="confirm", sender="gone@two.test",
               extension=token)
    env.run()
    assert env.store.get_member("gone@two.test").delivery_status == "enabled"


def test_4xx_goes_to_retry_with_backoff_then_delivers(env):
    clock.freeze(1_800_000_000.0)
    env.members("a@one.test", "later@two.test")
    env.sink.set_behaviour("later@two.test", TEMPFAIL)
    env.inject(message("a@one.test", "hello"), sender="a@one.test")
    env.run()
    assert len(env.sink.messages_for("a@one.test")) == 1
    [qid] = env.queue("retry").ids()
    qf = env.queue("retry").peek(qid)
    assert [d["rcpt"] for d in qf.meta["deliveries"]] == ["later@two.test"]
    assert qf.meta["retry_at"] == 1_800_000_000.0 + env.site.conf.runner.retry_backoff
    env.sink.set_behaviour("later@two.test", "accept")
    env.run()  # backoff not over: nothing
    assert env.sink.messages_for("later@two.test") == []
    clock.advance(env.site.conf.runner.retry_backoff)
    env.run()
    assert len(env.sink.messages_for("later@two.test")) == 1
    assert len(env.sink.messages_for("a@one.test")) == 1  # nobody twice
    assert env.queue("retry").ids() == []


def test_retry_gives_up_after_retry_giveup_as_soft_failure(env):
    clock.freeze(1_800_000_000.0)
    env.members("later@two.test")
    env.sink.set_behaviour("later@two.test", TEMPFAIL)
    env.inject(message("later@two.test", "hello"), sender="later@two.test")
    env.run()
    backoffs = []
    while env.queue("retry").ids():
        qf = env.queue("retry").peek(env.queue("retry").ids()[0])
        backoffs.append(qf.meta["retry_at"] - clock.now())
        clock.freeze(qf.meta["retry_at"])
        env.run()
        assert len(backoffs) < 100
    assert backoffs[1] == 2 * backoffs[0]  # exponential
    assert clock.now() - 1_800_000_000.0 >= env.site.conf.runner.retry_giveup
    events = env.store.events("later@two.test")
    assert events and events[0].bounce_class == "soft" and events[0].attribution == "smtp"


def test_listener_down_defers_everything(env):
    env.members("a@one.test", "b@two.test")
    env.sink.stop()
    env.inject(message("a@one.test", "hello"), sender="a@one.test")
    env.run()
    [qid] = env.queue("retry").ids()
    assert len(env.queue("retry").peek(qid).meta["deliveries"]) == 2


def test_virgin_items_use_their_own_envelope_sender(env):
    msg = messages.make_notice(sender="demo-owner@lists.example.org", to="x@one.test", subject="hi",
                               body="text", domain="lists.example.org")
    messages.queue_virgin(env.site, env.lc, msg, [{"rcpt": "x@one.test", "sender": ""},
                                                   {"rcpt": "y@two.test", "sender": "demo-bounces@lists.example.org"}],
                          kind="test")
    env.run()
    assert [d.mail_from for d in env.sink.messages_for("x@one.test")] == [""]
    assert [d.mail_from for d in env.sink.messages_for("y@two.test")] == ["demo-bounces@lists.example.org"]
    assert b"\r\nAuto-Submitted: auto-generated\r\n" in env.sink.messages_for("x@one.test")[0].data


def test_paths_and_dot_stuffing_on_the_wire(env):
    """A plain addr-spec goes out as ``<addr>`` without smtplib's parser; a quoted local part
    still goes through it; lines that start with a dot are stuffed (RFC 5321 section 4.5.2)
    and arrive whole."""
    body = b".hidden\r\n..two dots\r\nend\r\n"
    msg = b"From: demo-owner@lists.example.org\r\nTo: x@one.test\r\nSubject: dots\r\n\r\n" + body
    messages.queue_virgin(env.site, env.lc, msg, [{"rcpt": '"john.doe"@one.test', "sender": ""},
                                                   {"rcpt": "x+tag@two.test", "sender": "demo-bounces@lists.example.org"}],
                          kind="test")
    env.run()
    [quoted] = env.sink.messages_for("john.doe@one.test")     # aiosmtpd takes the quotes off
    [plain] = env.sink.messages_for("x+tag@two.test")
    assert plain.mail_from == "demo-bounces@lists.example.org" and quoted.mail_from == ""
    assert quoted.data.split(b"\r\n\r\n", 1)[1] == body == plain.data.split(b"\r\n\r\n", 1)[1]


def test_progress_is_recorded_after_each_handover(env):
    """Resume from a qfile whose ``done`` says two were handed over: only the rest are sent."""
    env.members(*(f"m{i}@one.test" for i in range(5)))
    env.inject(message("m0@one.test", "hello"), sender="m0@one.test")
    env.run()  # fan-out finishes; now replay a partially done copy
    env.sink.clear()
    from listgate.app import posting
    meta = posting.fanout_meta(env.site, env.lc, env.store, message_id="<x@y>")
    meta["done"] = [0, 1]
    env.queue("out").enqueue(b"Subject: again\r\n\r\nbody\r\n", meta)
    env.run()
    assert sorted(d.rcpt for d in env.sink.messages()) == ["m2@one.test", "m3@one.test", "m4@one.test"]


class _Gate:
    """Makes the sink hold the RCPT of transaction N+1 until released (no DATA in flight)."""

    def __init__(self, sink, after: int):
        self.sink, self.after = sink, after
        self.released = threading.Event()
        self.holding = threading.Event()
        handler = sink._controller.handler
        original = handler.handle_RCPT

        async def handle_RCPT(server, session, envelope, address, rcpt_options):
            while len(self.sink.messages()) >= self.after and not self.released.is_set():
                self.holding.set()
                await asyncio.sleep(0.02)
            return await original(server, session, envelope, address, rcpt_options)

        handler.handle_RCPT = handle_RCPT


def test_sigkill_mid_fanout_then_restart_every_member_exactly_once(env):
    members = [f"m{i:02d}@one.test" for i in range(40)]
    env.members(*members)
    gate = _Gate(env.sink, after=15)
    env.inject(message("m00@one.test", "crash test"), sender="m00@one.test")
    proc = env.spawn("runner")
    assert gate.holding.wait(30), "runner never reached the 16th recipient"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert len(env.sink.messages()) == 15
    assert env.queue("out").held_ids(), "the qfile should be left in progress by the crash"
    gate.released.set()
    proc2 = env.spawn("runner")
    wait_until(lambda: len(env.sink.messages()) >= len(members), timeout=30)
    wait_until(lambda: not env.queue("out").ids() and not env.queue("out").held_ids(), timeout=10)
    proc2.send_signal(signal.SIGTERM)
    assert proc2.wait(20) == 0
    counts = {m: len(env.sink.messages_for(m)) for m in members}
    assert counts == {m: 1 for m in members}


def test_enhanced_status_and_backoff_helpers(env):
    from listgate.bounce.status import reply_status
    assert reply_status(550, "5.1.1 <x>: User unknown") == "5.1.1"
    assert reply_status(550, "4.1.1 mismatched class") == "5.0.0"
    assert reply_status(451, "try later") == "4.0.0"
    assert reply_status(550, "  5.7.1 spam") == "5.7.1"
    assert delivery.failure_class("5.7.1", "Message refused: it looks like spam") == "policy"
    assert delivery.failure_class("5.1.1", "User unknown") == "hard"
    base = env.site.conf.runner.retry_backoff
    assert [delivery.retry_delay(env.site, n) for n in (1, 2, 3)] == [base, 2 * base, 4 * base]
    assert delivery.retry_delay(env.site, 50) == base * 2 ** delivery.MAX_BACKOFF_DOUBLINGS


def test_big_post_is_split_and_delivered_in_parallel_exactly_once(env):
    from listgate.app import posting
    members = [f"m{i:03d}@one.test" for i in range(posting.FANOUT_SINGLE + 7)]
    with env.store.transaction():
        for m in members:
            env.store.add_member(m)
    env.inject(message(members[0], "big"), sender=members[0])
    from listgate.runner.loop import Runner
    runner = Runner(env.site)
    try:
        in_board = runner.boards["in"]
        qf = in_board.dequeue()
        runner.process(in_board, qf)
        parts = [env.queue("out").peek(q).meta for q in env.queue("out").ids()]
        n = -(-len(members) // posting.FANOUT_CHUNK)
        assert sorted(p["part"] for p in parts) == list(range(1, n + 1)) and {p["parts"] for p in parts} == {n}
        assert sum(len(p["deliveries"]) for p in parts) == len(members)
        runner.run_once(with_tasks=False)
    finally:
        runner.close()
    assert sorted(d.rcpt for d in env.sink.messages()) == members


def test_sigterm_mid_fanout_finishes_the_transaction_and_resumes_later(env):
    members = [f"m{i:02d}@one.test" for i in range(20)]
    env.members(*members)
    gate = _Gate(env.sink, after=5)
    env.inject(message("m00@one.test", "stop test"), sender="m00@one.test")
    proc = env.spawn("runner")
    assert gate.holding.wait(30)
    proc.send_signal(signal.SIGTERM)
    gate.released.set()  # the transaction in hand completes, then the runner stops
    assert proc.wait(20) == 0
    delivered = len(env.sink.messages())
    assert delivered < len(members)
    [qid] = env.queue("out").ids()  # put back, not left in progress
    assert len(env.queue("out").peek(qid).meta["done"]) == delivered
    env.run()
    assert {m: len(env.sink.messages_for(m)) for m in members} == {m: 1 for m in members}


def test_queue_flush_reaches_a_runner_that_saw_the_retry_queue_already(env):
    """A running runner remembers the earliest retry_at it saw; ``queue flush`` (another
    process) rewrites retry_at in place, and the runner's next pass must send the qfile."""
    from listgate.runner.loop import Runner
    env.members("later@two.test")
    env.sink.set_behaviour("later@two.test", TEMPFAIL)
    env.inject(message("later@two.test", "hello"), sender="later@two.test")
    runner = Runner(env.site)
    try:
        runner.run_once(with_tasks=False)
        assert len(env.queue("retry").ids()) == 1
        env.sink.set_behaviour("later@two.test", "accept")
        assert runner.run_once(with_tasks=False) == 0       # backoff (300 s) not over: it waits
        out = env.cli("queue", "flush")
        assert out.returncode == 0 and "due now" in out.stdout, out.stderr
        assert runner.run_once(with_tasks=False) == 1        # its next pass, not 300 s later
        assert len(env.sink.messages_for("later@two.test")) == 1
        assert env.queue("retry").ids() == []
    finally:
        runner.close()


def test_tasks_run_counts_recipients_by_outcome_not_qfiles_tried(env):
    env.members("a@one.test", "later@two.test")
    env.sink.set_behaviour("later@two.test", TEMPFAIL)
    env.inject(message("a@one.test", "hello"), sender="a@one.test")
    env.run()
    assert len(env.queue("retry").ids()) == 1
    assert env.cli("queue", "flush").returncode == 0
    out = env.cli("tasks", "run")
    assert out.returncode == 0, out.stderr
    assert "retries: 1 qfile(s) due; recipients delivered 0, failed 0, deferred again 1" in out.stdout
    env.sink.set_behaviour("later@two.test", "accept")
    assert env.cli("queue", "flush").returncode == 0
    out = env.cli("tasks", "run")
    assert "retries: 1 qfile(s) due; recipients delivered 1, failed 0, deferred again 0" in out.stdout
    assert len(env.sink.messages_for("later@two.test")) == 1


def test_members_at_a_dotless_domain_get_signed_verp_in_the_fanout(env):
    members = ("erin@localhost", "root+alice@localhost", "carol@example.com")
    env.members(*members)
    env.inject(message("carol@example.com", "hello"), sender="carol@example.com")
    env.run()
    for rcpt in members:
        [d] = env.sink.messages_for(rcpt)
        assert d.mail_from.startswith("demo-bounces+"), (rcpt, d.mail_from)
        decoded = verp.decode(env.site, env.lc, d.mail_from.split("+", 1)[1].rpartition("@")[0])
        assert (decoded.kind, decoded.member) == ("member", rcpt)
        # and a bounce to that sender is taken at RCPT for exactly that member
        decision = routing.decide_rcpt(env.site, d.mail_from, sender="")
        assert decision.action != "reject" and decision.verp.member == rcpt, decision


def test_queue_flush_reaches_idle_runner_processes_of_every_slice(env):
    """The admin's case: runners (two slices) idle with retry qfiles due in 300 s;
    ``queue flush`` makes them send at their next pass (runner.poll_interval), not then."""
    import time
    from listgate.queue import slice_of
    env.members("a@one.test", "later@two.test")
    env.sink.set_behaviour("later@two.test", TEMPFAIL)
    for i in range(12):
        env.inject(message("a@one.test", f"post {i}"), sender="a@one.test")
        env.run()
        if {slice_of(q, 2) for q in env.queue("retry").ids()} == {0, 1}:
            break
    ids = env.queue("retry").ids()
    assert {slice_of(q, 2) for q in ids} == {0, 1}
    procs = [env.spawn("runner", "--slice", f"{i}/2") for i in range(2)]
    # let both pass over the retry queue once and remember the earliest retry_at (300 s ahead)
    time.sleep(4 * env.site.conf.runner.poll_interval)
    assert all(p.poll() is None for p in procs)
    assert env.sink.messages_for("later@two.test") == []
    env.sink.set_behaviour("later@two.test", "accept")
    out = env.cli("queue", "flush")
    assert out.returncode == 0 and out.stdout.count("due now") == len(ids), out.stderr
    env.sink.wait_for(lambda s: len(s.messages_for("later@two.test")) == len(ids), timeout=30)
    for p in procs:
        p.send_signal(signal.SIGTERM)
    assert [p.wait(20) for p in procs] == [0, 0]
    assert env.queue("retry").ids() == []
