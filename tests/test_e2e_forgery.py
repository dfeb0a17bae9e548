"""Forged bounces and complaints on the real Postfix (issue 20); probes answered by DSN (issue 15, item 3).

The whole stack (harness.stack): a private Postfix from INSTALL's snippets,
``listgate serve`` and an SMTP sink standing in for the members' servers
(``dead@`` is refused with 550 5.1.1, everybody else accepted). A hard
bounce weighs the whole threshold, so one genuine bounce starts a probe; the list unsubscribes
on complaints. Steps run in order on one list; each leaves what the next needs.
"""
from __future__ import annotations

import smtplib
import time

import pytest

from listgate import clock, verp

from harness import UNKNOWN, available
from harness.stack import Stack

pytestmark = pytest.mark.skipif(not available(), reason="needs Postfix and root")

ALICE, BOB, CAROL, DEAD, OWNER = ("alice@members.test", "bob@members.test", "carol@members.test",
                                  "dead@members.test", "owner@owners.test")
PLAIN = "demo-bounces@lists.example.org"
_seq = iter(range(1, 10_000))


def bare_dsn(rcpt: str, to: str = PLAIN, *, message_id: str = "<made-up@elsewhere.test>") -> bytes:
    """A well-formed RFC 3464 DSN naming ``rcpt``, as anyone can write one."""
    return (f"From: MAILER-DAEMON@mx.elsewhere.test\r\nTo: {to}\r\nSubject: Undelivered Mail Returned to Sender\r\n"
            f"Message-ID: <dsn-{next(_seq)}-{time.monotonic_ns()}@mx.elsewhere.test>\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n"
            f"--b\r\nContent-Type: text/plain\r\n\r\n<{rcpt}>: 550 5.1.1 User unknown\r\n\r\n"
            f"--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.elsewhere.test\r\n\r\n"
            f"Final-Recipient: rfc822; {rcpt}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
            f"Diagnostic-Code: smtp; 550 5.1.1 User unknown\r\n\r\n"
            f"--b\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: x@elsewhere.test\r\nTo: demo@lists.example.org\r\n"
            f"Message-ID: {message_id}\r\n\r\n--b--\r\n").encode()


def arf(complainer: str, to: str) -> bytes:
    """An RFC 5965 abuse report naming ``complainer``; the reported message is not one of ours."""
    return (f"From: fbl@isp.test\r\nTo: {to}\r\nSubject: complaint\r\n"
            f"Message-ID: <fbl-{next(_seq)}-{time.monotonic_ns()}@isp.test>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/report; report-type=feedback-report; boundary=fb\r\n\r\n"
            "--fb\r\nContent-Type: text/plain\r\n\r\nAn abuse report.\r\n\r\n"
            "--fb\r\nContent-Type: message/feedback-report\r\n\r\n"
            f"Feedback-Type: abuse\r\nUser-Agent: fbl/1\r\nVersion: 1\r\nOriginal-Rcpt-To: {complainer}\r\n\r\n"
            "--fb\r\nContent-Type: message/rfc822\r\n\r\nFrom: x@elsewhere.test\r\nTo: demo@lists.example.org\r\n"
            "Subject: [demo] something\r\nMessage-ID: <not-ours@elsewhere.test>\r\n\r\nbody\r\n--fb--\r\n").encode()


def actions(st: Stack, member: str) -> list[str]:
    return [e.action for e in st.store().events(address=member)]


@pytest.fixture(scope="module")
def st():
    with Stack(behaviours={DEAD: UNKNOWN}, owner=OWNER,
               list_settings="bounce_weights:\n  hard: 5.0\ncomplaint_action: unsubscribe\n") as stack:
        for member in (ALICE, BOB, CAROL):
            stack.listgate("members", "add", "demo", member)
        yield stack


@pytest.fixture(autouse=True)
def stack_clock(st, monkeypatch):
    # VERP addresses are dated: this process must sign with the stack's clock (conftest resets ours)
    monkeypatch.setenv(clock.ENV_VAR, st.clock_file)
    clock.reset()


def test_1_bare_dsns_naming_a_verp_member_for_ten_days_never_score(st):
    for day in range(10):
        assert st.send("", [PLAIN], bare_dsn(ALICE)) == {}
        st.wait_until(lambda: len(actions(st, ALICE)) == day + 1, 60, what="the forged DSN recorded")
        st.advance_days(1)
    st.settle()
    assert actions(st, ALICE) == ["unverified"] * 10
    member = st.member(ALICE)
    assert (member.delivery_status, member.bounce_score) == ("enabled", 0.0)
    assert [p for p in st.store().pending("probe") if p.payload.get("member") == ALICE] == []
    assert [d for d in st.sink.messages_for(ALICE) if b"checking your address" in d.data] == []


def test_2_expired_verp_address_refused_at_rcpt(st):
    address = verp.member_bounce_address(st.site, st.lc, ALICE)
    assert st.send("", [address], bare_dsn(ALICE, address)) == {}      # today's: accepted
    st.wait_until(lambda: len(actions(st, ALICE)) == 11, 60, what="the VERP bounce handled")
    st.advance_days(15)
    result = st.send("", [address], bare_dsn(ALICE, address))
    assert isinstance(result, smtplib.SMTPRecipientsRefused), result
    code, text = result.recipients[address]
    assert code == 550 and text.startswith(b"5.1.1") and b"expired" in text
    st.settle()
    assert len(actions(st, ALICE)) == 11


def test_3_forged_complaint_to_the_plain_address_changes_nothing(st):
    assert st.send("", [PLAIN], arf(BOB, PLAIN)) == {}
    st.wait_until(lambda: actions(st, BOB) == ["complaint_unverified"], 60, what="the forged complaint recorded")
    assert st.member(BOB).delivery_status == "enabled"
    st.sink.wait_for(lambda s: [d for d in s.messages_for(OWNER) if b"nothing done" in d.data], 60)


def test_4_genuine_complaint_through_the_verp_address_acts(st):
    address = verp.member_bounce_address(st.site, st.lc, CAROL)
    assert st.send("", [address], arf(CAROL, address)) == {}
    st.wait_until(lambda: st.member(CAROL) is None, 60, what="the complainer unsubscribed")


def _probe_by_one_verp_bounce(st: Stack, member: str) -> None:
    address = verp.member_bounce_address(st.site, st.lc, member)
    assert st.send("", [address], bare_dsn(member, address)) == {}
    st.wait_until(lambda: "probe_sent" in actions(st, member), 60, what=f"a probe to {member}")


def test_5_probe_delivered_closes_within_one_runner_cycle(st):
    st.advance_days(1)
    _probe_by_one_verp_bounce(st, BOB)
    # the sink accepts the probe; Postfix returns a success DSN ("relayed": the sink offers no DSN)
    st.wait_until(lambda: "probe_delivered" in actions(st, BOB), 60, what="the success DSN to close the probe")
    [probe] = [d for d in st.sink.messages_for(BOB) if b"checking your address" in d.data]
    assert probe.mail_from.startswith("demo-bounces+")
    assert [p for p in st.store().pending("probe") if p.payload.get("member") == BOB] == []
    member = st.member(BOB)
    assert (member.delivery_status, member.bounce_score) == ("enabled", 0.0)
    # Postfix got NOTIFY=SUCCESS through the re-injection listener and sent the success DSN itself
    st.pf.wait_log(r"sender delivery status notification", timeout=5)


def test_6_probe_to_a_failing_address_disables(st):
    st.listgate("members", "add", "demo", DEAD)
    _probe_by_one_verp_bounce(st, DEAD)
    st.wait_until(lambda: st.member(DEAD).delivery_status == "by_bounce", 60, what="the probe bounce to disable")
    assert "probe_delivered" not in actions(st, DEAD)
