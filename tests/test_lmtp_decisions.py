"""One table of end-of-message decisions, run through each front end that sees whole
messages: the milter (libmilter's calls via TestCtx), ``listgate inject`` (Exim's
pipe) and the LMTP server (a real socket). They share routing and
:func:`listgate.inject.store_message`; this checks that each translates them alike:
what it refuses at RCPT, what it stores as a qfile, what the bounce engine scores."""
from __future__ import annotations

import Milter
import pytest

from listgate import config, verp
from listgate.milter.app import ListgateMilter, SiteSource
from listgate.queue import Switchboard
from listgate.store import open_store

from conftest import make_site
from lmtp_helpers import RunningLmtp
from milter_helpers import fresh_ctx, transact
from test_inject import run_inject

LIST = "demo@lists.example.org"
MEMBER = "userx@example.com"
POST = b"From: Alice <alice@example.net>\r\nSubject: hi\r\nMessage-ID: <d1@example.net>\r\n\r\nbody \xe9\r\n"


def _forged(site) -> str:
    return f"demo-bounces+bob=example.com.{site.conf.verp.keys[0].id}.aaaaaaaa@lists.example.org"


def _member_verp(site) -> str:
    return verp.member_bounce_address(site, site.get_list("demo", "lists.example.org"), MEMBER)


# (name, sender, recipient (a function of the site for VERP), message ("bounce": the corpus DSN),
#  expected: ("refused", enhanced code) or ("queued", role) or ("scored", score))
CASES = [
    ("post", "alice@example.net", LIST, POST, ("queued", "post")),
    ("owner", "alice@example.net", "demo-owner@lists.example.org", POST, ("queued", "owner")),
    ("request", "alice@example.net", "demo-request@lists.example.org", POST, ("queued", "request")),
    ("unknown list", "alice@example.net", "nolist@lists.example.org", POST, ("refused", "5.1.1")),
    ("unknown suffix", "alice@example.net", "demo-nosuch@lists.example.org", POST, ("refused", "5.1.1")),
    ("forged VERP", "", _forged, "bounce", ("refused", "5.1.1")),
    ("bounce", "", _member_verp, "bounce", ("scored", 1.0)),
    # a bare DSN to the plain bounce address naming a VERP member proves nothing (issue 20)
    ("plain bounce", "", "demo-bounces@lists.example.org", "bounce", ("taken unscored", 0.0)),
]


def via_milter(site, sender, rcpt, msg):
    ListgateMilter.sites = SiteSource(config.Watcher(site.path, interval=0, site=site))
    ctx = fresh_ctx()
    t = transact(ctx, sender, [rcpt], msg)
    if t.rcpt_rc[rcpt] == Milter.REJECT:
        return "refused", ctx._reply[1]
    assert t.eom_rc in (Milter.DISCARD, Milter.ACCEPT), t.eom_rc
    return "taken", None


def via_inject(site, sender, rcpt, msg):
    out = run_inject(site, msg, "--sender", sender, "--recipient", rcpt)
    if out.returncode == 67:
        return "refused", "5.1.1"
    assert out.returncode == 0, out.stderr
    return "taken", None


def via_lmtp(site, sender, rcpt, msg):
    with RunningLmtp(site) as srv:
        (code, text), = srv.transact(sender, [rcpt], msg).values()
    if code >= 500:
        return "refused", text.split()[0]
    assert code == 250, (code, text)
    return "taken", None


@pytest.mark.parametrize("front_end", [via_milter, via_inject, via_lmtp], ids=["milter", "inject", "lmtp"])
@pytest.mark.parametrize("name,sender,rcpt,msg,expected", CASES, ids=[c[0] for c in CASES])
def test_same_decision_through_each_front_end(tmp_path, corpus, monkeypatch, front_end, name, sender, rcpt, msg,
                                              expected):
    monkeypatch.setattr(ListgateMilter, "sites", None)     # via_milter sets it; restored after the test
    monkeypatch.setattr(Milter, "factory", ListgateMilter)
    site = make_site(tmp_path / "inst", owner="owner@lists.example.org")
    open_store(site, LIST).add_member(MEMBER)
    if msg == "bounce":
        msg = (corpus / "flufl.bounce/dsn_13.txt").read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if callable(rcpt):
        rcpt = rcpt(site)
    got = front_end(site, sender, rcpt, msg)
    sb = Switchboard.for_site(site, "in")
    roles = [sb.peek(q).meta["role"] for q in sb.ids()]
    score = open_store(site, LIST).get_member(MEMBER).bounce_score
    kind, value = expected
    if kind == "refused":
        assert got == ("refused", value) and roles == [] and score == 0
    elif kind == "queued":
        assert got == ("taken", None) and roles == [value] and score == 0
    else:   # scored / taken unscored
        assert got == ("taken", None) and roles == [] and score == value
