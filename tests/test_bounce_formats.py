"""Issue 14, root causes 5-7: formats flufl.bounce lacks, feedback types, our side's TLS problems.

``tests/data/bounces2`` holds messages written from the formats' documentation
(SOURCES.md there); ``EXPECTED.tsv`` gives the class each must get, with the
root cause it belongs to. Agreement is printed per root cause (``-s``) and
must be complete. The mechanisms are tested beside it with two or more
senders' wordings each.
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from engine_helpers import make_env
from listgate.bounce import message as m
from listgate.bounce.classify import FAILURE_CLASSES, classify
from listgate.bounce.formats import carrier_verdict, find_ses_notification, run_own_detectors
from listgate.bounce.reports import find_site_report, is_complaint, transport_problem

DATA = Path(__file__).resolve().parent / "data" / "bounces2"
MEMBER = "member@verp.example"


def _rows():
    lines = (DATA / "EXPECTED.tsv").read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    assert header == ["path", "expected_addresses", "expected_class", "expectation_source", "notes", "root_cause"]
    for line in lines[1:]:
        path, addrs, cls, source, notes, cause = line.split("\t")
        yield path, {a for a in addrs.split(",") if a}, cls, source, cause


def test_every_file_has_a_row_and_a_source():
    rows = list(_rows())
    assert {r[0] for r in rows} == {p.name for p in DATA.glob("*.eml")}
    sources = (DATA / "SOURCES.md").read_text(encoding="utf-8")
    for path, _, _, source, cause in rows:
        assert f"`{source}`" in sources, (path, source)
        assert cause in ("5", "6", "7"), path


def test_corpus_agreement_per_root_cause(capsys):
    agree, total, disagreements = Counter(), Counter(), []
    for path, addrs, expected, _source, cause in _rows():
        raw = (DATA / path).read_bytes()
        plain = classify(raw)
        verp = classify(raw, verp_address=MEMBER)      # the engine's VERP path: same class, member's address
        got = {f.bounce_class for f in plain.failures}
        found = {f.address for f in plain.failures if f.address}
        ok = (got == {expected} and found == addrs
              and {f.bounce_class for f in verp.failures} == {expected}
              and {f.address for f in verp.failures} == {MEMBER})
        total[cause] += 1
        agree[cause] += ok
        if not ok:
            disagreements.append(f"{path}: expected {expected} {sorted(addrs)}, got {sorted(got)} {sorted(found)}"
                                 f" / VERP {sorted(f.bounce_class for f in verp.failures)}")
    with capsys.disabled():
        print("\nbounces2 agreement per root cause: "
              + ", ".join(f"{c}: {agree[c]}/{total[c]}" for c in sorted(total))
              + f"; overall {sum(agree.values())}/{sum(total.values())}")
        for line in disagreements:
            print("  disagrees: " + line)
    assert not disagreements


# -- root cause 5: the mechanisms ------------------------------------------------------------

@pytest.mark.parametrize("name,detector", [
    ("dma-rcpt-unknown.eml", "dma"), ("dma-data-spam.eml", "dma"),
    ("intermail-dti-user-unknown.eml", "intermail"), ("ezweb-domain-filter.eml", "intermail"),
    ("ezweb-timeout.eml", "intermail"), ("auone-mailbox-full.eml", "jpcarrier"),
])
def test_prose_detectors_name_the_address(name, detector):
    found = run_own_detectors(m.parse((DATA / name).read_bytes()))
    assert found is not None and found.name == detector and len(found.permanent) == 1


def test_prose_detectors_ignore_other_mail():
    human = b"From: a@b.example\nTo: demo@lists.example.org\nSubject: hi\n\nThere was an error in <x@y.example>.\n"
    assert run_own_detectors(m.parse(human)) is None
    # carrier wording from a sender that is not a carrier
    other = "From: someone@elsewhere.example\nSubject: x\nContent-Type: text/plain; charset=utf-8\n\n送信できませんでした <a@b.example>\n"
    assert run_own_detectors(m.parse(other.encode())) is None


@pytest.mark.parametrize("text,expected", [
    ("送信先のメールボックスが一杯のため、送信できませんでした。", "soft"),           # au one net
    ("原因:  <a@b.example> のユーザーは登録されていません", "hard"),                   # DTI (Japanese)
    ("送信先メールアドレスが見つからないか、送信先メールサーバの事由により", "hard"),     # au ezweb
    ("Your message was not delivered within 0 days and 1 hours.\nRemote host is not responding.", "soft"),
    ("Each of the following recipients was rejected by a remote mail server.", "policy"),
    ("以下の受取人は、相手のメールサーバに拒否されました。", "policy"),
    ("nothing the carriers say", None),
])
def test_carrier_wording(text, expected):
    verdict = carrier_verdict(text)
    assert (verdict[0] if verdict else None) == expected


def test_ses_needs_its_mail_object_and_never_raises():
    quoted = b'From: a@b.example\nSubject: json\n\n{"notificationType":"Bounce","bounce":{}}\n'
    assert find_ses_notification(m.parse(quoted)) is None
    broken = b'From: no-reply@sns.amazonaws.com\nSubject: AWS Notification Message\n\n{"notificationType":"Bounce", "mail": {\n'
    assert find_ses_notification(m.parse(broken)) is None
    assert classify(broken).failures == ()


# -- root cause 6: feedback types --------------------------------------------------------------

@pytest.mark.parametrize("feedback_type,complaint", [
    ("abuse", True), ("fraud", True), ("virus", True), ("", True),
    ("auth-failure", False), ("not-spam", False), ("other", False), ("dkim", False)])
def test_only_abuse_fraud_virus_are_complaints(feedback_type, complaint):
    assert is_complaint(feedback_type) is complaint


# -- root cause 7: our side's transport problems ------------------------------------------------

@pytest.mark.parametrize("text", [
    "TLS is required, but was not offered by host mx.example.net[192.0.2.1]",           # Postfix encrypt
    "TLS is required, but host mx.example.net[192.0.2.1] refused to start TLS: 454 4.7.0",  # Postfix
    "Server certificate not verified",                                                  # Postfix verify/dane
    "a TLS session is required, but an attempt to start TLS failed",                    # Exim
    "550 5.7.325 certificate-host-mismatch: Remote certificate MUST have a common name",  # Exchange Online
    "no valid TLSA records for mx.example.net",                                         # DANE
])
def test_transport_problem_wordings(text):
    assert transport_problem(text)


@pytest.mark.parametrize("text", [
    "530 5.7.0 Must issue a STARTTLS command first",      # the remote demands TLS of us: root cause 2's policy
    "550 5.7.1 TLS required by recipient",
    "550 5.1.1 <a@b.example>: Recipient address rejected: User unknown",
    "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org",
])
def test_transport_problem_leaves_other_refusals(text):
    assert transport_problem(text) is None


def test_report_subject_alone_is_not_a_report():
    msg = b"From: a@b.example\nSubject: Report Domain: example.org Submitter: me\n\nwhat does this mean?\n"
    assert find_site_report(m.parse(msg)) is None


# -- the engine acts on the new classes (no Postfix here; tests/test_bounce_formats_e2e.py has it) --

def _clear(env):
    for q in env.virgin():
        os.remove(q.path)


def test_engine_auth_failure_report_forwards_to_the_postmaster(site):
    env = make_env(site, members=("member@receiver.example",), complaint_action="unsubscribe")
    raw = (DATA / "arf-auth-failure-dmarc.eml").read_bytes()
    for rcpt in (env.plain_rcpt(), env.verp_rcpt("member@receiver.example")):
        outcome = env.bounce(raw, rcpt)
        assert [(a.action, a.bounce_class) for a in outcome.actions] == [("postmaster", "report")]
        member = env.member("member@receiver.example")
        assert member is not None and member.delivery_status == "enabled" and member.bounce_score == 0.0
        [fwd] = env.virgin("postmaster_forward")
        assert fwd.meta["recipients"] == [f"postmaster@{site.conf.hostname}"]
        assert b"auth-failure" in fwd.msg
        _clear(env)


def test_engine_site_failure_is_recorded_never_scored_postmaster_told_once(site):
    env = make_env(site, members=("member@tls.example", "other@tls.example"), bounce_score_threshold=1.0)
    raw = (DATA / "postfix-tls-not-offered.eml").read_bytes()
    for _ in range(2):
        outcome = env.bounce(raw, env.verp_rcpt("member@tls.example"))
        assert [(a.action, a.bounce_class) for a in outcome.actions] == [("ignored", "site")]
    outcome = env.bounce(raw.replace(b"member@tls.example", b"other@tls.example"), env.plain_rcpt())
    assert [(a.address, a.action) for a in outcome.actions] == [("other@tls.example", "ignored")]
    assert env.member("member@tls.example").bounce_score == 0.0
    assert not env.pending_probes("member@tls.example")
    assert len(env.virgin("postmaster_notice")) == 1       # one notice per domain and day
    assert all(c not in FAILURE_CLASSES for c in ("site", "report"))
