"""listgate.bounce.classify: each rule on messages built here (RFC 3464, 5965, 3834 shapes)."""
from __future__ import annotations

import pytest

from listgate.bounce import status as st
from listgate.bounce.classify import CLASSES, Classification, classify

ORIGINAL = (
    "From: list@lists.example.org\r\n"
    "To: list@lists.example.org\r\n"
    "Subject: [list] spam filters and user unknown: words in our own post\r\n"
    "Message-ID: <post-1@lists.example.org>\r\n"
    "\r\n"
    "This post talks about spam, viruses and blocklists; none of it is the remote MTA's.\r\n"
)


def recipient_block(final, action, status=None, diagnostic=None, original=None):
    lines = []
    if original:
        lines.append(f"Original-Recipient: rfc822;{original}")
    lines.append(f"Final-Recipient: rfc822; {final}")
    lines.append(f"Action: {action}")
    if status:
        lines.append(f"Status: {status}")
    if diagnostic:
        lines.append(f"Diagnostic-Code: smtp; {diagnostic}")
    return "\r\n".join(lines) + "\r\n"


def dsn(*blocks, report_type="delivery-status", human="Delivery report.", subject="Undelivered Mail Returned to Sender",
        extra_headers=""):
    """An RFC 3464 DSN (multipart/report, RFC 6522) with one block per recipient."""
    rt = f"; report-type={report_type}" if report_type else ""
    return (
        "From: MAILER-DAEMON@mx.example.net (Mail Delivery System)\r\n"
        "To: list-bounces@lists.example.org\r\n"
        f"Subject: {subject}\r\n"
        "Message-ID: <dsn-1@mx.example.net>\r\n"
        f"{extra_headers}"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report{rt}; boundary="BOUND"\r\n'
        "\r\n"
        "--BOUND\r\n"
        "Content-Type: text/plain\r\n\r\n"
        f"{human}\r\n"
        "--BOUND\r\n"
        "Content-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.net\r\n"
        "Arrival-Date: Mon, 2 Jan 2026 10:00:00 +0000\r\n\r\n"
        + "\r\n".join(blocks) +
        "\r\n--BOUND\r\n"
        "Content-Type: message/rfc822\r\n\r\n"
        f"{ORIGINAL}\r\n"
        "--BOUND--\r\n"
    ).encode()


def one(result: Classification):
    assert len(result.failures) == 1, result
    return result.failures[0]


# --- RFC 3464 DSNs -----------------------------------------------------------

def test_dsn_hard_failure_with_diagnostic():
    r = classify(dsn(recipient_block("alice@example.com", "failed", "5.1.1",
                                     "550 5.1.1 <alice@example.com>: Recipient address rejected: User unknown")))
    f = one(r)
    assert (r.is_bounce, r.kind) == (True, "dsn")
    assert (f.address, f.bounce_class, f.status, f.attribution) == ("alice@example.com", "hard", "5.1.1", "dsn")
    assert "User unknown" in f.diagnostic
    assert r.message_id == "<dsn-1@mx.example.net>"
    assert r.original_message_id == "<post-1@lists.example.org>"
    assert r.scored == r.failures


def test_dsn_several_recipients_with_different_outcomes():
    r = classify(dsn(
        recipient_block("a@example.com", "failed", "5.1.1", "550 5.1.1 no such user"),
        recipient_block("b@example.com", "delayed", "4.4.1", "connection timed out"),
        recipient_block("c@example.com", "delivered", "2.0.0"),
        recipient_block("d@example.com", "failed", "4.4.7", "retry time exceeded"),
        recipient_block("e@example.com", "relayed", "2.0.0"),
        recipient_block("f@example.com", "expanded", "2.0.0"),
        recipient_block("g@example.com", "failed", "5.7.1", "554 5.7.1 Message rejected as spam by Content Filtering"),
    ))
    got = {f.address: f.bounce_class for f in r.failures}
    assert got == {"a@example.com": "hard", "b@example.com": "delayed", "c@example.com": "delivered",
                   "d@example.com": "soft", "e@example.com": "relayed", "f@example.com": "expanded",
                   "g@example.com": "policy"}
    assert {f.address for f in r.scored} == {"a@example.com", "d@example.com", "g@example.com"}


def test_original_recipient_is_preferred_to_final_recipient():
    r = classify(dsn(recipient_block("forward@elsewhere.example", "failed", "5.1.1", "user unknown",
                                     original="Member@Example.COM")))
    assert one(r).address == "Member@example.com"


def test_success_dsn_is_a_report_but_nothing_is_scored():
    r = classify(dsn(recipient_block("a@example.com", "delivered", "2.0.0", "250 ok")))
    assert r.is_bounce and r.kind == "dsn"
    assert one(r).bounce_class == "delivered" and not r.scored


@pytest.mark.parametrize("status,diagnostic,expected", [
    ("5.7.1", "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org", "policy"),
    ("5.7.1", "550 5.7.1 Unauthenticated email from example.org is not accepted due to domain's DMARC policy", "policy"),
    ("5.7.1", "550 5.7.1 Message rejected: virus found", "policy"),
    ("5.7.1", "550 5.7.1 Delivery not authorized, message refused", "policy"),
    ("5.7.1", "554 5.7.1 <alice@example.com>: Relay access denied", "hard"),
    ("5.7.1", "550 5.7.1 RESOLVER.ADR.RecipNotFound; not found; user unknown", "hard"),
    ("5.0.0", "550 Message rejected because it looks like spam", "policy"),
    ("5.0.0", "550 Requested action not taken: mailbox unavailable", "hard"),
    ("5.1.3", "553 http://www.spamhaus.org/query/bl?ip=192.0.2.222", "policy"),
    ("5.1.0", "550-'5.7.1 <bounce@example.org>... Access denied'", "policy"),
    ("5.2.2", "552 5.2.2 Mailbox full", "soft"),      # RFC 3463 3.3: transient even in a 5xx
    ("5.3.4", "552 5.3.4 Message size exceeds fixed limit", "policy"),
    ("5.6.0", "550 5.6.0 Content rejected", "policy"),
    ("4.2.2", "452 4.2.2 Mailbox full, retries given up", "soft"),
])
def test_permanent_and_policy_rules(status, diagnostic, expected):
    r = classify(dsn(recipient_block("alice@example.com", "failed", status, diagnostic)))
    f = one(r)
    assert f.bounce_class == expected, f.reason
    assert f.reason  # every class says why


def test_policy_words_in_the_returned_post_do_not_count():
    # The returned original talks about spam; the remote MTA said only 5.0.0.
    r = classify(dsn(recipient_block("alice@example.com", "failed", "5.0.0"), human="Delivery failed."))
    assert one(r).bounce_class == "hard"


def test_broken_dsns_are_tolerated():
    # no report-type, Action with a comment, Status with junk, no Final-Recipient type
    block = ("Final-Recipient: <alice@example.com>\r\nAction: failed (bad mailbox)\r\n"
             "Status: 5.1.1 (unknown user)\r\n")
    r = classify(dsn(block, report_type=None))
    f = one(r)
    assert (f.address, f.bounce_class, f.status) == ("alice@example.com", "hard", "5.1.1")
    assert any("report-type" in n for n in r.notes)


def test_delivery_status_sent_as_text_plain():
    raw = (b"From: MAILER-DAEMON@example.net\r\nSubject: failure\r\nContent-Type: text/plain\r\n\r\n"
           b"Reporting-MTA: dns; example.net\r\n\r\n"
           b"Final-Recipient: rfc822; bob@example.com\r\nAction: failed\r\nStatus: 5.2.1\r\n")
    r = classify(raw)
    assert r.kind == "dsn" and one(r).address == "bob@example.com" and one(r).bounce_class == "hard"


def test_dsn_boundary_mismatch_still_read():
    raw = dsn(recipient_block("alice@example.com", "failed", "5.1.1", "user unknown"))
    raw = raw.replace(b'boundary="BOUND"', b'boundary="OTHER"')
    r = classify(raw)
    assert one(r).address == "alice@example.com" and one(r).bounce_class == "hard"


# --- non-standard bounces (flufl.bounce detectors + status heuristics) -------

QMAIL = (
    "From: MAILER-DAEMON@mx.example.net\r\nTo: list-bounces@lists.example.org\r\n"
    "Subject: failure notice\r\n\r\n"
    "Hi. This is the qmail-send program at mx.example.net.\r\n"
    "I'm afraid I wasn't able to deliver your message to the following addresses.\r\n"
    "This is a permanent error; I've given up. Sorry it didn't work out.\r\n\r\n"
    "<carol@example.com>:\r\n{reply}\r\n\r\n"
    "--- Below this line is a copy of the message.\r\n\r\n" + ORIGINAL
)


@pytest.mark.parametrize("reply,expected,status", [
    ("192.0.2.1 does not like recipient.\r\nRemote host said: 550 5.1.1 <carol@example.com>... User unknown",
     "hard", "5.1.1"),
    ("192.0.2.1 failed after I sent the message.\r\nRemote host said: 554 5.7.1 Rejected: listed at bl.spamcop.net",
     "policy", "5.7.1"),
    ("Sorry, I couldn't find any host named example.com. (#5.1.2)", "hard", "5.1.2"),
    ("This address no longer accepts mail.", "hard", None),
])
def test_qmail_bounce(reply, expected, status):
    r = classify(QMAIL.format(reply=reply).encode())
    f = one(r)
    assert r.kind == "non-standard" and r.is_bounce
    assert (f.address, f.bounce_class, f.status) == ("carol@example.com", expected, status), f.reason
    assert f.attribution == "detector:qmail"


def test_headers_say_bounce_but_no_format_known():
    raw = (b"From: Mail Delivery Subsystem <MAILER-DAEMON@example.net>\r\nSubject: Returned mail\r\n\r\n"
           b"Your message could not be delivered. 550 5.1.1 mailbox unavailable\r\n")
    r = classify(raw)
    f = one(r)
    assert (f.address, f.bounce_class, f.attribution) == (None, "hard", "heuristic")
    r = classify(b"From: MAILER-DAEMON@example.net\r\nSubject: Returned mail\r\n\r\nSomething went wrong.\r\n")
    assert one(r).bounce_class == "unknown" and r.is_bounce


def test_warning_report_is_delayed_not_soft():
    raw = (b"From: MAILER-DAEMON@example.net\r\nSubject: Delayed Mail (still being retried)\r\n\r\n"
           b"THIS IS A WARNING MESSAGE ONLY. YOU DO NOT NEED TO RESEND YOUR MESSAGE.\r\n"
           b"451 4.4.1 host not reachable; will keep trying for 4 days.\r\n")
    assert one(classify(raw)).bounce_class == "delayed"


# --- auto-replies, complaints, human replies ---------------------------------

@pytest.mark.parametrize("headers", [
    "Auto-Submitted: auto-replied\r\nSubject: Re: [list] hello\r\n",
    "X-Autoreply: yes\r\nSubject: Re: [list] hello\r\n",
    "Precedence: auto_reply\r\nSubject: hello\r\n",
    "Subject: Automatic reply: [list] hello\r\n",
    "Subject: Out of Office: [list] hello\r\n",
    "Subject: =?utf-8?q?R=C3=A9ponse_automatique=3A_hello?=\r\n",
    "Subject: [Automatyczna =?iso-8859-2?Q?odpowied=BC?=] hello\r\n",
    "Subject: Automatisch antwoord: hello\r\n",
    "Subject: Thank you for your e-mail\r\n",
    # responders mark their answers as bulk mail (RFC 3834 section 3.1.8), people do not
    "Precedence: bulk\r\nSubject: Re: hello\r\n",
    "Precedence: junk\r\nSubject: Re: hello\r\n",
])
def test_autoreplies_are_never_bounces(headers):
    raw = (f"From: Alice <alice@example.com>\r\nTo: list-bounces+x@lists.example.org\r\n{headers}\r\n"
           "I am on vacation until Monday; for urgent matters write to bob@example.com.\r\n").encode()
    for verp in (None, "alice@example.com"):
        r = classify(raw, verp_address=verp)
        assert (r.is_bounce, r.kind) == (False, "autoreply"), headers
        assert not r.scored
        assert [f.bounce_class for f in r.failures] == ["autoreply"]


def test_human_reply_to_bounce_address_is_not_an_autoreply():
    raw = (b"From: Alice <alice@example.com>\r\nTo: list-bounces@lists.example.org\r\n"
           b"Subject: Re: hello\r\n\r\nWhy do I get this?\r\n")
    assert classify(raw).kind == "not-a-bounce"


def test_bounce_with_precedence_bulk_is_still_a_bounce():
    raw = dsn(recipient_block("alice@example.com", "failed", "5.1.1", "user unknown"),
              extra_headers="Precedence: bulk\r\n")
    assert one(classify(raw)).bounce_class == "hard"


def test_bounce_marked_auto_submitted_is_still_a_bounce():
    # Exim and Postfix put Auto-Submitted on their bounces (RFC 3834 section 5).
    raw = dsn(recipient_block("alice@example.com", "failed", "5.1.1", "user unknown"),
              extra_headers="Auto-Submitted: auto-replied\r\n")
    r = classify(raw)
    assert r.kind == "dsn" and one(r).bounce_class == "hard"


def test_arf_complaint():
    raw = (
        "From: feedback@isp.example\r\nSubject: complaint\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nThis is an abuse report.\r\n"
        "--B\r\nContent-Type: message/feedback-report\r\n\r\n"
        "Feedback-Type: abuse\r\nUser-Agent: ISP-FBL/1.0\r\nVersion: 1\r\n"
        "Original-Rcpt-To: <dave@isp.example>\r\n\r\n"
        "--B\r\nContent-Type: message/rfc822\r\n\r\n" + ORIGINAL + "\r\n--B--\r\n"
    ).encode()
    r = classify(raw)
    f = one(r)
    assert (r.kind, f.address, f.bounce_class, f.diagnostic) == ("arf", "dave@isp.example", "complaint", "abuse")
    assert not r.scored


def test_human_reply_to_a_verp_address_is_not_a_bounce():
    raw = (b"From: Alice <alice@example.com>\r\nTo: list-bounces+alice=example.com.k1.abcdefgh@lists.example.org\r\n"
           b"Subject: Re: [list] hello\r\nIn-Reply-To: <post-1@lists.example.org>\r\n\r\nThanks, good point!\r\n")
    r = classify(raw, verp_address="alice@example.com")
    assert (r.is_bounce, r.kind, r.failures) == (False, "not-a-bounce", ())
    assert r.original_message_id == "<post-1@lists.example.org>"


# --- VERP and probes ----------------------------------------------------------

def test_verp_attributes_every_failure_to_the_member():
    raw = dsn(recipient_block("forwarded@elsewhere.example", "failed", "5.1.1", "user unknown"),
              recipient_block("other@elsewhere.example", "delivered", "2.0.0"))
    r = classify(raw, verp_address="member@example.com")
    f = one(r)
    assert (f.address, f.bounce_class, f.attribution) == ("member@example.com", "hard", "verp")
    assert "forwarded@elsewhere.example" in f.reason
    r = classify(raw, verp_address="member@example.com", verp_kind="probe")
    assert one(r).attribution == "probe"


def test_verp_gives_an_address_less_bounce_its_member():
    raw = (b"From: Mail Delivery System <MAILER-DAEMON@example.net>\r\nSubject: Mail delivery failed\r\n\r\n"
           b"550 5.7.1 Your message was rejected by the recipient's spam filter.\r\n")
    r = classify(raw, verp_address="member@example.com")
    f = one(r)
    assert (f.address, f.bounce_class, f.attribution) == ("member@example.com", "policy", "verp")


def test_verp_says_who_the_text_says_what():
    """Root cause 4: a text-only bounce without a status code is read by the same
    detectors with or without VERP (no fast path that skips them)."""
    raw = (b"From: MAILER-DAEMON@example.net\r\nSubject: failure notice\r\n\r\n"
           b"Hi. This is the qmail-send program at example.net.\r\n"
           b"I'm afraid I wasn't able to deliver your message to the following addresses.\r\n"
           b"This is a permanent error; I've given up. Sorry it didn't work out.\r\n\r\n"
           b"<forwarded@example.net>:\r\nThis address no longer accepts mail.\r\n")
    plain = one(classify(raw))
    verp = one(classify(raw, verp_address="member@example.com"))
    assert plain.bounce_class == verp.bounce_class == "hard", (plain.reason, verp.reason)
    assert (plain.address, verp.address) == ("forwarded@example.net", "member@example.com")
    assert plain.attribution == "detector:qmail" and verp.attribution == "verp"


# --- bad input: never raises ----------------------------------------------------

@pytest.mark.parametrize("raw", [
    b"",
    b"\x00\xff\xfe garbage without headers",
    b"From: \xff\xfe\xc3(\r\nSubject: \x80\x81\r\nContent-Type: multipart/report; boundary=\r\n\r\n--\r\n",
    b"Content-Type: multipart/mixed; boundary=\"x\"\r\n\r\n--x\r\nContent-Type: message/delivery-status\r\n\r\n"
    b"Final-Recipient: rfc822; \xe9l\xe8ve@\xe9cole.example\r\nAction: failed\r\nStatus: 5.1.1\r\n",
    "Final-Recipient: rfc822; élève@école.example\nAction: failed\nStatus: 5.1.1\n",   # str, non-ASCII
    b"Content-Type: message/delivery-status\r\n\r\nAction: failed\r\nStatus: 9.9.9.9\r\n",
    b"Subject: =?bogus?Q?=ZZ?=\r\nContent-Type: text/plain; charset=no-such-charset\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\n!!!not base64!!!",
])
def test_bad_input_never_raises(raw):
    r = classify(raw, envelope_recipient="list-bounces@lists.example.org", verp_address=None)
    assert isinstance(r, Classification)
    assert all(f.bounce_class in CLASSES for f in r.failures)


def test_non_ascii_dsn_address_kept():
    raw = ("From: MAILER-DAEMON@example.net\r\nContent-Type: multipart/report; report-type=delivery-status; "
           'boundary="b"\r\n\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n\r\n'
           "Final-Recipient: utf-8; élève@école.example\r\nAction: failed\r\nStatus: 5.1.1\r\n--b--\r\n").encode()
    f = one(classify(raw))
    assert f.bounce_class == "hard" and f.address and f.address.endswith("@école.example")


def test_huge_message_is_capped_and_still_classified():
    padding = "x" * 998 + "\r\n"
    raw = dsn(recipient_block("alice@example.com", "failed", "5.1.1", "user unknown"))
    raw = raw.replace(b"This post talks", (padding * 20000).encode() + b"This post talks")  # ~20 MB returned body
    assert len(raw) > 10 * 1024 * 1024
    f = one(classify(raw))
    assert (f.address, f.bounce_class) == ("alice@example.com", "hard")


# --- the status rules on their own ------------------------------------------------

def test_find_status_ignores_versions_and_addresses():
    assert st.find_status("Lotus SMTP MTA v4.6.1 said 550 5.1.1 unknown") == "5.1.1"
    assert st.find_status("host 192.0.2.1 said 5.1.1") == "5.1.1"
    assert st.find_status("Exim 4.80 at 10.0.0.1") is None
    assert st.find_status("5.0.0 then 5.7.1 spam") == "5.7.1"
    assert st.find_status("qmail 2.0.13 release", "45") is None


def test_action_normalisation():
    assert st.normalize_action("Failed (permanent)") == "failed"
    assert st.normalize_action("") == ""
    assert st.classify_failure("relayed", "2.0.0", "")[0] == "relayed"
    assert st.classify_failure("", None, "nothing useful here") == (None, "no status code", None)


def test_words_of_our_own_quoted_message_do_not_make_it_policy():
    """A dead mailbox whose bounce quotes our message inline, spam-filter headers
    and all: the quoted X-Virus-Scanned field is not the remote MTA's reason."""
    raw = (b"From: postmaster@mx.example.net\r\nTo: demo-bounces@lists.example.org\r\n"
           b"Subject: Returned Mail - Error During Delivery\r\n\r\n"
           b"------ Failed Recipients ------\r\n\r\n"
           b"<gone@example.net>: Requested action not taken: mailbox unavailable. [SMTP Error Code 550]\r\n"
           b"-------- Returned Mail --------\r\n\r\n"
           b"Received: from lists.example.org by mx.example.net; Wed, 20 Nov 2002 19:58:47 -0500\r\n"
           b"X-Virus-Scanned: by amavisd-milter\r\nX-Spam-Status: No\r\nSubject: hello\r\n\r\nhi\r\n")
    result = classify(raw)
    assert [(f.address, f.bounce_class) for f in result.failures] == [("gone@example.net", "hard")], result


# --- issue 14: stage, registry, wording families --------------------------------

@pytest.mark.parametrize("text,stage", [
    ("host mx.example.net[192.0.2.1] said: 550 5.7.1 refused (in reply to MAIL\n    FROM command)", "mail"),
    ("SMTP error from remote mail server after MAIL FROM:<l-bounces@example.org> SIZE=100:\n 550 no", "mail"),
    ("... while talking to mx.example.net.:\n>>> MAIL From:<l@example.org>\n<<< 550 5.7.1 Access denied", "mail"),
    ("Connected to 192.0.2.3 but sender was rejected.\nRemote host said: 553 sorry", "mail"),
    ("530 5.7.57 Client was not authenticated to send anonymous mail during MAIL FROM", "mail"),
    ("SMTP error from remote mail server after initial connection:\n 554 go away", "connect"),
    ("host mx.example.net[192.0.2.1] refused to talk to me: 554 5.7.1 blocked", "connect"),
    ("SMTP error from remote mailer after EHLO lists.example.org:\n 550 no", "helo"),
    ("said: 554 5.0.0 Service denied (in reply to HELO command)", "helo"),
    ("said: 550 5.1.1 unknown (in reply to RCPT TO command)", "rcpt"),
    ("SMTP error from remote mail server after RCPT TO:<a@example.net>:\n 550 unknown", "rcpt"),
    ("192.0.2.3 does not like recipient.\nRemote host said: 550 no mailbox", "rcpt"),
    ("said: 554 5.7.1 rejected (in reply to end of DATA command)", "data"),
    ("SMTP error from remote mail server after end of data:\n 550 rejected", "data"),
    ("192.0.2.3 failed after I sent the message.\nRemote host said: 554 no", "data"),
    # Sendmail with PIPELINING shows only '>>> DATA' before the recipients' replies
    (">>> DATA\n<<< 550 5.1.1 <a@example.net>... User unknown\n<<< 503 5.0.0 Need RCPT (recipient)", "rcpt"),
    ("Remote Server returned '550 5.1.1 RESOLVER.ADR.RecipNotFound; not found'", None),
])
def test_smtp_stage_in_each_mtas_words(text, stage):
    from listgate.bounce.stage import smtp_stage
    found = smtp_stage(text)
    assert (found.stage if found else None) == stage, found


@pytest.mark.parametrize("status,about", [
    ("5.1.1", "recipient"), ("5.1.10", "recipient"), ("5.7.13", "recipient"), ("5.2.1", "recipient"),
    ("5.2.2", "transient"), ("4.2.2", "transient"), ("5.4.7", "transient"), ("5.7.28", "transient"),
    ("5.7.26", "message"), ("5.6.0", "message"), ("5.3.4", "message"), ("5.7.23", "message"),
    ("5.7.27", "sender"), ("5.1.8", "sender"), ("5.7.25", "sender"),
    ("5.7.1", "ambiguous"), ("5.0.0", "ambiguous"), ("5.7.606", "ambiguous"), ("5.6.99", "message"),
])
def test_enhanced_code_registry_says_what_a_code_is_about(status, about):
    from listgate.bounce.codes import lookup
    assert lookup(status).about == about
    assert lookup(None) is None and lookup("junk") is None


@pytest.mark.parametrize("diagnostic,context,expected", [
    # 1. stage: the same bare reply is policy before RCPT, hard at RCPT, policy after DATA
    ("550 5.0.0 Access denied", "said: 550 5.0.0 Access denied (in reply to MAIL FROM command)", "policy"),
    ("550 5.0.0 Access denied", "SMTP error from remote mail server after MAIL FROM:<x@y>:", "policy"),
    ("550 5.0.0 Access denied", "said: 550 5.0.0 Access denied (in reply to RCPT TO command)", "hard"),
    ("554 5.0.0 Transaction failed", "said: 554 5.0.0 Transaction failed (in reply to end of DATA command)", "policy"),
    ("554 5.0.0 Transaction failed", "SMTP error from remote mail server after end of data:", "policy"),
    ("550 5.1.1 <a@example.net>: user unknown", "(in reply to end of DATA command)", "hard"),
    # 2. blocking words (several MTAs' wordings) and registry codes
    ("550 Invalid IP for sending mail of domain example.org", "", "policy"),
    ("554 5.7.1 <h[192.0.2.1]>: Client host rejected: Access denied", "", "policy"),
    ("550 5.7.606 Access denied, banned sending IP [192.0.2.1]", "", "policy"),
    ("550 Your IP 192.0.2.1 is listed at zen.spamhaus.org (BL)", "", "policy"),
    ("530 5.7.0 Must issue a STARTTLS command first", "", "policy"),
    ("550 5.7.1 RESOLVER.RST.AuthRequired; authentication required", "", "policy"),
    ("550 5.7.25 The IP address sending this message does not have a PTR record", "", "policy"),
    ("550 5.7.27 Sender address has null MX", "", "policy"),
    ("550 5.7.13 RESOLVER.ADR.Disabled; recipient is disabled", "", "hard"),
    ("550 5.7.13 <a@example.net>: Recipient address rejected: User account disabled", "", "hard"),
    ("550 5.7.1 Unable to relay; user unknown", "", "hard"),
    # 3. transient, whatever the reply class
    ("552 5.2.2 Mailbox full", "", "soft"),
    ("554 5.2.2 mailbox full; STOREDRV.Deliver.Exception:QuotaExceededException", "", "soft"),
    ("550 <a@example.net>: Disk quota exceeded", "", "soft"),
    ("550 5.7.0 x-unix; maildrop: maildir over quota", "", "soft"),
    ("550 user is receiving mail at a rate that prevents additional messages from being delivered", "", "soft"),
    ("550 Too many connections, try again later", "", "soft"),
])
def test_permanent_rules_by_mechanism(diagnostic, context, expected):
    bounce_class, reason, _ = st.classify_failure("failed", None, diagnostic, context=context)
    assert bounce_class == expected, reason
