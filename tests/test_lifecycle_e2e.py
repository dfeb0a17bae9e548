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


@pytest.fixture(autouse=True)
def stack_clock(st, monkeypatch):
    """This process follows the stack's clock file too (conftest resets the clock per test)."""
    from listgate import clock
    monkeypatch.setenv(clock.ENV_VAR, st.clock_file)


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


def refused(st: Stack, rcpt: str) -> int:
    return sum(1 for r in st.sink.refusals if r.rcpt.lower() == rcpt)


def trial_after_pause(st: Stack) -> None:
    """Let the pause end; wait for the one trial delivery it lets through."""
    mark = last_event_id(st)
    st.advance_days(HOUR)
    st.wait_until(lambda: [e for e in st.store().events(limit=20, actions=("site_incident",))
                           if e.id > mark and ": trial:" in e.detail], 60, what="the trial delivery")


def test_b_one_remote_domain_failing_for_everyone_on_it(st):
    """broken.test refuses every address for six days: the domain incident pauses fan-out to
    it alone; one trial a day is all that reaches it; nobody is scored; then it is fixed."""
    for m in BROKEN:
        st.listgate("members", "add", "demo", m)
    start = last_event_id(st)
    notices_before = len(incident_notices(st, POSTMASTER))
    st.sink.set_behaviour("@broken.test", "550 5.1.2 <{rcpt}>: domain broken.test accepts no mail")
    mids = []
    for day in range(6):
        mids.append(post(st, f"broken domain day {day}"))
        st.settle()
        if day == 0:      # Postfix's DSNs came back through the milter: the third opens it
            st.wait_until(lambda: "broken.test" in open_scopes(st), 60, what="the domain incident")
        st.advance_days(1)
    for m in MEMBERS:     # the other domains are not paused
        assert [received(st, m, mid) for mid in mids] == [1] * 6, m
    assert states(st, BROKEN + MEMBERS) == [("enabled", 0.0)] * 8
    done = actions(st, start)
    assert not {"scored", "probe_sent", "disabled"} & set(done), done
    assert done.count("struck") == 2          # the two scored before it was recognised
    trials = [r for r in st.sink.refusals if r.rcpt in BROKEN]
    assert 3 <= len(trials) <= 3 + 6          # post 0 to all three, then about one trial a day

    st.sink.set_behaviour("@broken.test", ACCEPT)
    trial_after_pause(st)                     # a trial goes, and no bounce comes back ...
    st.settle()
    st.advance_days(HOUR)                     # ... so the next delivery clears it, the rest go
    st.wait_until(lambda: not open_scopes(st), 60, what="the incident to clear")
    st.settle()
    st.wait_until(lambda: not retry_ids(st), 60, what="the paused posts")
    st.settle()
    for m in BROKEN:      # each post exactly once, unless the remote refused that copy
        got = [received(st, m, mid) for mid in mids]
        assert set(got) <= {0, 1} and sum(got) + refused(st, m) == 6, (m, got, refused(st, m))
    assert sum(received(st, m, mid) for m in BROKEN for mid in mids) >= 3 * 6 - len(trials)
    assert len(incident_notices(st, POSTMASTER)) == notices_before + 1
    assert actions(st, start).count("site_incident_cleared") == 1
    assert states(st, BROKEN + MEMBERS) == [("enabled", 0.0)] * 8


def test_c_one_text_from_many_domains_is_a_site_incident(st):
    """Our smarthost's wrong relay_recipient_maps: c@, d@ and e@ (3 of 8 members, 3 domains)
    refused with one text. Nobody is scored; all fan-out pauses until it is fixed."""
    start = last_event_id(st)
    text = "550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown in relay recipient table"
    for m in MEMBERS[2:]:
        st.sink.set_behaviour(m, text)
    first = post(st, "refused by the smarthost")
    st.settle()
    st.wait_until(lambda: "*" in open_scopes(st), 60, what="the site incident")
    second = post(st, "while paused")
    st.settle()
    assert all(received(st, m, second) == 0 for m in MEMBERS + BROKEN)     # everything waits
    assert states(st, MEMBERS) == [("enabled", 0.0)] * 5
    done = actions(st, start)
    assert not {"scored", "probe_sent", "disabled"} & set(done), done
    for m in MEMBERS[2:]:
        st.sink.set_behaviour(m, ACCEPT)
    trial_after_pause(st)
    st.settle()
    st.advance_days(HOUR)
    st.wait_until(lambda: not open_scopes(st), 60, what="the incident to clear")
    st.wait_until(lambda: not retry_ids(st), 60, what="the paused mail")
    st.settle()
    assert {m: received(st, m, second) for m in MEMBERS + BROKEN} == {m: 1 for m in MEMBERS + BROKEN}
    assert {m: received(st, m, first) for m in MEMBERS} == {m: int(m in MEMBERS[:2]) for m in MEMBERS}
    assert states(st, MEMBERS) == [("enabled", 0.0)] * 5


def test_d_change_of_address_confirmed_while_disabled_starts_clean(st):
    """A member disabled by bounce moves to a new address through L-request and the
    L-confirm+TOKEN reply, both via Postfix: enabled, score 0, no reminder ever after."""
    from listgate.app.bounces import BounceEngine
    old, new = "gone@six.test", "fresh@seven.test"
    st.listgate("members", "add", "demo", old)
    st.sink.set_behaviour(old, "550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown")
    engine = BounceEngine(st.site)
    for _ in range(5):        # five days of refusals reach the threshold: the probe goes out ...
        engine.register_failure(st.lc, old, "hard", "5.1.1", "550 5.1.1 user unknown")
        st.advance_days(1)
    # ... through Postfix to the sink, which refuses it: the probe's DSN disables the member
    st.wait_until(lambda: st.member(old).delivery_status == "by_bounce", 60, what="disabled by the probe")
    assert st.member(old).re_enable_token and st.member(old).notices_left is not None
    request = (f"From: {old}\r\nTo: demo-request@lists.example.org\r\nSubject: x\r\n"
               f"Message-ID: <move-{time.monotonic_ns()}@six.test>\r\n\r\nchange-address {new}\r\n").encode()
    assert st.send(old, ["demo-request@lists.example.org"], request) == {}
    [confirmation] = st.sink.wait_for_message(new, timeout=60)
    token = CONFIRM_RE.search(confirmation.data).group(1).decode()
    reply = (f"From: {new}\r\nTo: demo-confirm+{token}@lists.example.org\r\nSubject: Re: confirm\r\n"
             f"Message-ID: <moved-{time.monotonic_ns()}@seven.test>\r\n\r\nyes\r\n").encode()
    assert st.send(new, [f"demo-confirm+{token}@lists.example.org"], reply) == {}
    st.wait_until(lambda: st.member(new) is not None, 60, what="the change of address")
    st.settle()
    m = st.member(new)
    assert st.member(old) is None
    assert (m.delivery_status, m.bounce_score, m.notices_left, m.re_enable_token) == ("enabled", 0.0, None, None)
    assert any(e.action == "bounce_cleared" and "change of address" in e.detail for e in st.store().events(new))
    seen = len(st.sink.messages_for(new)) + refused(st, old)
    for _ in range(3):        # the disabled notices would come every 7 days, then removal
        st.advance_days(8)
        st.settle()
    time.sleep(2)             # a few runner task cycles at the new time
    st.settle()
    assert len(st.sink.messages_for(new)) + refused(st, old) == seen     # no reminder, to either
    assert st.member(new).delivery_status == "enabled"
    mid = post(st, "after the move")
    st.wait_until(lambda: received(st, new, mid), 60, what="a post at the new address")
