"""Generated mail: listgate.messages (make_notice, queue_virgin) and listgate.app.notices."""
from __future__ import annotations

import email
import email.policy

import pytest

from listgate import clock, messages
from listgate.app import notices
from listgate.queue import Switchboard

from engine_helpers import DOMAIN, T0, attachments

OWNER = f"demo-owner@{DOMAIN}"


def parsed(msg) -> email.message.EmailMessage:
    data, _ = messages.serialize(msg)
    return email.message_from_bytes(data, policy=email.policy.default)


def test_make_notice_headers():
    clock.freeze(T0)
    msg = parsed(messages.make_notice(sender=OWNER, to=["a@example.com", "b@example.com"], subject="Héllo",
                                      body="Grüße\n", domain=DOMAIN, headers={"List-Id": "<demo.x>"}))
    assert msg["From"] == OWNER and msg["To"] == "a@example.com, b@example.com"
    assert msg["Subject"] == "Héllo" and msg["Auto-Submitted"] == "auto-generated"
    assert msg["Date"].datetime.timestamp() == T0
    assert msg["Message-ID"].endswith(f"@{DOMAIN}>") and msg["List-Id"] == "<demo.x>"
    assert msg.get_content_charset() == "utf-8" and msg.get_content() == "Grüße\n"


def test_make_notice_refuses_header_injection():
    msg = parsed(messages.make_notice(sender=OWNER, to="a@example.com", subject="hi\r\nBcc: victim@example.net",
                                      body="x", domain=DOMAIN))
    assert msg["Bcc"] is None and "victim" in msg["Subject"]
    with pytest.raises(ValueError):
        messages.make_notice(sender="", to="a@example.com", subject="s", body="b", domain=DOMAIN)


@pytest.mark.parametrize("sample, expect", [
    (b"From: a@example.com\nSubject: caf\xe9\n\nbody \xff\xfe 8-bit junk\n", "message/rfc822"),
    (b"\x00\x01 not a header at all\n\nbody", "application/octet-stream"),
    (b"Subject: big\n\n" + b"x" * (messages.MAX_SAMPLE_BYTES + 10), "text/rfc822-headers"),
    (b"Content-Type: multipart/mixed; boundary=zz\n\n--zz\nbroken", "message/rfc822"),
])
def test_samples_are_attached_safely(sample, expect):
    msg = parsed(messages.make_notice(sender=OWNER, to="a@example.com", subject="s", body="b",
                                      domain=DOMAIN, samples=[sample]))
    [part] = attachments(msg)
    assert part.get_content_type() == expect
    if expect == "application/octet-stream":
        assert part.get_content() == sample       # byte-exact


def test_corpus_bounces_attach_without_error(corpus):
    count = 0
    for path in sorted(corpus.rglob("*")):
        if path.is_file() and path.suffix in (".txt", ".eml"):
            raw = path.read_bytes()
            msg = messages.make_notice(sender=OWNER, to="a@example.com", subject="s", body="b",
                                       domain=DOMAIN, samples=[raw])
            data, _ = messages.serialize(msg)
            assert len(attachments(email.message_from_bytes(data, policy=email.policy.default))) == 1
            count += 1
    assert count > 300


def test_queue_virgin_writes_delivery_envelope(site):
    clock.freeze(T0)
    lc = site.get_list("demo")
    msg = messages.make_notice(sender=OWNER, to="a@example.com", subject="s", body="b", domain=DOMAIN)
    qid = messages.queue_virgin(site, lc, msg, [{"rcpt": "a@example.com", "sender": f"demo-bounces@{DOMAIN}"}],
                                kind="reply", meta={"in_reply_to_qfile": "x"})
    qf = Switchboard(site.queue_dir, "virgin").peek(qid)
    assert qf.meta["list"] == f"demo@{DOMAIN}" and qf.meta["kind"] == "reply"
    assert qf.meta["deliveries"] == [{"rcpt": "a@example.com", "sender": f"demo-bounces@{DOMAIN}"}]
    assert qf.meta["done"] == [] and qf.meta["arrival"] == T0 and qf.meta["in_reply_to_qfile"] == "x"
    assert qf.meta["smtputf8"] is False
    assert qf.msg == messages.serialize(msg)[0]
    for bad in ([], [{"rcpt": ""}], [{"rcpt": "a@example.com\r\nRCPT TO:<x@y>"}], [{"rcpt": "no-at-sign"}],
                [{"rcpt": "a@example.com", "sender": "not an address"}]):
        with pytest.raises(ValueError):
            messages.queue_virgin(site, lc, msg, bad, kind="reply")


def test_owner_deliveries_use_null_sender(site):
    assert notices.owner_deliveries(site.get_list("demo")) == [{"rcpt": f"owner@{DOMAIN}", "sender": ""}]


def test_bounce_notices_render(site):
    lc = site.get_list("demo")
    token = "a" * 26
    probe = parsed(notices.probe(lc, "jane@example.com", f"demo-bounces+{token}@{DOMAIN}", score=5.0,
                                 sample=b"Subject: bounce\n\nUser unknown\n", message_id="<p1@x>"))
    assert probe["From"] == f"demo-bounces+{token}@{DOMAIN}" and probe["Message-ID"] == "<p1@x>"
    assert "5 out of 5" in probe.get_body().get_content() and len(attachments(probe)) == 1
    notice = parsed(notices.disabled_notice(lc, "jane@example.com", token, notice=2, notices=3, removal_in=14 * 86400))
    text = notice.get_body().get_content()
    assert f"demo-confirm+{token}@{DOMAIN}" in text and "notice 2 of 3" in text and "14d" in text
    assert notice["Reply-To"] == f"demo-confirm+{token}@{DOMAIN}"
    owner = parsed(notices.owner_member_notice(lc, "jane@example.com", "disabled", "the probe bounced",
                                               [b"Subject: %d\n\nx\n" % i for i in range(5)]))
    assert owner["To"] == f"owner@{DOMAIN}" and len(attachments(owner)) == notices.MAX_EVIDENCE
    incident = parsed(notices.owner_incident(lc, "bigisp.example", "5.7.1", ["a@bigisp.example"], 3600, None))
    assert "bigisp.example" in incident["Subject"] and "1h" in incident.get_body().get_content()
    fwd = parsed(notices.unrecognized(lc, b"Subject: hi\n\nthanks\n", recipient=f"demo-bounces@{DOMAIN}",
                                      envelope_sender="", reason="not a bounce"))
    assert "<>" in fwd.get_body().get_content() and len(attachments(fwd)) == 1

