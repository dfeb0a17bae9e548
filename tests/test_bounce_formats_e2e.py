"""End to end on a real Postfix (issue 14, root causes 6 and 7): reports for the postmaster.

A list with ``complaint_action: unsubscribe``. An RFC 6591 ``auth-failure``
feedback report (a DMARC failure report naming the member) reaching the
list's bounce address or the member's VERP address changes nothing for the
member; the site's postmaster gets it. An RFC 5965 ``abuse`` report still
unsubscribes (the contrast), and an RFC 8460 TLS report sent to ``-owner``
goes to the postmaster, not the owners.
"""
from __future__ import annotations

import time

import pytest

from listgate import verp

from harness import available
from harness.stack import Stack

pytestmark = pytest.mark.skipif(not available(), reason="needs Postfix and root")

ALICE, BOB, OWNER, POSTMASTER = ("alice@members.test", "bob@members.test", "owner@owners.test",
                                 "hostmaster@site.test")


def _feedback_report(feedback_type: str, member: str, mid: str, extra: str = "") -> bytes:
    """An ARF report in the shape of RFC 5965 Appendix B / RFC 6591 Appendix B."""
    return (
        f"From: <dmarc-reports@receiver.test>\r\nTo: <postmaster@lists.example.org>\r\n"
        f"Subject: report {feedback_type}\r\nMessage-ID: {mid}\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=feedback-report; boundary="b1"\r\n\r\n'
        f"--b1\r\nContent-Type: text/plain\r\n\r\nA report of type {feedback_type}.\r\n"
        f"--b1\r\nContent-Type: message/feedback-report\r\n\r\n"
        f"Feedback-Type: {feedback_type}\r\nUser-Agent: Receiver/1.0\r\nVersion: 1\r\n{extra}"
        f"Original-Mail-From: <demo-bounces@lists.example.org>\r\nOriginal-Rcpt-To: <{member}>\r\n"
        f"Arrival-Date: Tue, 1 Apr 2025 10:00:00 +0000\r\nSource-IP: 192.0.2.1\r\nReported-Domain: lists.example.org\r\n"
        f"\r\n--b1\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: Alice <{ALICE}>\r\nTo: demo@lists.example.org\r\nSubject: [demo] hello\r\n"
        f"Message-ID: <orig@members.test>\r\n\r\n--b1--\r\n").encode()


def _tls_report(mid: str) -> bytes:
    """An SMTP TLS report as RFC 8460 section 5.3 describes it (gzip part, report headers)."""
    return (
        f"From: tlsrpt@mail.receiver.test\r\nTo: demo-owner@lists.example.org\r\n"
        f"Subject: Report Domain: lists.example.org Submitter: mail.receiver.test Report-ID: <x@receiver.test>\r\n"
        f"TLS-Report-Domain: lists.example.org\r\nTLS-Report-Submitter: mail.receiver.test\r\n"
        f"Message-ID: {mid}\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type="tlsrpt"; boundary="b2"\r\n\r\n'
        f"--b2\r\nContent-Type: text/plain\r\n\r\nThis is an aggregate TLS report from mail.receiver.test\r\n"
        f"--b2\r\nContent-Type: application/tlsrpt+gzip\r\nContent-Transfer-Encoding: base64\r\n"
        f'Content-Disposition: attachment; filename="mail.receiver.test!lists.example.org!1!2.json.gz"\r\n\r\n'
        f"H4sIAAAAAAACA6tWyi9KT8zLrEosyczP081LzE1VslJQCkpNTs0sSy1S0lFQKkotyC8q0c1MAUlUOBRBpfRKUotLQPIF+TmZyZmpxUDp6NhaAAul72hRAAAA\r\n--b2--\r\n").encode()


@pytest.fixture(scope="module")
def st():
    with Stack(owner=OWNER, list_settings="complaint_action: unsubscribe\n",
               site_settings=f"postmaster: {POSTMASTER}\n") as stack:
        yield stack


def _postmaster_got(st: Stack, needle: str) -> list:
    return [d for d in st.sink.messages_for(POSTMASTER) if needle.encode() in d.data]


def test_auth_failure_report_changes_nothing_for_the_member(st):
    for member in (ALICE, BOB):
        st.listgate("members", "add", "demo", member)
    mid = f"<post-{time.monotonic_ns()}@members.test>"
    post = (f"From: Alice <{ALICE}>\r\nTo: demo@lists.example.org\r\nSubject: hello\r\n"
            f"Message-ID: {mid}\r\n\r\nhello\r\n").encode()
    assert st.send(ALICE, ["demo@lists.example.org"], post) == {}
    st.wait_until(lambda: [d for d in st.sink.messages_for(ALICE) if mid.encode() in d.data], 60,
                  what="the post for alice")
    [got] = [d for d in st.sink.messages_for(ALICE) if mid.encode() in d.data]
    alice_verp = got.mail_from                     # the member's signed VERP address
    assert alice_verp.startswith("demo-bounces+")
    st.settle()
    before = st.member(ALICE)

    extra = "Auth-Failure: dmarc\r\nDelivery-Result: reject\r\nIdentity-Alignment: dkim,spf\r\n"
    for n, rcpt in enumerate((st.address("bounces"), alice_verp)):
        report_id = f"<auth-failure-{n}-{time.monotonic_ns()}@receiver.test>"
        assert st.send("", [rcpt], _feedback_report("auth-failure", ALICE, report_id, extra)) == {}
        st.wait_until(lambda: _postmaster_got(st, report_id), 60, what=f"the report to {rcpt} at the postmaster")
    st.settle()
    after = st.member(ALICE)
    assert after is not None, "an auth-failure report must never unsubscribe"
    assert (after.delivery_status, after.bounce_score, after.last_bounce_day) == \
        (before.delivery_status, before.bounce_score, before.last_bounce_day) == ("enabled", 0.0, None)
    assert not st.store().events(address=ALICE)
    actions = [(e.action, e.bounce_class) for e in st.store().events(limit=100)]
    assert actions.count(("postmaster", "report")) == 2
    assert not [d for d in st.sink.messages_for(OWNER) if b"auth-failure" in d.data]


def test_abuse_report_still_unsubscribes(st):
    report_id = f"<abuse-{time.monotonic_ns()}@receiver.test>"
    # through BOB's VERP address: a complaint to the plain bounce address proves nothing (issue 20)
    # (this module never moves the stack's clock, so this process signs with the same day)
    address = verp.member_bounce_address(st.site, st.lc, BOB)
    assert st.send("", [address], _feedback_report("abuse", BOB, report_id)) == {}
    st.wait_until(lambda: st.member(BOB) is None, 60, what="the complaining member to be unsubscribed")
    assert st.member(ALICE) is not None
    assert not _postmaster_got(st, report_id)


def test_tls_report_to_owner_goes_to_the_postmaster(st):
    report_id = f"<tlsrpt-{time.monotonic_ns()}@receiver.test>"
    assert st.send("tlsrpt@mail.receiver.test", [st.address("owner")], _tls_report(report_id)) == {}
    st.wait_until(lambda: _postmaster_got(st, report_id), 60, what="the TLS report at the postmaster")
    st.settle()
    assert not [d for d in st.sink.messages_for(OWNER) if report_id.encode() in d.data]
