"""Two MX hosts, one list state (issue 18): two private Postfix instances on loopback, each
with its own ``listgate serve`` (milter, policy server, runner) and SMTP sink, sharing one
PostgreSQL store, one VERP signing key file and the same list file.

Each host's runner delivers what its own front ends accepted (queues stay per host); what
one host learns (a score, a probe token, a pending confirmation, an accepted post) the other
sees through the store. The steps run in order, each building on the state the previous
one left, as on a real list. Both hosts' clocks move together (:func:`advance_days`).
"""
from __future__ import annotations

import re
import shutil
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from listgate import clock, config
from listgate.store import close_all
from listgate.store.tokens import is_token

from harness import ACCEPT, TEMPFAIL, available
from harness.postfix import POSTSUPER
from harness.stack import Stack

pytestmark = pytest.mark.skipif(not available(), reason="needs Postfix and root")

ALICE, BOB, DEAD, CAROL, OWNER = ("alice@members.test", "bob@members.test", "dead@members.test",
                                  "carol@members.test", "owner@owners.test")
MEMBERS = (ALICE, BOB, DEAD)
CONFIRM_RE = re.compile(rb"demo-confirm\+([a-z2-7]{26})@lists\.example\.org")
DISABLED_NOTICE = b"disabled because mail to your address"  # templates/notices/disabled.txt
WARNINGS = 3                                        # bounce_you_are_disabled_warnings
_seq = iter(range(1, 10_000))
STATE: dict = {}                                    # what one step leaves the next


def _share(pg_server, dbname: str, shared: dict):
    """A ``Stack(prepare=...)`` hook: the store on ``dbname``; the second host takes the first
    host's VERP key file (by absolute path) and list file, so nothing is host-local."""
    def prepare(site_path: str) -> None:
        base = Path(site_path).parent
        text = Path(site_path).read_text(encoding="utf-8")
        own = re.search(r"- id: (k[0-9a-f]+)\n\s+file: (\S+)\n", text)
        if "key" in shared:
            key_id, key_file = shared["key"]
            text = text.replace(own.group(0), f"- id: {key_id}\n      file: {key_file}\n")
            (base / own.group(2)).unlink()
            shutil.copyfile(shared["lists"] / "demo.yaml", base / "lists.d" / "demo.yaml")
        else:
            shared["key"] = (own.group(1), str(base / own.group(2)))
            shared["lists"] = base / "lists.d"
            list_file = base / "lists.d" / "demo.yaml"    # a probe at the second scored day
            list_file.write_text(list_file.read_text(encoding="utf-8").replace(
                "bounce_score_threshold: 5.0\n", "bounce_score_threshold: 2.0\n"), encoding="utf-8")
        text += (f"store:\n  url: {pg_server.url(dbname)}\n  password_file: {pg_server.password_file}\n"
                 "  pool: {min: 0, max: 4}\n  connect_timeout: 3s\n  statement_timeout: 5s\n")
        Path(site_path).write_text(text, encoding="utf-8")
        if "schema" not in shared:                  # `listgate store init`, once, by the first host
            from listgate.store import init_schema
            init_schema(config.load(site_path).conf.store)
            shared["schema"] = True
    return prepare


@pytest.fixture(scope="module")
def mx(pg_server):
    dbname = pg_server.new_database()
    shared: dict = {}
    with ExitStack() as stack:
        mx1 = stack.enter_context(Stack(owner=OWNER, prepare=_share(pg_server, dbname, shared)))
        mx2 = stack.enter_context(Stack(owner=OWNER, prepare=_share(pg_server, dbname, shared)))
        stack.callback(close_all)
        for member in MEMBERS:
            mx1.listgate("members", "add", "demo", member)
        yield mx1, mx2


@pytest.fixture(autouse=True)
def stack_clock(mx, monkeypatch):
    monkeypatch.setenv(clock.ENV_VAR, mx[0].clock_file)
    clock.reset()


def advance_days(mx, days: float) -> None:
    for st in mx:
        st.advance_days(days)


def settle(mx) -> None:
    for st in mx:
        st.settle()


def post_bytes(subject: str, mid: str, sender: str = ALICE) -> bytes:
    return (f"From: Alice <{sender}>\r\nTo: demo@lists.example.org\r\nSubject: {subject}\r\n"
            f"Message-ID: {mid}\r\n\r\nBody of {subject}\r\n").encode()


def new_mid() -> str:
    return f"<mx-{next(_seq)}-{time.monotonic_ns()}@members.test>"


def received(mx, rcpt: str, needle: bytes) -> list:
    """Deliveries to ``rcpt`` containing ``needle``, from both hosts' sinks, as (host, delivery)."""
    return [(n, d) for n, st in enumerate(mx, 1) for d in st.sink.messages_for(rcpt) if needle in d.data]


def dsn(rcpt: str, to: str, message_id: str) -> bytes:
    """An RFC 3464 DSN: ``rcpt`` does not exist (5.1.1), about ``message_id``, sent to ``to``."""
    return (f"From: MAILER-DAEMON@mx.members.test\r\nTo: {to}\r\nSubject: Undelivered Mail Returned to Sender\r\n"
            f"Message-ID: <dsn-{next(_seq)}-{time.monotonic_ns()}@mx.members.test>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n"
            f"--b\r\nContent-Type: text/plain\r\n\r\n<{rcpt}>: 550 5.1.1 User unknown\r\n\r\n"
            "--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.members.test\r\n\r\n"
            f"Final-Recipient: rfc822; {rcpt}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
            "Diagnostic-Code: smtp; 550 5.1.1 User unknown\r\n\r\n"
            "--b\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: Alice <alice@members.test>\r\n"
            f"To: demo@lists.example.org\r\nMessage-ID: {message_id}\r\n\r\n--b--\r\n").encode()


def actions(st: Stack, member: str) -> list[str]:
    return [e.action for e in reversed(st.store().events(address=member, limit=100000))]


def test_1_a_post_through_mx1_is_delivered_once_to_every_member(mx):
    mx1, mx2 = mx
    mid = new_mid()
    assert mx1.send(ALICE, ["demo@lists.example.org"], post_bytes("first post", mid)) == {}
    for member in MEMBERS:
        mx1.wait_until(lambda: received(mx, member, mid.encode()), 60, what=f"the post for {member}")
    settle(mx)
    # MX 1's runner delivered what MX 1 accepted, once per member
    assert {m: [n for n, _ in received(mx, m, mid.encode())] for m in MEMBERS} == {m: [1] for m in MEMBERS}
    STATE["first_post"] = mid


def test_2_the_same_post_retried_to_mx2_is_dropped_as_a_duplicate(mx):
    mx1, mx2 = mx
    mid = STATE["first_post"]
    log_start = len(mx2.serve_text())
    assert mx2.send(ALICE, ["demo@lists.example.org"], post_bytes("first post", mid)) == {}
    mx2.wait_until(lambda: "duplicate" in mx2.serve_text()[log_start:], 60, what="MX 2 to drop the duplicate")
    settle(mx)
    assert {m: len(received(mx, m, mid.encode())) for m in MEMBERS} == {m: 1 for m in MEMBERS}


def test_3_a_bounce_through_mx2_scores(mx):
    mx1, mx2 = mx
    [(_, got)] = received(mx, DEAD, STATE["first_post"].encode())
    verp_address = got.mail_from                   # signed by MX 1 with the shared key
    assert verp_address.startswith("demo-bounces+")
    result = mx2.send("", [verp_address], dsn(DEAD, verp_address, STATE["first_post"]))
    assert result == {}, mx2.serve_text()[-3000:]
    mx2.wait_until(lambda: mx1.member(DEAD).bounce_score == 1.0, 60, what="the bounce scored")
    assert "scored" in actions(mx1, DEAD)
    assert mx2.member(DEAD).delivery_status == "enabled"


def _probe_in_queue(st: Stack) -> list[dict]:
    return [rec for rec in st.pf.queue() if rec["sender"].startswith("demo-bounces+")
            and is_token(rec["sender"].split("@")[0].split("+", 1)[1])]


def test_4_the_probe_sent_from_mx1_is_accepted_everywhere_and_its_bounce_disables_through_mx2(mx):
    mx1, mx2 = mx
    advance_days(mx, 1)
    mid = new_mid()
    assert mx1.send(ALICE, ["demo@lists.example.org"], post_bytes("second post", mid)) == {}
    mx1.wait_until(lambda: received(mx, DEAD, mid.encode()), 60, what="the second post for dead@")
    settle(mx)
    [(_, got)] = received(mx, DEAD, mid.encode())
    # dead@'s server now answers 4xx: the probe waits in the sending host's Postfix queue
    for st in mx:
        st.sink.set_behaviour(DEAD, TEMPFAIL)
    assert mx1.send("", [got.mail_from], dsn(DEAD, got.mail_from, mid)) == {}
    mx1.wait_until(lambda: "probe_sent" in actions(mx1, DEAD), 60, what="the threshold's probe")
    found = mx1.wait_until(lambda: [(st, rec) for st in mx for rec in _probe_in_queue(st)], 60,
                           what="the probe in a Postfix queue")
    [(sender_host, rec)] = found
    assert sender_host is mx1                      # the bounce that reached the threshold came through MX 1
    probe_address = rec["sender"]
    # its address is refused nowhere: both policy servers know the token (RCPT only, then RSET)
    for st in mx:
        with st.pf.smtp() as client:
            client.ehlo("mx.members.test")
            assert client.mail("")[0] == 250
            code, text = client.rcpt(probe_address)
            assert code == 250, (st, code, text)
            client.rset()
    # the member's server gives up: MX 1 drops its copy, the DSN arrives through MX 2
    mx1.pf._run([POSTSUPER, "-c", str(mx1.pf.config_dir), "-d", rec["queue_id"]])
    for st in mx:
        st.sink.set_behaviour(DEAD, ACCEPT)
    assert mx2.send("", [probe_address], dsn(DEAD, probe_address, "<probe@lists.example.org>")) == {}
    mx2.wait_until(lambda: mx1.member(DEAD).delivery_status == "by_bounce", 60, what="the probe's bounce to disable")
    assert actions(mx1, DEAD).count("probe_sent") == 1
    assert "disabled" in actions(mx1, DEAD)
    assert mx1.store().peek_pending(probe_address.split("@")[0].split("+", 1)[1]) is None   # spent once
    settle(mx)


def test_5_a_subscription_requested_through_mx1_is_confirmed_through_mx2(mx):
    mx1, mx2 = mx
    join = (f"From: Carol <{CAROL}>\r\nTo: demo-join@lists.example.org\r\nSubject: join\r\n"
            f"Message-ID: {new_mid()}\r\n\r\nplease add me\r\n").encode()
    assert mx1.send(CAROL, ["demo-join@lists.example.org"], join) == {}
    [conf] = mx1.sink.wait_for_message(CAROL, timeout=60)
    token = CONFIRM_RE.search(conf.data).group(1).decode()
    assert mx2.member(CAROL) is None
    reply = (f"From: {CAROL}\r\nTo: demo-confirm+{token}@lists.example.org\r\nSubject: Re: confirm\r\n"
             f"Message-ID: {new_mid()}\r\n\r\nyes\r\n").encode()
    assert mx2.send(CAROL, [f"demo-confirm+{token}@lists.example.org"], reply) == {}
    mx2.wait_until(lambda: mx1.member(CAROL) is not None, 60, what="carol to become a member")
    assert mx1.member(CAROL).delivery_status == "enabled"
    assert mx1.store().peek_pending(token) is None
    settle(mx)


def _tasks_ran_since(st: Stack, when: float) -> bool:
    from listgate.runner import tasks
    last = tasks.last_run(st.site)
    return last is not None and last >= when


def test_6_two_runners_run_the_periodic_tasks_and_each_notice_goes_out_once(mx):
    mx1, mx2 = mx
    notices = len(received(mx, DEAD, DISABLED_NOTICE))     # the one sent when dead@ was disabled
    assert notices == 1
    interval_days = mx1.lc.bounce_you_are_disabled_warnings_interval / 86400
    for period in range(1, WARNINGS):
        advance_days(mx, interval_days)
        now = clock.now()
        mx1.wait_until(lambda: len(received(mx, DEAD, DISABLED_NOTICE)) > notices, 60,
                       what=f"notice {period + 1}")
        for st in mx:                                       # both runners have run their tasks since
            st.wait_until(lambda: _tasks_ran_since(st, now), 60, what="the runner's periodic tasks")
        time.sleep(2)                                       # more runs of both, over the lease
        settle(mx)
        notices += 1
        assert len(received(mx, DEAD, DISABLED_NOTICE)) == notices
        assert actions(mx1, DEAD).count("notice_sent") == period
    # the last notice's interval passes: removed once, the owner told once
    advance_days(mx, interval_days)
    mx1.wait_until(lambda: mx1.member(DEAD) is None, 60, what="dead@ removed")
    time.sleep(2)
    settle(mx)
    assert actions(mx1, DEAD).count("removed") == 1
    assert len(received(mx, OWNER, b"has removed the")) == 1        # templates/bounce_owner_member.txt
    # the lease did its work: a runner found the list's tasks taken by the other host's runner
    assert any("periodic tasks run elsewhere" in st.serve_text() for st in mx)
    assert len(received(mx, DEAD, DISABLED_NOTICE)) == notices
