"""The policy server behind a real Postfix (check_policy_service as INSTALL's main.cf snippet sets it)."""
from __future__ import annotations

import smtplib

import pytest

from listgate import verp
from listgate.store import close_all, store_path

from harness import postfix as pf
from policy_helpers import ServerThread, closed_site  # noqa: F401 - fixture

D = "lists.example.org"

pytestmark = pytest.mark.skipif(not pf.available(), reason="needs Postfix and root")

MSG = b"From: someone@example.net\r\nTo: list\r\nSubject: policy test\r\n\r\nhello\r\n"


@pytest.fixture
def policy(closed_site):
    spec = f"inet:{pf.free_port()}@127.0.0.1"
    with ServerThread(closed_site, spec) as srv:
        yield srv


@pytest.fixture
def postfix(policy):
    with pf.PostfixInstance(list_domain=D, policy=policy.server.socket_spec) as instance:
        yield instance


def refused(postfix, sender, rcpts):
    """{rcpt: (code, text)} of the recipients Postfix refused at RCPT."""
    result = postfix.send(sender, rcpts, MSG)
    if isinstance(result, smtplib.SMTPRecipientsRefused):
        return {r: (c, t.decode()) for r, (c, t) in result.recipients.items()}
    assert isinstance(result, dict), result
    return {r: (c, t.decode()) for r, (c, t) in result.items()}


def test_unknown_list_and_forged_bounce_get_550_at_rcpt(postfix, closed_site):
    good = verp.member_bounce_address(closed_site, closed_site.get_list("demo"), "member@example.com")
    forged = good.rpartition(".")[0] + ".aaaaaaaa@" + D
    got = refused(postfix, "", [f"nolist@{D}", forged, f"demo-bounces+{'q' * 26}@{D}", good, f"demo-bounces@{D}"])
    assert set(got) == {f"nolist@{D}", forged, f"demo-bounces+{'q' * 26}@{D}"}
    assert got[f"nolist@{D}"][0] == 550 and got[f"nolist@{D}"][1].startswith("5.1.1 ")
    assert "no such list address" in got[f"nolist@{D}"][1]
    for rcpt in (forged, f"demo-bounces+{'q' * 26}@{D}"):
        assert got[rcpt][0] == 550 and got[rcpt][1].startswith("5.1.1 ")
        assert "not a valid bounce address" in got[rcpt][1]


def test_non_member_post_to_closed_list_550_571(postfix):
    got = refused(postfix, "stranger@example.net", [f"demo@{D}"])
    assert got[f"demo@{D}"][0] == 550 and got[f"demo@{D}"][1].startswith("5.7.1 ")
    assert refused(postfix, "member@example.com", [f"demo@{D}"]) == {}


def test_store_failure_tempfails_at_rcpt(postfix, closed_site):
    close_all()
    with open(store_path(closed_site, f"demo@{D}"), "wb") as fh:
        fh.write(b"not a database" * 100)
    try:
        got = refused(postfix, "stranger@example.net", [f"demo@{D}", f"nolist@{D}"])
        assert got[f"demo@{D}"][0] == 451 and got[f"demo@{D}"][1].startswith("4.3.0 ")
        assert got[f"nolist@{D}"][0] == 550
    finally:
        close_all()


def test_policy_server_down_fails_open(closed_site):
    # INSTALL sets default_action=DUNNO: with listgate's policy server gone, mail keeps flowing
    dead = f"inet:127.0.0.1:{pf.free_port()}"
    with pf.PostfixInstance(list_domain=D, policy=dead) as instance:
        assert refused(instance, "stranger@example.net", [f"nolist@{D}"]) == {}
