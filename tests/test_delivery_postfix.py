"""Delivery through a real Postfix re-injection smtpd (the INSTALL master.cf entry): signed VERP and XVERP."""
from __future__ import annotations

import re

import pytest
from conftest import free_port, make_site
from harness import PostfixInstance, SmtpSink, available
from runner_helpers import LIST, message

from listgate import config, verp
from listgate.queue import Switchboard
from listgate.runner.loop import Runner
from listgate.store import close_all, open_store

pytestmark = pytest.mark.skipif(not available(), reason="needs root and Postfix")


@pytest.fixture
def rig(tmp_path):
    port = free_port()
    site = make_site(tmp_path / "instance", reinject_port=port)
    with SmtpSink() as sink, PostfixInstance(sink_port=sink.port, reinject_port=port) as pf:
        yield site, sink, pf
    close_all()


def _post_and_run(site, members):
    store = open_store(site, LIST)
    for m in members:
        store.add_member(m)
    Switchboard.for_site(site, "in").enqueue(message(members[0], "via postfix"),
                                             {"list": LIST, "role": "post", "envelope_sender": members[0]})
    runner = Runner(site)
    try:
        runner.run_once(with_tasks=False)
    finally:
        runner.close()


def test_signed_verp_through_postfix(rig):
    site, sink, pf = rig
    members = [f"m{i}@members.test" for i in range(3)]
    _post_and_run(site, members)
    sink.wait_for(lambda s: len(s.messages()) == 3, timeout=60)
    lc = site.get_list(LIST)
    for d in sink.messages():
        assert d.mail_from == verp.member_bounce_address(site, lc, d.rcpt)


def test_xverp_mode_lets_postfix_build_the_per_recipient_sender(rig, tmp_path):
    site, sink, pf = rig
    path = tmp_path / "instance" / "lists.d" / "demo.yaml"
    path.write_text(path.read_text() + "verp_mode: xverp\naccept_unsigned_verp: true\n")
    site = config.load(site.path)
    members = [f"m{i}@members.test" for i in range(3)]
    _post_and_run(site, members)
    sink.wait_for(lambda s: len(s.messages()) == 3, timeout=60)
    # Postfix VERP_README: sender+recipient_local=recipient_domain@...; unsigned, so the list
    # must accept unsigned VERP (routing decodes it as kind 'unsigned')
    lc = site.get_list(LIST)
    for d in sink.messages():
        local, domain = d.rcpt.split("@")
        assert d.mail_from == f"demo-bounces+{local}={domain}@lists.example.org"
        assert verp.decode(site, lc, f"{local}={domain}").kind == "unsigned"


def test_first_post_after_smtpd_timeout_goes_out_at_once(rig):
    """Postfix closes an idle session after smtpd_timeout and answers the next command
    "421 4.4.2 ... timeout exceeded": the runner reconnects and sends again, no retry."""
    site, sink, pf = rig
    pf.set(smtpd_timeout="2s")
    store = open_store(site, LIST)
    store.add_member("m0@members.test")
    runner = Runner(site)
    try:
        for n in (1, 2):
            Switchboard.for_site(site, "in").enqueue(message("m0@members.test", f"post {n}"),
                                                     {"list": LIST, "role": "post",
                                                      "envelope_sender": "m0@members.test"})
            since = pf.log_offset()
            runner.run_once(with_tasks=False)
            sink.wait_for(lambda s: len(s.messages()) == n, timeout=60)
            if n == 1:   # the runner's session is still open; Postfix times it out
                pf.wait_log(r"listgate-reinject/smtpd\[\d+\]: timeout after", since=since)
            assert Switchboard.for_site(site, "retry").ids() == [], pf.log_tail()
    finally:
        runner.close()


def test_session_is_recycled_after_max_session_messages(rig, tmp_path):
    """A new session after reinject.max_session_messages transactions (so a postfix reload
    reaches the runner): 5 one-recipient transactions with a limit of 2 are 3 sessions."""
    site, sink, pf = rig
    path = tmp_path / "instance" / "listgate.yaml"
    path.write_text(path.read_text().replace("reinject:\n", "reinject:\n  max_session_messages: 2\n", 1))
    site = config.load(site.path)
    assert site.conf.reinject.max_session_messages == 2
    since = pf.log_offset()
    _post_and_run(site, [f"m{i}@members.test" for i in range(5)])
    sink.wait_for(lambda s: len(s.messages()) == 5, timeout=60)
    pf.wait_log(r"listgate-reinject/smtpd\[\d+\]: disconnect from .* quit=1", since=since)
    log = pf.log_text()[since:]
    assert len(re.findall(r"listgate-reinject/smtpd\[\d+\]: connect from", log)) == 3, log


def test_one_unknown_local_member_is_scored_the_others_delivered(rig):
    """The new admin's report: one `--force`-added local member Postfix does not know
    ("User unknown in local recipient table") is that member's hard bounce; no site incident."""
    from listgate.app import site_incidents
    site, sink, pf = rig
    pf.set(mydestination="localhost", local_recipient_maps="inline:{postmaster=yes}")
    members = ["m0@members.test", "erin@localhost", "m1@members.test"]
    _post_and_run(site, members)
    sink.wait_for(lambda s: len(s.messages()) == 2, timeout=60)
    store, lc = open_store(site, LIST), site.get_list(LIST)
    assert site_incidents.open_incidents(store, lc) == {}
    assert [e.bounce_class for e in store.events("erin@localhost") if e.action == "scored"] == ["hard"]
    assert any("local recipient table" in (e.detail or "") for e in store.events("erin@localhost"))
    assert Switchboard.for_site(site, "retry").ids() == []


def test_postfix_refusing_every_member_is_a_site_incident(rig):
    from listgate.app import site_incidents
    site, sink, pf = rig
    pf.set(mydestination="members.test", local_recipient_maps="inline:{postmaster=yes}")
    _post_and_run(site, [f"m{i}@members.test" for i in range(3)])
    store, lc = open_store(site, LIST), site.get_list(LIST)
    [incident] = site_incidents.open_incidents(store, lc).values()
    assert incident.scope == site_incidents.ALL and "local recipient table" in incident.reason
    assert all(m.bounce_score == 0.0 for m in store.members())
    assert Switchboard.for_site(site, "retry").ids()
