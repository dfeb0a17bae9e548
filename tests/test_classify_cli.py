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
    assert "why: DSN: permanent 5.7.1 + 'client host blocked' in text: our host or message was refused" in out
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


def test_verp_option_with_a_member_address(tmp_path):
    f = tmp_path / "b.eml"
    f.write_bytes(DSN.format(rcpt_header="").encode())
    rc, out, err = run("classify", "--json", "--verp", "alice@example.com", str(f))
    assert rc == 0, err
    [item] = json.loads(out)
    [failure] = item["failures"]
    assert (failure["address"], failure["attribution"], failure["bounce_class"]) == \
        ("alice@example.com", "verp", "policy")
    assert item["verp"]["header"] == "--verp" and item["verp"]["member"] == "alice@example.com"


def test_verp_option_with_a_full_bounce_address_is_decoded(site, tmp_path):
    path, st = site
    lc = st.get_list("demo")
    bounce_addr = verp.member_bounce_address(st, lc, "alice@example.com")
    f = tmp_path / "b.eml"
    f.write_bytes(DSN.format(rcpt_header="").encode())
    rc, out, err = run("-c", path, "classify", "--verp", bounce_addr, str(f))
    assert rc == 0, err
    assert f"sent to {bounce_addr} (--verp): demo" in out and "-> member alice@example.com" in out
    assert "alice@example.com: policy 5.7.1 [verp] scored with weight 0" in out


def _corpus_paths() -> list:
    from engine_helpers import CORPUS
    from test_corpus import NEW_CORPUS
    paths = []
    for base in (CORPUS, NEW_CORPUS):
        table = base / "EXPECTED.tsv"
        if table.exists():
            paths += [base / line.split("\t", 1)[0] for line in table.read_text(encoding="utf-8").splitlines()[1:]
                      if line.strip()]
    return paths


def test_engine_and_classify_verp_agree_on_every_corpus_message(site, tmp_path):
    """Root cause 4: ``listgate classify --verp MEMBER`` shows exactly what the engine
    decides for a bounce that reached MEMBER's VERP address, message by message."""
    from engine_helpers import make_env
    paths = _corpus_paths()
    if len(paths) < 50:
        pytest.skip("bounce corpus not present")
    member = "jane@example.com"
    env = make_env(site[1], members=(member,))
    engine = []
    for p in paths:
        outcome = env.bounce(p.read_bytes(), env.verp_rcpt(member))
        is_bounce = outcome.classification.is_bounce
        classes = sorted({a.bounce_class for a in outcome.actions if a.address == member})
        engine.append((is_bounce, classes if is_bounce else []))
    rc, out, err = run("classify", "--json", "--verp", member, *map(str, paths))
    assert rc == 0, err
    cli = []
    for item in json.loads(out):
        classes = sorted({f["bounce_class"] for f in item["failures"]}) or ["unknown"]
        assert all(f["address"] == member for f in item["failures"])
        cli.append((item["is_bounce"], classes if item["is_bounce"] else []))
    differ = [(str(p), e, c) for p, e, c in zip(paths, engine, cli) if e != c]
    assert not differ, differ[:10]
    assert len(cli) == len(paths)
