"""PostgreSQL stopped mid-traffic, on the whole stack (issue 18): Postfix, ``listgate serve``
(milter, policy server, runner) and an SMTP sink, the store on a private PostgreSQL.

While the database is down, Postfix's client gets ``451`` for list mail: at RCPT for a post (the
policy server cannot decide without the store), at end of data for a signed VERP bounce (the
milter cannot register it), and retries, as an MTA would; what was accepted just
before the stop waits in listgate's queue. Mail with no list recipient is accepted and delivered
all along: neither the policy server nor the milter asks the store about it. When the database is back, every post reaches each
member exactly once, bounces score, and no daemon was restarted (the same pids).
"""
from __future__ import annotations

import re
import smtplib
import time

import pytest

from listgate import clock
from listgate.store import close_all

from engine_helpers import dsn
from harness import available
from harness.stack import Stack
from pg_helpers import use_postgres

pytestmark = pytest.mark.skipif(not available(), reason="needs Postfix and root")

ALICE, BOB, DEAD = "alice@members.test", "bob@members.test", "dead@members.test"
OUTSIDER = "carol@members.test"         # no list address: Postfix delivers it to the sink
MEMBERS = (ALICE, BOB, DEAD)
POST = "demo@lists.example.org"
DAEMONS = ("milter", "policy", "runner")


def post_bytes(n: int) -> tuple[str, bytes]:
    mid = f"<outage-{n}-{time.monotonic_ns()}@members.test>"
    return mid, (f"From: Alice <{ALICE}>\r\nTo: {POST}\r\nSubject: post {n}\r\n"
                 f"Message-ID: {mid}\r\n\r\nBody of post {n}\r\n").encode()


def refused(result) -> tuple[str, int] | None:
    """Where and with what code a single-recipient send was refused (``("RCPT", 451)``,
    ``("DATA", 451)``), or None when it was accepted."""
    if result == {}:
        return None
    if isinstance(result, smtplib.SMTPRecipientsRefused):
        [(code, _)] = result.recipients.values()
        return "RCPT", code
    if isinstance(result, smtplib.SMTPDataError):
        return "DATA", result.smtp_code
    raise AssertionError(f"unexpected send result {result!r}")


@pytest.fixture
def st(pg_server):
    with Stack(prepare=lambda path: use_postgres(path, pg_server)) as stack:
        try:
            for member in MEMBERS:
                stack.listgate("members", "add", "demo", member)
            yield stack
        finally:
            if not _running(pg_server):         # a failed step left it stopped: the next test needs it
                pg_server.start()
            close_all()


def _running(pg_server) -> bool:
    return pg_server._pg("pg_ctl", "-D", pg_server.data, "status", check=False).returncode == 0


def _unavailable(log: str) -> str:
    """The daemons (``daemon=NAME`` of the logfmt lines) that logged a store failure in ``log``, space-separated."""
    return " ".join(re.search(r" daemon=(\S+)", line).group(1) for line in log.splitlines()
                    if " level=warning " in line and "couldn't get a connection" in line)


def same_daemons(st: Stack, pids: dict[str, int], names) -> None:
    """Serve's children ``names`` are the processes in ``pids``: none was restarted (a restarted
    one has a new pid)."""
    want = {name: pids[name] for name in names}
    assert {name: st.child_pid(name) for name in names} == want, st.serve_text()[-4000:]


def delivered(st: Stack, rcpt: str, mid: str) -> int:
    return sum(mid.encode() in d.data for d in st.sink.messages_for(rcpt))


def test_postgresql_stopped_mid_traffic_4xx_nothing_lost_resumes_without_restart(st, pg_server, monkeypatch):
    monkeypatch.setenv(clock.ENV_VAR, st.clock_file)
    clock.reset()
    first_mid, first = post_bytes(1)
    assert st.send(ALICE, [POST], first) == {}
    for member in MEMBERS:
        st.wait_until(lambda: delivered(st, member, first_mid), 60, what=f"post 1 for {member}")
    [got] = [d for d in st.sink.messages_for(DEAD) if first_mid.encode() in d.data]
    verp_address = got.mail_from
    assert verp_address.startswith("demo-bounces+")
    pids = {name: st.child_pid(name) for name in DAEMONS}
    assert all(pids.values()), pids

    # mid-traffic: a post accepted, and the database stopped before the runner may have fanned it out
    racing_mid, racing = post_bytes(2)
    assert st.send(ALICE, [POST], racing) == {}
    log_start = len(st.serve_text())
    pg_server.stop()
    try:
        outage = [post_bytes(n) for n in (3, 4)]
        for _, msg in outage:
            assert refused(st.send(ALICE, [POST], msg)) == ("RCPT", 451)
        plain_mid, plain = post_bytes(5)
        assert st.send(ALICE, [OUTSIDER], plain) == {}      # the non-list path never reaches the store
        st.wait_until(lambda: delivered(st, OUTSIDER, plain_mid), 60, what="mail with no list recipient delivered")
        # a signed VERP address passes RCPT (the signature needs no store); the milter cannot
        # register the bounce at end of data and tempfails it there
        bounce_down = refused(st.send("", [verp_address], dsn(DEAD, original_message_id=first_mid)))
        assert bounce_down == ("DATA", 451), bounce_down
        # the runner keeps running, and waits: its periodic tasks (every second) find the store gone
        st.wait_until(lambda: "runner" in _unavailable(st.serve_text()[log_start:]), 30,
                      what="the runner to find the store unavailable")
        same_daemons(st, pids, ("policy", "runner"))
    finally:
        pg_server.start()

    # the client retries, as an MTA would, until accepted
    for _, msg in outage:
        st.wait_until(lambda: st.send(ALICE, [POST], msg) == {}, 60, interval=1, what="a retried post accepted")
    st.wait_until(lambda: st.send("", [verp_address], dsn(DEAD, original_message_id=first_mid)) == {}, 60, interval=1,
                  what="the retried bounce accepted")
    for mid in [first_mid, racing_mid, *(m for m, _ in outage)]:
        for member in MEMBERS:
            st.wait_until(lambda: delivered(st, member, mid), 60, what=f"{mid} for {member}")
    st.wait_until(lambda: st.member(DEAD).bounce_score >= 1.0, 60, what="the bounce scored")
    st.settle()
    assert {(mid, m): delivered(st, m, mid) for mid in [first_mid, racing_mid, *(m for m, _ in outage)]
            for m in MEMBERS} == {(mid, m): 1 for mid in [first_mid, racing_mid, *(m for m, _ in outage)]
                                  for m in MEMBERS}
    assert st.member(DEAD).bounce_score == 1.0
    assert st.serve.poll() is None
    assert pg_server.password not in st.serve_text()
    # no daemon restarted: the milter runs its store calls on Python-made threads
    # (listgate.milter.app.CoreThreads), where psycopg's notice receiver may call back
    assert "child exited" not in st.serve_text(), st.serve_text()[-3000:]
    same_daemons(st, pids, ("policy", "runner", "milter"))
