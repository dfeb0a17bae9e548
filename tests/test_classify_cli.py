"""``listgate classify``: the admin's "why did this bounce count?" tool, run as a real process."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from listgate import clock, config, instance, verp

DSN = (
    "{rcpt_header}"
    "From: MAILER-DAEMON@mx.example.net\r\nSubject: Undelivered Mail Returned to Sender\r\n"
    "Message-ID: <dsn-7@mx.example.net>\r\nMIME-Version: 1.0\r\n"
    'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
    "--B\r\nContent-Type: text/plain\r\n\r\nDelivery failed.\r\n"
    "--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n"
    "Final-Recipient: rfc822; forwarded@elsewhere.example\r\nAction: failed\r\nStatus: 5.7.1\r\n"
    "Diagnostic-Code: smtp; 554 5.7.1 Service unavailable; client host blocked using zen.spamhaus.org\r\n"
    "--B--\r\n"
)


def run(*args, stdin=None):
    proc = subprocess.run([sys.executable, "-m", "listgate", *args], input=stdin, capture_output=True,
                          timeout=60)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


@pytest.fixture
def site(tmp_path):
    clock.reset()
    path = instance.init(str(tmp_path / "inst"))
    yield path, config.load(path)
    clock.reset()


def test_text_output_says_class_status_and_why(tmp_path):
    f = tmp_path / "b.eml"
    f.write_bytes(DSN.format(rcpt_header="").encode())
    rc, out, err = run("classify", str(f))
    assert rc == 0, err
    assert "dsn (a bounce)" in out
    assert "forwarded@elsewhere.example: policy 5.7.1 [dsn] scored with the list's bounce_weights.policy" in out
    assert "why: DSN: permanent 5.7.1 + 'blocked' in text" in out
    assert "spamhaus" in out


def test_json_output_and_stdin(tmp_path):
    rc, out, err = run("classify", "--json", "-", stdin=DSN.format(rcpt_header="").encode())
    assert rc == 0, err
    [item] = json.loads(out)
    assert item["file"] == "-" and item["kind"] == "dsn" and item["is_bounce"] is True
    [failure] = item["failures"]
    assert failure["bounce_class"] == "policy" and failure["scored"] is True and failure["weight"] is None
    assert failure["status"] == "5.7.1" and item["verp"] is None


def test_missing_file_is_reported_and_others_still_classified(tmp_path):
    f = tmp_path / "b.eml"
    f.write_bytes(b"From: alice@example.com\r\nSubject: hi\r\n\r\nthanks!\r\n")
    rc, out, err = run("classify", str(tmp_path / "nope.eml"), str(f))
    assert rc == 1
    assert "nope.eml" in err
    assert "not-a-bounce (not a bounce)" in out and "nothing is scored" in out


def test_with_config_a_verp_recipient_is_decoded_and_attributed(site, tmp_path):
    path, st = site
    lc = st.get_list("demo")
    bounce_addr = verp.member_bounce_address(st, lc, "alice@example.com")
    f = tmp_path / "b.eml"
    f.write_bytes(DSN.format(rcpt_header=f"Delivered-To: {bounce_addr}\r\n").encode())
    rc, out, err = run("-c", path, "classify", "--json", str(f))
    assert rc == 0, err
    [item] = json.loads(out)
    assert item["verp"]["kind"] == "member" and item["verp"]["member"] == "alice@example.com"
    [failure] = item["failures"]
    assert (failure["address"], failure["attribution"], failure["bounce_class"]) == \
        ("alice@example.com", "verp", "policy")
    assert failure["weight"] == 0.0          # list default: policy bounces weigh nothing
    assert "forwarded@elsewhere.example" in failure["reason"]


def test_with_config_a_forged_verp_is_not_attributed(site, tmp_path):
    path, st = site
    lc = st.get_list("demo")
    forged = verp.member_bounce_address(st, lc, "alice@example.com").replace("alice=", "mallory=")
    f = tmp_path / "b.eml"
    f.write_bytes(DSN.format(rcpt_header=f"To: {forged}\r\n").encode())
    rc, out, err = run("-c", path, "classify", str(f))
    assert rc == 0, err
    assert "bounces, invalid" in out and "bad-mac" in out
    assert "forwarded@elsewhere.example: policy" in out   # the DSN's own address, not a member
