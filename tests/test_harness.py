"""The Postfix test harness and the SMTP sink, against a real private Postfix."""
from __future__ import annotations

import json
import os
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import (SPAM_REFUSE, TEMPFAIL, UNKNOWN, PostfixError, PostfixInstance, SmtpSink, available, free_port,
                     postfix_socket)

needs_postfix = pytest.mark.skipif(not available(), reason="needs Postfix and root")

MSG = (b"From: Alice <alice@senders.test>\r\nTo: bob@members.test\r\n"
       b"Subject: harness check\r\nMessage-ID: <h1@senders.test>\r\n\r\nhello, Bob\r\n")


@pytest.fixture
def sink():
    with SmtpSink({"gone@members.test": UNKNOWN, "picky@members.test": SPAM_REFUSE,
                   "later@members.test": TEMPFAIL}) as s:
        yield s


@pytest.fixture
def pf(sink):
    with PostfixInstance(sink_port=sink.port, list_domain="lists.example.org") as instance:
        yield instance


@needs_postfix
def test_config_passes_postfix_check(pf):
    assert "warning" not in pf.check().lower()
    pf.extra["smtpd_milterz"] = "typo"
    with pytest.raises(PostfixError, match="unused parameter: smtpd_milterz"):
        pf.check()
    del pf.extra["smtpd_milterz"]
    pf.check()
    assert pf.postconf("-h", "relayhost") == f"[127.0.0.1]:{pf.sink_port}"
    assert pf.postconf("-h", "recipient_delimiter") == "+"
    assert pf.postconf("-h", "relay_domains") == "lists.example.org"
    # the INSTALL lines are in force, and no milter/policy line is left when none was given
    assert pf.postconf("-h", "smtpd_milters") == ""
    assert pf.postconf("-h", "internal_mail_filter_classes") == "bounce"


@needs_postfix
def test_mail_to_a_non_list_address_reaches_the_sink(pf, sink):
    assert pf.send("alice@senders.test", ["bob@members.test"], MSG) == {}
    [got] = sink.wait_for_message("bob@members.test", timeout=30)
    assert got.mail_from == "alice@senders.test"
    assert got.message()["Message-ID"] == "<h1@senders.test>"
    assert b"hello, Bob" in got.data
    pf.wait_queue_empty(timeout=30)


@needs_postfix
def test_unknown_member_address_gives_a_dsn_to_the_sender(pf, sink):
    since = pf.log_offset()
    assert pf.send("carol@senders.test", ["gone@members.test"], MSG) == {}
    [dsn] = sink.wait_for_message("carol@senders.test", timeout=30)
    assert dsn.mail_from == ""                      # RFC 3464 DSNs use the null sender
    msg = dsn.message()
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    status = next(p for p in msg.walk() if p.get_content_type() == "message/delivery-status")
    text = status.as_string()
    assert "Status: 5.1.1" in text and "gone@members.test" in text
    assert [r.rcpt for r in sink.refusals] == ["gone@members.test"]
    pf.wait_log(r"to=<gone@members.test>.*status=bounced", since=since, timeout=10)


@needs_postfix
def test_spam_refusal_and_tempfail_behaviours(pf, sink):
    spam = MSG.replace(b"Subject:", b"X-Spam-Flag: YES\r\nSubject:")
    assert pf.send("dave@senders.test", ["picky@members.test"], MSG) == {}
    assert pf.send("erin@senders.test", ["picky@members.test"], spam) == {}
    sink.wait_for_message("picky@members.test", timeout=30)
    [dsn] = sink.wait_for_message("erin@senders.test", timeout=30)
    assert "5.7.1" in dsn.data.decode("ascii", "replace")
    assert [d.mail_from for d in sink.messages_for("picky@members.test")] == ["dave@senders.test"]

    assert pf.send("fay@senders.test", ["later@members.test"], MSG) == {}
    sink.wait_for(lambda s: [r for r in s.refusals if r.rcpt == "later@members.test"], timeout=30)
    # showq lists active and deferred one after the other: a message moving between
    # them at that moment is missed once, so look a few times
    deadline = time.monotonic() + 10
    while not pf.queue_ids() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert pf.queue_ids(), "a 4xx leaves the message deferred in Postfix's queue"
    sink.set_behaviour("later@members.test", "accept")
    pf.flush()
    sink.wait_for_message("later@members.test", timeout=30)
    pf.wait_queue_empty(timeout=30)


@needs_postfix
def test_list_domain_is_accepted_and_not_delivered_elsewhere(pf, sink):
    """Without listgate the list domain's leftovers are discarded by the INSTALL transport."""
    since = pf.log_offset()
    assert pf.send("alice@senders.test", ["demo@lists.example.org"], MSG) == {}
    pf.wait_log(r"to=<demo@lists.example.org>.*relay=none.*status=sent \(list mail not taken by listgate\)",
                since=since, timeout=30)
    assert sink.messages_for("demo@lists.example.org") == []


@needs_postfix
def test_reinjection_listener_relays_for_loopback(pf, sink):
    assert pf.send("demo-bounces+x@lists.example.org", ["bob@members.test"], MSG, port=pf.reinject_port) == {}
    [got] = sink.wait_for_message("bob@members.test", timeout=30)
    assert got.mail_from == "demo-bounces+x@lists.example.org"


@needs_postfix
def test_refused_recipient_is_reported_by_send(sink):
    """A milter/policy-less instance refusing at RCPT: send() returns the exception."""
    with PostfixInstance(sink_port=sink.port, extra={"smtpd_relay_restrictions": "reject"}) as pf:
        result = pf.send("alice@senders.test", ["bob@members.test"], MSG)
        assert isinstance(result, smtplib.SMTPRecipientsRefused)
        code, _text = result.recipients["bob@members.test"]
        assert code == 554


@needs_postfix
def test_two_instances_run_side_by_side_and_stop_cleanly(sink):
    with PostfixInstance(sink_port=sink.port) as a, PostfixInstance(sink_port=sink.port) as b:
        assert a.smtpd_port != b.smtpd_port
        assert a.send("a@senders.test", "one@members.test", MSG) == {}
        assert b.send("b@senders.test", "two@members.test", MSG) == {}
        sink.wait_for(lambda s: s.messages_for("one@members.test") and s.messages_for("two@members.test"))
        pids = a._instance_pids()
        assert pids and not set(pids) & set(b._instance_pids())
    assert a.master_pid() is None and not a._instance_pids() and not b._instance_pids()
    assert not a.workdir.exists()


def test_socket_syntax_translation(site):
    assert postfix_socket("inet:10040@127.0.0.1") == "inet:127.0.0.1:10040"
    assert postfix_socket("unix:/run/listgate/milter.sock") == "unix:/run/listgate/milter.sock"
    assert postfix_socket("inet:127.0.0.1:8891") == "inet:127.0.0.1:8891"
    assert postfix_socket("inet:8891@::1") == "inet:[::1]:8891"
    assert postfix_socket("unix:milter.sock", site) == f"unix:{site.state_dir}/milter.sock"
    with pytest.raises(ValueError):
        postfix_socket("tcp:8891")


def test_instance_takes_sockets_and_ports_from_a_site(site):
    pf = PostfixInstance(site=site)
    try:
        assert pf.milter == f"unix:{site.state_dir}/milter.sock"
        policy_host, policy_port = site.conf.policy.socket[5:].split("@")[::-1]
        assert pf.policy == f"inet:{policy_host}:{policy_port}"
        assert pf.reinject_port == site.conf.reinject.port
        assert pf.list_domain == "lists.example.org"
        assert f"127.0.0.1:{site.conf.reinject.port} inet" in pf.master_cf()
        assert f"check_policy_service {{ {pf.policy}, timeout=10s" in pf.main_cf()
    finally:
        pf.close()


@pytest.fixture
def recording_milter(tmp_path):
    """tests/harness/recording_milter.py on a free loopback port: (socket, events(), mode_file)."""
    port = free_port()
    events_file, mode_file = tmp_path / "events.jsonl", tmp_path / "mode"
    script = Path(__file__).resolve().parent / "harness" / "recording_milter.py"
    proc = subprocess.Popen([sys.executable, str(script), f"inet:{port}@127.0.0.1", str(events_file),
                             "lists.example.org", str(mode_file)])
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("recording milter did not start")
                time.sleep(0.05)

        def events() -> list[dict]:
            if not events_file.exists():
                return []
            return [json.loads(line) for line in events_file.read_text().splitlines()]
        yield f"inet:{port}@127.0.0.1", events, mode_file
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


VERP = "demo-bounces+gone=members.test@lists.example.org"


def _post_to_dead_member(pf: PostfixInstance, mode_file: Path, mode: str) -> int:
    """Set the recording milter's end-of-message answer, then hand Postfix a list
    post (VERP sender) for the sink's dead address, as the runner does; returns
    the mail log offset before it."""
    mode_file.write_text(mode)
    since = pf.log_offset()
    assert pf.send(VERP, "gone@members.test", MSG, port=pf.reinject_port) == {}
    return since


@needs_postfix
def test_postfix_own_dsns_for_list_bounce_addresses_pass_the_milter(sink, recording_milter):
    """What INSTALL's non_smtpd_milters + internal_mail_filter_classes lines are for:
    a member's server refuses re-injected list mail, Postfix's DSN to the list's
    VERP address goes through the milter; if the milter tempfails, the original
    stays deferred ("bounce failed") and the DSN is made again later, not lost."""
    socket_spec, events, mode_file = recording_milter
    verp = VERP
    with PostfixInstance(sink_port=sink.port, milter=socket_spec) as pf:
        since = _post_to_dead_member(pf, mode_file, "tempfail")
        pf.wait_log(r"status=deferred \(bounce failed\)", since=since, timeout=30)
        assert pf.queue_ids(), "the refused post stays queued while its DSN cannot be handed over"
        tempfailed = [e for e in events() if e["event"] == "eom"]
        assert tempfailed and all(e["rcpts"] == [verp] and e["mode"] == "tempfail" for e in tempfailed)

        mode_file.unlink()
        pf.flush()
        pf.wait_queue_empty(timeout=30)
        taken = [e for e in events() if e["event"] == "eom" and e["mode"] == ""]
        assert [e["rcpts"] for e in taken] == [[verp]]
        # what the milter sees for Postfix-generated mail: null sender, the
        # Postfix queue id, a simulated localhost client
        dsn_from = [e for e in events() if e["event"] == "from" and e["queue_id"] == taken[0]["queue_id"]]
        assert dsn_from[0]["sender"] == "" and dsn_from[0]["client_addr"] == "127.0.0.1"
        # the milter removed the list recipient: nothing was delivered or discarded for it
        assert not sink.messages_for(verp)
        assert "list mail not taken by listgate" not in pf.log_text()
        # the re-injection listener itself never calls the milter
        assert not [e for e in events() if e["event"] == "from" and e["sender"] == verp]


@needs_postfix
def test_a_refused_postfix_dsn_keeps_the_original_deferred(sink, recording_milter):
    """The hazard INSTALL warns about: a milter that refuses (5xx) Postfix's own
    DSN leaves the original deferred with "bounce failed", retried at every
    queue run; nothing reaches the list domain's discard transport."""
    socket_spec, events, mode_file = recording_milter
    verp = VERP
    with PostfixInstance(sink_port=sink.port, milter=socket_spec) as pf:
        since = _post_to_dead_member(pf, mode_file, "reject")
        pf.wait_log(r"milter-reject: END-OF-MESSAGE from localhost\[127\.0\.0\.1\]: 5\.1\.1", since=since)
        pf.wait_log(r"status=deferred \(bounce failed\)", since=since)
        pf.flush()
        pf.wait_log(r"(?s)bounce failed.*milter-reject.*bounce failed", since=since)
        [queued] = pf.queue()
        assert queued["sender"] == verp and queued["queue_name"] in ("deferred", "active")
        assert "list mail not taken by listgate" not in pf.log_text()


@needs_postfix
def test_local_submission_passes_the_milter_too(sink, recording_milter):
    """sendmail(1) on the host: non_smtpd_milters (INSTALL 3.1) sends it through the milter."""
    socket_spec, events, _mode = recording_milter
    with PostfixInstance(sink_port=sink.port, milter=socket_spec) as pf:
        pf.submit("root@mx.listgate.test", ["demo-request@lists.example.org", "bob@members.test"], MSG)
        [got] = sink.wait_for_message("bob@members.test", timeout=30)
        assert got.mail_from == "root@mx.listgate.test"
        pf.wait_queue_empty(timeout=30)
        eom = [e for e in events() if e["event"] == "eom"]
        assert eom and sorted(eom[-1]["rcpts"]) == ["bob@members.test", "demo-request@lists.example.org"]
        assert not sink.messages_for("demo-request@lists.example.org")
        assert "list mail not taken by listgate" not in pf.log_text()


# -- the sink on its own (no Postfix needed) -----------------------------------------


def _talk(sink: SmtpSink, mail_from: str, rcpts: list[str], msg: bytes):
    with smtplib.SMTP("127.0.0.1", sink.port, timeout=10) as client:
        client.ehlo("tester.test")
        try:
            return client.sendmail(mail_from, rcpts, msg)
        except smtplib.SMTPException as exc:
            return exc


def test_sink_rcpt_behaviours_and_custom_replies():
    with SmtpSink({"gone@m.test": UNKNOWN, "later@m.test": TEMPFAIL,
                   "full@m.test": "452 4.2.2 Mailbox full"}) as sink:
        refused = _talk(sink, "a@s.test", ["gone@m.test", "later@m.test", "full@m.test", "ok@m.test"], MSG)
        assert refused["gone@m.test"][0] == 550 and b"5.1.1" in refused["gone@m.test"][1]
        assert refused["later@m.test"][0] == 451 and refused["full@m.test"] == (452, b"4.2.2 Mailbox full")
        assert [d.rcpt for d in sink.messages()] == ["ok@m.test"]
        assert {r.rcpt for r in sink.refusals} == {"gone@m.test", "later@m.test", "full@m.test"}


def test_sink_spam_refusal_covers_the_whole_transaction_and_keeps_8bit_bytes():
    body8 = "Grüße, ☃\r\n".encode("utf-8")
    ham = b"Subject: ham\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + body8
    spam = b"X-Spam-Flag: YES\r\n" + ham
    with SmtpSink({"picky@m.test": SPAM_REFUSE}) as sink:
        assert _talk(sink, "a@s.test", ["picky@m.test", "ok@m.test"], ham) == {}
        err = _talk(sink, "b@s.test", ["picky@m.test", "ok@m.test"], spam)
        assert isinstance(err, smtplib.SMTPDataError) and err.smtp_code == 550 and b"5.7.1" in err.smtp_error
        assert [d.mail_from for d in sink.messages_for("ok@m.test")] == ["a@s.test"]
        assert sink.messages_for("picky@m.test")[0].data.endswith(body8)
        assert [(r.stage, r.rcpt) for r in sink.refusals] == [("data", "picky@m.test"), ("data", "ok@m.test")]


def test_sink_null_sender_and_wait_for_timeout():
    with SmtpSink() as sink:
        assert _talk(sink, "", ["x@m.test"], MSG) == {}
        [d] = sink.wait_for_message("x@m.test", timeout=5)
        assert d.mail_from == ""
        with pytest.raises(TimeoutError, match="x@m.test"):
            sink.wait_for_message("nobody@m.test", timeout=0.2)


def test_workdir_postfix_cannot_reach_is_refused_early(tmp_path):
    closed = tmp_path / "closed"
    closed.mkdir()
    os.chmod(closed, 0o700)            # like pytest's own /tmp/pytest-of-root
    with pytest.raises(PostfixError, match=f"{closed} is not searchable by the postfix user"):
        PostfixInstance(workdir=closed / "pf")
