"""Runner: posting policy, decoration, loop protection, moderation, owner mail, tasks, SIGTERM, serve."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import tempfile
import time

import pytest
from runner_helpers import LIST, MODERATOR, OWNER, Env, any_text, message, text_of, wait_until

from listgate import clock
from listgate.app import posting


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    yield e
    e.close()


def _header(data: bytes, name: str) -> list[str]:
    head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    return [ln.split(":", 1)[1].strip() for ln in head.split("\r\n") if ln.lower().startswith(name.lower() + ":")]


def test_post_is_decorated_and_body_bytes_kept(env):
    env.members("a@one.test", "b@two.test")
    body = b"line \xe9 latin-1 8-bit\r\n.leading dot\r\n\r\n"
    env.inject(message("a@one.test", "hello", body), sender="a@one.test")
    env.inject(message("a@one.test", "Re: [demo] hello"), sender="a@one.test")
    env.run()
    # two posts are two qfiles, which may be handed over in either order
    got = sorted(env.sink.messages_for("b@two.test"), key=lambda d: _header(d.data, "Subject"))
    assert [_header(d.data, "Subject") for d in got] == [["Re: [demo] hello"], ["[demo] hello"]]  # no doubled prefix
    first = got[1]
    assert _header(first.data, "List-Id") == ["<demo.lists.example.org>"] or \
        _header(first.data, "List-Id")[0].endswith("<demo.lists.example.org>")
    assert _header(first.data, "List-Post") == [f"<mailto:{LIST}>"]
    assert _header(first.data, "List-Unsubscribe") == ["<mailto:demo-leave@lists.example.org?subject=unsubscribe>"]
    assert _header(first.data, "List-Subscribe") == ["<mailto:demo-join@lists.example.org>"]
    assert _header(first.data, "List-Help") == ["<mailto:demo-request@lists.example.org?subject=help>"]
    assert _header(first.data, "Precedence") == ["list"]
    assert first.data.split(b"\r\n\r\n", 1)[1] == body


def test_decorate_replaces_foreign_list_headers_and_keeps_lf_messages():
    from listgate.config.loader import Frozen
    lc = Frozen(dict(name="demo", domain="d.test", description='Say "hi"', subject_prefix="[demo] ",
                     posting_policy="announce"))
    raw = b"Subject: x\nList-Id: <other.d.test>\nList-Post: <mailto:other@d.test>\nX-Keep:\n  folded\n\nbody\n"
    out = posting.decorate(lc, raw)
    head, body = out.split(b"\n\n", 1)
    assert body == b"body\n" and b"\r" not in out
    assert b"other" not in head and b"X-Keep:\n  folded" in head
    assert b'List-Id: "Say hi" <demo.d.test>' in head
    assert b"List-Post: NO" in head  # RFC 2369 section 3.4 for announce-only lists


def test_loop_protection_drops_a_post_that_went_through_the_list(env):
    env.members("a@one.test")
    env.inject(message("a@one.test", "[demo] hi", extra=f"X-Listgate-Loop: {LIST}\r\n"), sender="a@one.test")
    env.inject(message("a@one.test", "hi", extra="List-Id: Demo <demo.lists.example.org>\r\n"), sender="a@one.test")
    env.run()
    assert env.sink.messages() == []
    assert env.queue("shunt").ids() == []


def test_non_member_post_held_and_approved_by_moderator_reply(env):
    env.edit_list(f"moderators:\n  - {MODERATOR}")
    env.members("a@one.test")
    env.inject(message("stranger@x.test", "buy now"), sender="stranger@x.test")
    env.run()
    assert env.sink.messages_for("a@one.test") == []
    [notice] = env.sink.messages_for(MODERATOR)
    token = env.confirm_token(MODERATOR)
    assert notice.mail_from == "" and "not a member" in text_of(notice)
    [rec] = env.store.pending("held_message")
    assert rec.token == token
    # a non-moderator who learns the token cannot approve
    env.inject(message("stranger@x.test", f"Re: confirm {token}"), role="confirm", sender="stranger@x.test",
               extension=token)
    env.run()
    assert env.sink.messages_for("a@one.test") == [] and env.store.peek_pending(token) is not None
    env.inject(message(MODERATOR, f"Re: confirm {token}", b"approve\r\n"), role="confirm", sender=MODERATOR,
               extension=token)
    env.run()
    [post] = env.sink.messages_for("a@one.test")
    assert _header(post.data, "Subject") == ["[demo] buy now"]
    assert env.store.peek_pending(token) is None


def test_moderator_reject_tells_the_author(env):
    env.members("a@one.test")
    env.inject(message("stranger@x.test", "question"), sender="stranger@x.test")
    env.run()
    token = env.confirm_token(OWNER)  # no moderators: owners moderate
    env.inject(message(OWNER, f"Re: confirm {token}", b"reject off-topic here\r\n"), role="confirm",
               sender=OWNER, extension=token)
    env.run()
    assert env.sink.messages_for("a@one.test") == []
    assert any_text(env.sink.messages_for("stranger@x.test"), "off-topic here")


@pytest.mark.parametrize("settings,poster,expect", [
    ("non_member_action: reject", "stranger@x.test", "rejected"),
    ("non_member_action: discard", "stranger@x.test", "discarded"),
    ("posting_policy: open", "stranger@x.test", "queued"),
    ("posting_policy: moderated", "a@one.test", "held"),
    ("posting_policy: moderated", OWNER, "queued"),
    ("posting_policy: announce", "a@one.test", "held"),
    ("posting_policy: announce", OWNER, "queued"),
    ("max_message_size: 1k", "a@one.test", "held"),
])
def test_posting_policy(env, settings, poster, expect):
    env.edit_list(settings)
    env.members("a@one.test")
    body = b"x" * 2000 + b"\r\n" if "max_message_size" in settings else b"short\r\n"
    qf_msg = message(poster, "policy", body)
    env.inject(qf_msg, sender=poster)
    env.run()
    got = env.sink.messages_for("a@one.test")
    held = env.store.pending("held_message")
    if expect == "queued":
        assert len(got) == 1 and not held
    elif expect == "held":
        assert not got and len(held) == 1
    else:
        assert not got and not held
        rejections = env.sink.messages_for(poster)
        assert len(rejections) == (1 if expect == "rejected" else 0)


def test_owner_mail_forwarded_unchanged(env):
    raw = message("someone@x.test", "question for the owner", b"\xff raw bytes\r\n")
    env.inject(raw, role="owner", sender="someone@x.test")
    env.run()
    [fwd] = env.sink.messages_for(OWNER)
    assert fwd.data == raw and fwd.mail_from == ""


def test_held_cli_list_and_approve(env):
    env.members("a@one.test")
    env.inject(message("stranger@x.test", "via cli"), sender="stranger@x.test")
    env.run()
    out = env.cli("held", "list", "demo", "--json")
    assert out.returncode == 0, out.stderr
    [row] = json.loads(out.stdout)
    assert row["author"] == "stranger@x.test" and row["subject"] == "via cli"
    out = env.cli("held", "approve", "demo", row["token"])
    assert out.returncode == 0 and "approved" in out.stdout, out.stderr
    assert env.cli("held", "discard", "demo", row["token"]).returncode == 1  # already handled
    env.run()
    assert len(env.sink.messages_for("a@one.test")) == 1


def test_tasks_run_evicts_expired_held_posts(env):
    env.members("a@one.test")
    env.inject(message("stranger@x.test", "old"), sender="stranger@x.test")
    env.run()
    env.sink.clear()
    clock_file = str(env.dir / "clock")
    clock.write_offset_file(clock_file, env.site.conf.pending.held_message + 60)
    out = env.cli("tasks", "run", LISTGATE_CLOCK_FILE=clock_file)
    assert out.returncode == 0, out.stderr
    assert "expired held_message" in out.stdout
    assert env.store.pending("held_message") == []
    env.run()
    assert any_text(env.sink.messages_for(OWNER), "expired without a decision")


def test_tasks_of_a_list_run_once_per_period_whoever_asks(env):
    """Another runner (another MX host, a cron job) holding the list's tasks lease
    this period: the tasks are skipped here; once its lease expires they run here."""
    from listgate.runner import tasks
    env.members("a@one.test")
    env.inject(message("stranger@x.test", "old"), sender="stranger@x.test")
    env.run()
    clock.freeze(clock.now())
    interval = env.site.conf.runner.tasks_interval
    assert env.store.try_lock("tasks", interval, "mx2.example:4242")
    clock.advance(env.site.conf.pending.held_message + 60 - interval)
    assert env.store.try_lock("tasks", interval, "mx2.example:4242")      # mx2 ran this period's tasks
    assert tasks.run(env.site) == []
    assert len(env.store.pending("held_message")) == 1
    clock.advance(interval)
    assert any("expired held_message" in line for line in tasks.run(env.site))
    assert env.store.pending("held_message") == []


def test_runner_schedules_tasks_by_interval(env):
    from listgate.runner import tasks
    from listgate.runner.loop import Runner
    clock.freeze(1_800_000_000.0)
    runner = Runner(env.site)
    try:
        runner.run_once()
        assert tasks.last_run(env.site) == 1_800_000_000.0
        clock.advance(env.site.conf.runner.tasks_interval - 1)
        runner.run_once()
        assert tasks.last_run(env.site) == 1_800_000_000.0
        clock.advance(1)
        runner.run_once()
        assert tasks.last_run(env.site) == 1_800_000_000.0 + env.site.conf.runner.tasks_interval
    finally:
        runner.close()


def test_broken_qfile_goes_to_shunt_not_a_crash(env):
    env.queue("in").enqueue(b"Subject: x\r\n\r\n", {"list": LIST, "role": "nonsense"})
    env.members("a@one.test")
    env.inject(b"\xff\xfe\x00 not a message at all", sender="a@one.test")
    env.run()
    [sid] = env.queue("shunt").ids()
    assert "nonsense" in env.queue("shunt").peek(sid).meta["reason"]


def test_sigterm_stops_runner_cleanly(env):
    env.members(*(f"m{i}@one.test" for i in range(5)))
    proc = env.spawn("runner")
    env.inject(message("m0@one.test", "before stop"), sender="m0@one.test")
    env.sink.wait_for(lambda s: len(s.messages()) == 5, timeout=30)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    assert not env.queue("out").held_ids() and not env.queue("in").held_ids()


def test_slices_share_the_queues(env):
    env.members("a@one.test")
    for i in range(6):
        env.inject(message("a@one.test", f"post {i}"), sender="a@one.test")
    procs = [env.spawn("runner", "--slice", f"{i}/2") for i in range(2)]
    env.sink.wait_for(lambda s: len(s.messages()) == 6, timeout=30)
    for p in procs:
        p.send_signal(signal.SIGTERM)
    assert [p.wait(20) for p in procs] == [0, 0]
    assert sorted(_header(d.data, "Subject")[0] for d in env.sink.messages()) == \
        [f"[demo] post {i}" for i in range(6)]


def test_serve_starts_children_and_stops_them_on_sigterm(env):
    sock_dir = tempfile.mkdtemp(prefix="lg-notify-")  # short path: AF_UNIX names are limited to 108 bytes
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(os.path.join(sock_dir, "notify"))
    notify.settimeout(30)
    proc = env.spawn("serve", NOTIFY_SOCKET=os.path.join(sock_dir, "notify"))
    try:
        assert notify.recv(4096) == b"READY=1"  # once milter and policy sockets accept connections
        assert env.site.conf.policy.socket.startswith("inet:")
        port = int(env.site.conf.policy.socket.split(":")[1].split("@")[0])
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        pids = wait_until(lambda: _children(proc.pid) if len(_children(proc.pid)) >= 3 else None, timeout=30)
        env.members("a@one.test")
        env.inject(message("a@one.test", "through serve"), sender="a@one.test")
        env.sink.wait_for_message("a@one.test", timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(40) == 0
        notify.close()
        shutil.rmtree(sock_dir, ignore_errors=True)
    time.sleep(0.2)
    assert not [p for p in pids if os.path.exists(f"/proc/{p}") and _state(p) != "Z"]


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry))
    return out


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_runner_waits_out_an_unusable_queue_then_goes_on(env):
    import threading
    from listgate.runner.loop import Runner
    env.members("b@two.test")
    runner = Runner(env.site)
    qin = env.dir / "queue" / "in"
    qin.rename(qin.with_name("in.away"))
    qin.write_text("not a directory")          # every dequeue from 'in' now fails
    worker = threading.Thread(target=runner.run_forever)
    worker.start()
    try:
        time.sleep(0.5)
        assert worker.is_alive()               # it did not die on QueueError
        qin.unlink()
        qin.with_name("in.away").rename(qin)
        env.inject(message("b@two.test", "after the outage"), sender="b@two.test")
        wait_until(lambda: env.sink.messages_for("b@two.test"), timeout=20)
    finally:
        runner.stop()
        worker.join(20)
    assert not worker.is_alive()


@pytest.mark.parametrize("poster", ["a@one.test", "stranger@else.test"])
def test_raw_8bit_message_id_and_subject_are_posted_or_held_not_shunted(env, poster):
    """compat32 hands 8-bit header fields back as Header objects; they must not
    reach JSON metadata (the post would be shunted after the client heard 250)."""
    env.members("a@one.test", "b@two.test")
    raw = (f"From: {poster}\r\nTo: {LIST}\r\nSubject: caf\xe9 au lait\r\n"
           "Message-ID: <caf\xe9@one.test>\r\n\r\nhello\r\n").encode("latin-1")
    env.inject(raw, sender=poster)
    env.run()
    assert env.queue("shunt").ids() == []
    if poster == "a@one.test":
        assert len(env.sink.messages_for("b@two.test")) == 1
    else:
        [held] = env.store.pending("held_message")
        assert held.payload["subject"].startswith("caf")


def test_run_once_ends_when_a_qfile_keeps_being_put_back(env):
    """A store that stays unavailable: --once returns (cron must not pile up
    runners), the qfile waits in 'in' for the next run."""
    import threading
    from listgate.store import close_all
    env.members("b@two.test")
    qid = env.inject(message("b@two.test", "store down"), sender="b@two.test")
    close_all()
    db = env.dir / "lists" / f"{LIST}.db"
    for p in db.parent.glob(f"{LIST}.db*"):
        p.unlink()
    db.mkdir()                                   # the list's store cannot be opened
    result = []
    worker = threading.Thread(target=lambda: result.append(env.run()))
    worker.start()
    worker.join(60)
    assert not worker.is_alive() and result == [0]
    assert env.queue("in").ids() == [qid]


@pytest.mark.parametrize("retry_at", ["tomorrow", 10 ** 400, None, True])
def test_retry_qfile_with_a_damaged_retry_at_is_due_not_a_crash(env, retry_at):
    env.members("b@two.test")
    meta = {"list": LIST, "kind": "post", "retry_at": retry_at,
            "deliveries": [{"rcpt": "b@two.test", "sender": f"demo-bounces@{LIST.split('@')[1]}"}], "done": []}
    env.queue("retry").enqueue(message("a@one.test", "retried"), meta)
    env.run()
    assert env.queue("retry").ids() == [] and env.sink.messages_for("b@two.test")


def test_a_replayed_big_post_queues_each_part_once(env, monkeypatch):
    """A runner killed between two parts of a big post's fan-out: the replay of the
    in-qfile finds the parts already written (waiting or being delivered) and does
    not queue copies of them (issue 20: duplicates at most the transaction in flight)."""
    from listgate.app import posting
    from listgate.queue import derived_id
    from listgate.queue.names import new_id
    members = [f"m{i:04d}@many.test" for i in range(posting.FANOUT_SINGLE + 2 * posting.FANOUT_CHUNK)]
    env.members(*members)
    lc = env.site.get_list("demo", "lists.example.org")
    qid = new_id(1_800_000_000.0)
    out = env.queue("out")
    real_enqueue = out.enqueue.__func__
    calls = []

    def dies_after_two(self, *args, **kw):
        if len(calls) == 2:
            raise SystemExit("runner killed")
        calls.append(kw.get("qid"))
        return real_enqueue(self, *args, **kw)

    monkeypatch.setattr(type(out), "enqueue", dies_after_two)
    with pytest.raises(SystemExit):
        posting.queue_post(env.site, lc, message("a@one.test", "big"), qid=qid)
    monkeypatch.setattr(type(out), "enqueue", real_enqueue)
    taken = out.take(derived_id(qid, 1))        # a delivery thread holds part 2 when the replay comes
    assert taken is not None
    posting.queue_post(env.site, lc, message("a@one.test", "big"), qid=qid)
    assert not set(out.ids()) & set(out.held_ids())   # the held part was not written again
    ids = set(out.ids()) | set(out.held_ids())
    parts = len(members) // posting.FANOUT_CHUNK + (len(members) % posting.FANOUT_CHUNK > 0)
    assert ids == {derived_id(qid, n) for n in range(parts)}
    rcpts = []
    for part_id in ids:
        rcpts += [d["rcpt"] for d in out.peek(part_id).meta["deliveries"]]
    assert sorted(rcpts) == sorted(members)      # every member once, nobody twice


def test_mail_right_behind_its_new_list_file_is_not_shunted(env):
    """A list file written just before its mail (``listgate import``): the runner reads the
    configuration again for a qfile naming a list it does not know, rather than shunt it."""
    from listgate import config
    from listgate.queue import Switchboard
    from listgate.runner.loop import Runner
    from listgate.store import open_store
    runner = Runner(config.Watcher(env.site.path, interval=3600))     # no reload by the clock
    try:
        text = (env.dir / "lists.d" / "demo.yaml").read_text().replace("name: demo", "name: fresh")
        (env.dir / "lists.d" / "fresh.yaml").write_text(text)
        site = config.load(env.site.path)
        fresh = "fresh@lists.example.org"
        open_store(site, fresh).add_member("a@one.test")
        Switchboard.for_site(site, "in").enqueue(message("a@one.test", "first post"), {
            "list": fresh, "role": "post", "envelope_sender": "a@one.test", "recipients": [fresh]})
        runner.run_once(with_tasks=False)
    finally:
        runner.close()
    assert env.queue("shunt").ids() == []
    assert [d.rcpt for d in env.sink.messages_for("a@one.test")] == ["a@one.test"]
    assert runner.watcher.current().get_list(fresh) is not None
