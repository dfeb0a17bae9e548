"""Issue 15 end to end on a real Postfix, with the controlled clock: failures that are not
the members' own score nobody, pause fan-out and clear by themselves; a confirmed change
of address starts clean.

One stack for the module (tests/harness/stack.py): Postfix configured from INSTALL's
snippets, ``listgate serve``, the SMTP sink as every member's mail server. The scenarios
run in order, each leaving the list as it found it (no incident open, every member
enabled with score 0), so one stack serves them all.
"""
from __future__ import annotations

import re
import time

import pytest

from harness import ACCEPT, available
from harness.stack import Stack

pytestmark = pytest.mark.skipif(not available(), reason="needs Postfix and root")

MEMBERS = ["a@one.test", "b@two.test", "c@three.test", "d@four.test", "e@five.test"]
BROKEN = ["x@broken.test", "y@broken.test", "z@broken.test"]
OWNER = "owner@owners.test"
POSTMASTER = "postmaster@site.test"
HOUR = 1 / 24
CONFIRM_RE = re.compile(rb"demo-confirm\+([a-z2-7]{26})@lists\.example\.org")
_seq = iter(range(1, 10_000))


def post(st: Stack, subject: str, sender: str = MEMBERS[0]) -> str:
    """A post through Postfix's public smtpd; returns its Message-ID."""
    mid = f"<lc-{next(_seq)}-{time.monotonic_ns()}@one.test>"
    msg = (f"From: {sender}\r\nTo: demo@lists.example.org\r\nSubject: {subject}\r\n"
           f"Message-ID: {mid}\r\n\r\nBody of {subject}\r\n").encode()
    assert st.send(sender, ["demo@lists.example.org"], msg) == {}
    return mid


def received(st: Stack, rcpt: str, mid: str) -> int:
    return sum(1 for d in st.sink.messages_for(rcpt) if mid.encode() in d.data)


def incident_notices(st: Stack, rcpt: str) -> list:
    return [d for d in st.sink.messages_for(rcpt) if "site incident" in str(d.message()["Subject"])]


def retry_ids(st: Stack) -> list[str]:
    from listgate.queue import Switchboard
    return Switchboard.for_site(st.site, "retry").ids()


def open_scopes(st: Stack) -> set[str]:
    from listgate.app import site_incidents
    return set(site_incidents.open_incidents(st.store(), st.lc))


def states(st: Stack, members) -> list[tuple]:
    return [(st.member(m).delivery_status, st.member(m).bounce_score) for m in members]


def actions(st: Stack, since_id: int) -> list[str]:
    return [e.action for e in st.store().events(limit=100000) if e.id > since_id]


def last_event_id(st: Stack) -> int:
    events = st.store().events(limit=1)
    return events[0].id if events else 0


@pytest.fixture(scope="module")
def st():
    with Stack(owner=OWNER, site_settings=f"postmaster: {POSTMASTER}\n") as stack:
        for m in MEMBERS:
            stack.listgate("members", "add", "demo", m)
        yield stack


def test_a_listener_refusing_six_days_scores_nobody_then_clears(st):
    """The defect of issue 15: our re-injection smtpd refuses every recipient ("User unknown
    in local recipient table": the members' domains wrongly in mydestination)."""
    start = last_event_id(st)
    st.pf.set(mydestination=" ".join(m.split("@")[1] for m in MEMBERS) + " owners.test site.test",
              local_recipient_maps="inline:{ nobody=yes }")
    mids = []
    for day in range(6):
        mids.append(post(st, f"refused day {day}"))
        st.settle()
        # the post (and the incident notice) wait in retry, paused
        st.wait_until(lambda: len(retry_ids(st)) == day + 2, 60, what=f"day {day} post paused")
        st.advance_days(1)
    assert "User unknown in local recipient table" in st.pf.log_text()
    assert states(st, MEMBERS) == [("enabled", 0.0)] * 5
    done = actions(st, start)
    assert not {"scored", "probe_sent", "disabled", "incident"} & set(done), done
    assert "site_incident" in done and "site_incident_cleared" not in done
    assert open_scopes(st) == {"*"}
    assert st.sink.messages() == []                     # nothing got through, nothing was lost

    # The admin fixes main.cf; an hour later one delivery is let through and clears it.
    st.pf.set(mydestination="", local_recipient_maps="")
    st.advance_days(HOUR)
    for m in MEMBERS:
        for mid in mids:
            st.wait_until(lambda: received(st, m, mid), 60, what=f"{mid} for {m}")
    st.wait_until(lambda: incident_notices(st, POSTMASTER), 60, what="the postmaster notice")
    st.settle()
    assert retry_ids(st) == []
    assert {m: [received(st, m, mid) for mid in mids] for m in MEMBERS} == {m: [1] * 6 for m in MEMBERS}
    assert len(incident_notices(st, POSTMASTER)) == 1 and len(incident_notices(st, OWNER)) == 1
    assert open_scopes(st) == set()
    assert actions(st, start).count("site_incident_cleared") == 1
    assert states(st, MEMBERS) == [("enabled", 0.0)] * 5
