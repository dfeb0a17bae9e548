"""The milter behind a real Postfix on loopback (``tests/harness``), configured
from INSTALL's snippets in ``conf/postfix/``.

The milter's unix socket lives in a set-group-ID directory owned by group
``postfix``: the socket inherits the group, so with ``socket_mode: 0660`` the
``postfix`` user connects and nobody else can (the layout INSTALL describes).
"""
from __future__ import annotations

import grp
import os
import smtplib
import time
from pathlib import Path

import pytest

from listgate import verp
from listgate.bounce.classify import classify
from listgate.queue import Switchboard
from listgate.store import open_store

from conftest import make_site
from harness import UNKNOWN, PostfixInstance, SmtpSink, available
from milter_helpers import Daemon, postfix_socket_dir

pytestmark = pytest.mark.skipif(not available(), reason="needs Postfix and root")

LIST = "demo@lists.example.org"
MSG = (b"From: Alice <alice@senders.test>\r\nTo: demo@lists.example.org\r\nSubject: via postfix\r\n"
       b"Message-ID: <pf1@senders.test>\r\n\r\nhello list\r\n")


@pytest.fixture
def sink():
    with SmtpSink({"gone@members.test": UNKNOWN}) as s:
        yield s


@pytest.fixture
def stack(sink, tmp_path):
    """(Postfix, listgate Site, milter Daemon): Postfix talks to the milter over its unix socket."""
    pf = PostfixInstance(sink_port=sink.port, list_domain="lists.example.org")
    try:
        sock = postfix_socket_dir(pf.workdir) / "milter.sock"
        site = make_site(tmp_path / "inst", milter_socket=f"unix:{sock}")
        pf.milter = f"unix:{sock}"
        with Daemon(site.path, str(sock), tmp_path / "milter.log") as daemon:
            pf.start()
            yield pf, site, daemon
    finally:
        pf.close()


def queued(site):
    sb = Switchboard.for_site(site, "in")
    return [sb.peek(q) for q in sb.ids()]


def test_socket_reachable_by_postfix_only_through_its_group(stack):
    pf, site, daemon = stack
    st = os.stat(daemon.connect_to)
    assert oct(st.st_mode & 0o777) == "0o660"
    assert st.st_gid == grp.getgrnam("postfix").gr_gid


def test_post_and_other_recipient(stack, sink):
    pf, site, _ = stack
    assert pf.send("alice@senders.test", [LIST, "bob@members.test"], MSG) == {}
    [qf] = queued(site)
    assert qf.meta["role"] == "post" and qf.meta["envelope_sender"] == "alice@senders.test"
    assert qf.meta["client_address"] == "127.0.0.1"
    assert b"hello list\r\n" in qf.msg and b"Subject: via postfix\r\n" in qf.msg
    # the queue id came from the {i} macro: it is Postfix's id for this message
    qid = qf.meta["mta_queue_id"]
    assert qid
    pf.wait_log(rf"{qid}: from=<alice@senders.test>", timeout=30)   # qmgr logs it asynchronously
    [got] = sink.wait_for_message("bob@members.test", timeout=30)
    assert b"hello list" in got.data
    pf.wait_queue_empty(timeout=30)
    # the list address never reached Postfix's delivery agents
    assert "to=<demo@lists.example.org>" not in pf.log_text()


def test_list_only_is_discarded_after_storing(stack):
    pf, site, _ = stack
    since = pf.log_offset()
    assert pf.send("alice@senders.test", ["demo-owner@lists.example.org"], MSG) == {}
    [qf] = queued(site)
    assert qf.meta["role"] == "owner"
    pf.wait_log(r"milter-discard", since=since, timeout=10)
    pf.wait_queue_empty(timeout=10)
    # the client retries the same message (say it never saw our 250): stored again,
    # for the runner to drop (tests/test_duplicates.py)
    assert pf.send("alice@senders.test", ["demo-owner@lists.example.org"], MSG) == {}
    assert len(queued(site)) == 2


def test_unknown_list_address_refused_at_rcpt(stack):
    pf, _, _ = stack
    result = pf.send("alice@senders.test", ["nosuch@lists.example.org"], MSG)
    assert isinstance(result, smtplib.SMTPRecipientsRefused)
    code, text = result.recipients["nosuch@lists.example.org"]
    assert code == 550 and text.startswith(b"5.1.1")


def test_store_failure_gives_451_and_nothing_is_lost(stack, sink):
    pf, site, _ = stack
    qin = Path(site.queue_dir) / "in"
    qin.rename(qin.with_name("in.away"))
    qin.write_text("not a directory")
    result = pf.send("alice@senders.test", [LIST, "bob@members.test"], MSG)
    assert isinstance(result, smtplib.SMTPDataError) and result.smtp_code == 451
    assert result.smtp_error.startswith(b"4.3.0")
    assert pf.queue_ids() == []              # Postfix kept nothing: the client still holds the mail
    qin.unlink()
    qin.with_name("in.away").rename(qin)
    assert pf.send("alice@senders.test", [LIST, "bob@members.test"], MSG) == {}   # the retry
    assert len(queued(site)) == 1
    sink.wait_for_message("bob@members.test", timeout=30)


def test_corpus_bounce_changes_score_as_classify_predicts(stack, corpus):
    pf, site, _ = stack
    lc = site.lists[LIST]
    member = "userx@example.com"
    open_store(site, LIST).add_member(member)
    raw = (corpus / "flufl.bounce/dsn_13.txt").read_bytes()
    rcpt = verp.member_bounce_address(site, lc, member)
    predicted = classify(raw, envelope_recipient=rcpt, verp_address=member)
    expected = sum(lc.bounce_weights[f.bounce_class] for f in predicted.failures[:1])
    assert pf.send("", [rcpt], raw) == {}
    assert open_store(site, LIST).get_member(member).bounce_score == pytest.approx(expected)
    assert expected == lc.bounce_weights.hard
    assert queued(site) == []


def test_postfix_own_dsn_reaches_the_milter(stack, sink):
    """A member's server refuses list mail at delivery: Postfix's bounce daemon
    sends the DSN to the VERP address through cleanup, and ``non_smtpd_milters``
    hands it to the milter, which scores the member."""
    pf, site, _ = stack
    lc = site.lists[LIST]
    member = "gone@members.test"                     # the sink answers 550 5.1.1
    open_store(site, LIST).add_member(member)
    sender = verp.member_bounce_address(site, lc, member)
    assert pf.send(sender, [member], MSG, port=pf.reinject_port) == {}
    deadline = time.monotonic() + 60
    while open_store(site, LIST).get_member(member).bounce_score == 0:
        assert time.monotonic() < deadline, pf.log_tail()
        time.sleep(0.2)
    assert open_store(site, LIST).get_member(member).bounce_score == lc.bounce_weights.hard
    [event] = open_store(site, LIST).events(member)
    assert event.attribution == "verp" and event.status == "5.1.1"
    pf.wait_queue_empty(timeout=30)
    assert not sink.messages_for(sender)             # the DSN went to listgate, not onwards


def test_postfix_own_dsn_to_a_spent_probe_address_is_dropped_not_refused(stack):
    """A DSN Postfix makes itself cannot be refused without harm: the bounce
    daemon would keep the original deferred ("bounce failed") for ever. Mail to
    a refused bounce address that comes from inside Postfix is dropped instead."""
    from listgate.store.tokens import new_token
    pf, site, _ = stack
    spent = verp.probe_bounce_address(site.lists[LIST], new_token())   # never pending: like a spent probe
    since = pf.log_offset()
    probe = (b"From: demo-owner@lists.example.org\r\nTo: gone@members.test\r\nSubject: probe\r\n"
             b"Message-ID: <spent-probe@lists.example.org>\r\n\r\nare you there?\r\n")
    assert pf.send(spent, ["gone@members.test"], probe, port=pf.reinject_port) == {}
    pf.wait_log(r"milter-discard", since=since, timeout=30)
    pf.wait_queue_empty(timeout=30)
    assert "bounce failed" not in pf.log_text()[since:]
    # the same address from an SMTP client is still refused at RCPT
    result = pf.send("", [spent], b"Subject: x\r\n\r\nforged\r\n")
    assert isinstance(result, smtplib.SMTPRecipientsRefused)
