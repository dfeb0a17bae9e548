"""Postfix with the policy service at RCPT and list mail delivered over LMTP
(INSTALL's main.cf.listgate-lmtp, rendered by the harness), ``listgate serve``
running the LMTP server: a post reaches the members, a bounce is scored, a forged
bounce address is refused at RCPT, and mail waits in Postfix's queue while the
LMTP server does not answer, then is delivered."""
from __future__ import annotations

import os
import signal
import smtplib
import time

import pytest

from listgate import verp

from harness import available
from harness.stack import Stack

pytestmark = pytest.mark.skipif(not available(), reason="needs root and an installed Postfix")

ALICE, BOB, USERX = "alice@members.test", "bob@members.test", "userx@example.com"


@pytest.fixture(scope="module")
def st():
    # lmtp_lhlo_timeout: a stopped LMTP server costs a test seconds, not Postfix's 5 minutes
    with Stack(owner="owner@owners.test", front_end="lmtp") as stack:
        stack.pf.set(lmtp_lhlo_timeout="3s")
        yield stack


def post(st, subject: str) -> str:
    mid = f"<lmtp-{time.monotonic_ns()}@members.test>"
    msg = (f"From: Alice <{ALICE}>\r\nTo: demo@lists.example.org\r\nSubject: {subject}\r\n"
           f"Message-ID: {mid}\r\n\r\nbody \xe9\r\n").encode()
    assert st.send(ALICE, ["demo@lists.example.org"], msg) == {}
    return mid


def test_1_post_delivered_to_members_through_lmtp(st):
    for m in (ALICE, BOB):
        st.listgate("members", "add", "demo", m)
    mid = post(st, "over LMTP")
    st.sink.wait_for_message(BOB, timeout=60)
    [got] = [d for d in st.sink.messages_for(BOB) if mid.encode() in d.data]
    # LMTP gets the message with Postfix's own Received: field for the hop into this MX
    # (only the milter path has to write it: test_e2e)
    first_hop = got.message().get_all("Received")[-1]
    assert first_hop.startswith("from client.listgate.test") and "by mx.listgate.test (Postfix)" in first_hop
    st.pf.wait_log(r"to=<demo@lists\.example\.org>, relay=.*lmtp\.sock.*status=sent \(250 2\.0\.0 stored")
    assert "milter" not in st.pf.postconf("-n")


def test_2_bounce_scored(st, corpus):
    st.listgate("members", "add", "demo", USERX)
    dsn = (corpus / "flufl.bounce/dsn_13.txt").read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    rcpt = verp.member_bounce_address(st.site, st.lc, USERX)    # plain-address DSNs never score VERP members
    assert st.send("", [rcpt], dsn) == {}
    st.wait_until(lambda: st.member(USERX).bounce_score == 1.0, 60, what="the bounce to be scored")


def test_3_forged_bounce_refused_at_rcpt(st):
    good = verp.member_bounce_address(st.site, st.lc, BOB)
    local, domain = good.split("@")
    forged = local[:-4] + ("aaaa" if not local.endswith("aaaa") else "bbbb") + "@" + domain
    result = st.send("", [forged], b"From: MAILER-DAEMON@example.net\r\nSubject: x\r\n\r\n550 5.1.1 gone\r\n")
    assert isinstance(result, smtplib.SMTPRecipientsRefused)
    code, text = result.recipients[forged]
    assert code == 550 and text.startswith(b"5.1.1")
    assert st.member(BOB).bounce_score == 0


def test_4_lmtp_server_not_answering_postfix_defers_then_delivers(st):
    pid = st.child_pid("lmtp")
    assert pid
    since = st.pf.log_offset()
    os.kill(pid, signal.SIGSTOP)
    try:
        mid = post(st, "while LMTP is stopped")
        st.pf.wait_log(r"to=<demo@lists\.example\.org>.*status=deferred", since=since, timeout=60)
        assert st.pf.queue()                      # still in Postfix's queue, nothing lost
    finally:
        os.kill(pid, signal.SIGCONT)
    st.pf.wait_queue_empty(timeout=60)
    st.wait_until(lambda: any(mid.encode() in d.data for d in st.sink.messages_for(BOB)), 60,
                  what="the deferred post to reach bob")
