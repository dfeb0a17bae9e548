"""End to end on a real Postfix (issue 14): who a refusal is about decides what it does.

``blocked@``'s server refuses the list's mail at ``MAIL FROM`` (before any
recipient is named, RFC 5321 section 3.3) with a blocklist text: our host is
refused, not the member's address, so the member is never scored however
often it happens. ``closed@``'s server says the account is disabled at
``RCPT`` with ``550 5.7.13`` (RFC 5248 "User Account Disabled"): a dead
address, scored, probed and disabled. Postfix writes the DSNs itself
("(in reply to MAIL FROM command)"), they come back to each member's VERP
address and go through the engine. Days pass through the clock file.
"""
from __future__ import annotations

import time

import pytest

from listgate import clock, verp

from harness import available
from harness.stack import Stack

pytestmark = pytest.mark.skipif(not available(), reason="needs Postfix and root")

ALICE, BLOCKED, CLOSED, OWNER = ("alice@members.test", "blocked@members.test", "closed@members.test",
                                 "owner@owners.test")
BLOCKLIST_REPLY = "554 5.7.1 Service unavailable; client [127.0.0.1] blocked using zen.spamhaus.org (BL)"
DISABLED_REPLY = "550 5.7.13 <{rcpt}>: Recipient address rejected: User account disabled"


@pytest.fixture(scope="module")
def st():
    with Stack(behaviours={CLOSED: DISABLED_REPLY}, owner=OWNER) as stack:
        yield stack


@pytest.fixture(autouse=True)
def stack_clock(st, monkeypatch):
    # VERP addresses are dated: this process must sign with the stack's clock (conftest resets ours)
    monkeypatch.setenv(clock.ENV_VAR, st.clock_file)
    clock.reset()


def post(st: Stack, n: int) -> str:
    mid = f"<refusals-{n}-{time.monotonic_ns()}@members.test>"
    msg = (f"From: Alice <{ALICE}>\r\nTo: demo@lists.example.org\r\nSubject: day {n}\r\n"
           f"Message-ID: {mid}\r\n\r\nBody of day {n}\r\n").encode()
    assert st.send(ALICE, ["demo@lists.example.org"], msg) == {}
    return mid


def test_mail_from_refusal_is_never_scored_and_disabled_account_is_removed(st):
    for member in (ALICE, BLOCKED, CLOSED):
        st.listgate("members", "add", "demo", member)
    for day in range(1, 6):
        # the sink refuses BLOCKED's own VERP envelope sender at MAIL FROM (dated: one per day)
        st.sink.refuse_sender(verp.member_bounce_address(st.site, st.lc, BLOCKED), BLOCKLIST_REPLY)
        mid = post(st, day)
        st.wait_until(lambda: [d for d in st.sink.messages_for(ALICE) if mid.encode() in d.data], 60,
                      what=f"day {day} post for alice")
        st.wait_until(lambda: len(st.store().events(address=BLOCKED)) >= day, 60,
                      what=f"day {day} MAIL FROM refusal recorded")
        st.settle()
        if day < 5:
            assert st.member(CLOSED).bounce_score == float(day)
        st.advance_days(1)

    # Postfix really refused at MAIL FROM, and reported that stage
    assert [r for r in st.sink.refusals if r.stage == "mail"]
    blocked = st.member(BLOCKED)
    assert (blocked.delivery_status, blocked.bounce_score) == ("enabled", 0.0)
    events = st.store().events(address=BLOCKED)
    assert {e.bounce_class for e in events} == {"policy"} and len(events) == 5
    assert not [p for p in st.store().pending("probe") if p.payload.get("member") == BLOCKED]

    # 5.7.13 at RCPT: scored once a day, probed at the threshold, disabled by the probe's bounce
    st.wait_until(lambda: st.member(CLOSED).delivery_status == "by_bounce", 60, what="probe bounce to disable")
    closed_events = st.store().events(address=CLOSED)
    assert {e.bounce_class for e in closed_events if e.bounce_class in ("hard", "soft", "policy")} == {"hard"}
    actions = [e.action for e in closed_events]
    assert "probe_sent" in actions and "disabled" in actions
    assert st.member(ALICE).delivery_status == "enabled"
