"""The milter through ``Milter.testctx.TestCtx`` (libmilter's calls without a socket).

Real store, real queue, real routing: each test has its own instance.
"""
from __future__ import annotations

import dataclasses
import email
import email.policy
import email.utils
from pathlib import Path

import Milter
import pytest

from listgate import clock, config
from listgate.milter.app import ListgateMilter, SiteSource
from listgate.queue import Switchboard
from listgate.store import open_store

from conftest import make_site
from milter_helpers import FULL_OFFER, fresh_ctx, remount, tmpfs, transact, untraced

LIST = "demo@lists.example.org"
OWNER = "owner@lists.example.org"
POST = (b"From: Alice <alice@example.net>\r\nTo: demo@lists.example.org\r\nSubject: hello\r\n"
        b"Message-ID: <m1@example.net>\r\nX-Folded: one\r\n\ttwo\r\n\r\nBody line 1\r\n\xe9t\xe9 8-bit\r\n")


@pytest.fixture
def milter_site(tmp_path, monkeypatch):
    site = make_site(tmp_path / "inst", owner=OWNER)
    # interval 0: every transaction checks the files (the daemon uses 1 s)
    monkeypatch.setattr(ListgateMilter, "sites", SiteSource(config.Watcher(site.path, interval=0, site=site)))
    monkeypatch.setattr(Milter, "factory", ListgateMilter)
    return site


def queued(site) -> list:
    sb = Switchboard.for_site(site, "in")
    return [sb.peek(q) for q in sb.ids()]


def test_negotiates_only_what_it_uses(milter_site):
    ctx = fresh_ctx(FULL_OFFER)
    assert ctx._negotiate() == Milter.CONTINUE
    actions, proto = ctx._opts[0], ctx._opts[1]
    assert actions == Milter.DELRCPT
    # skipped steps and steps without a reply
    for bit in (Milter.P_NR_HELO, Milter.P_NOEOH, Milter.P_NOUNKNOWN,
                Milter.P_NR_CONN, Milter.P_NR_MAIL, Milter.P_NR_HDR, Milter.P_NR_BODY, Milter.P_HDR_LEADSPC):
        assert proto & bit, hex(bit)
    # steps it answers: RCPT (reject/tempfail) and DATA (early ACCEPT)
    for bit in (Milter.P_NORCPT, Milter.P_NR_RCPT, Milter.P_NODATA, Milter.P_NR_DATA,
                Milter.P_NOMAIL, Milter.P_NOHDRS, Milter.P_NOBODY, Milter.P_NOCONNECT, Milter.P_NOHELO):
        assert not proto & bit, hex(bit)


def test_mail_without_list_recipient_is_accepted_at_data(milter_site):
    ctx = fresh_ctx()
    t = transact(ctx, "alice@example.net", ["bob@example.com", "carol@elsewhere.example"], POST)
    assert list(t.rcpt_rc.values()) == [Milter.CONTINUE, Milter.CONTINUE]
    assert t.data_rc == Milter.ACCEPT and t.eom_rc is None   # headers and body never sent
    assert queued(milter_site) == []


def test_post_only_list_recipient_is_stored_then_discarded(milter_site):
    ctx = fresh_ctx()
    t = transact(ctx, "alice@example.net", [LIST], POST, qid="4XyZ1abcD")
    assert t.eom_rc == Milter.DISCARD
    assert ctx._delrcpt == []
    [qf] = queued(milter_site)
    assert untraced(qf.msg) == POST            # byte-exact, 8-bit and folding kept
    assert qf.meta["list"] == LIST and qf.meta["role"] == "post"
    assert qf.meta["envelope_sender"] == "alice@example.net"
    assert qf.meta["recipients"] == [LIST]
    assert qf.meta["mta_queue_id"] == "4XyZ1abcD"
    assert qf.meta["client_address"] == "192.0.2.10"
    assert abs(qf.meta["arrival"] - clock.now()) < 60


def test_list_and_other_recipients(milter_site):
    ctx = fresh_ctx()
    rcpts = ["bob@example.com", LIST, "demo-owner@lists.example.org", "carol@example.com"]
    t = transact(ctx, "alice@example.net", rcpts, POST)
    assert t.eom_rc == Milter.ACCEPT
    assert sorted(ctx._delrcpt) == sorted(["<demo@lists.example.org>", "<demo-owner@lists.example.org>"])
    roles = sorted(q.meta["role"] for q in queued(milter_site))
    assert roles == ["owner", "post"]


def test_each_role_gets_its_own_qfile(milter_site):
    ctx = fresh_ctx()
    rcpts = ["demo-request@lists.example.org", "demo-join@lists.example.org", "demo-leave@lists.example.org",
             "demo-confirm+" + "a" * 26 + "@lists.example.org", "demo-owner@lists.example.org"]
    t = transact(ctx, "alice@example.net", rcpts, POST)
    assert t.eom_rc == Milter.DISCARD
    got = {(q.meta["role"], q.meta["extension"]) for q in queued(milter_site)}
    assert got == {("request", None), ("join", None), ("leave", None), ("confirm", "a" * 26), ("owner", None)}


def test_unknown_list_address_is_refused_at_rcpt(milter_site):
    ctx = fresh_ctx()
    t = transact(ctx, "alice@example.net", ["nosuch@lists.example.org", "demo-nosuffix@lists.example.org"], POST)
    assert set(t.rcpt_rc.values()) == {Milter.REJECT}
    assert ctx._reply[:2] == ("550", "5.1.1")
    assert t.data_rc is None


def test_forged_verp_is_refused_at_rcpt(milter_site):
    ctx = fresh_ctx()
    forged = "demo-bounces+bob=example.com." + milter_site.conf.verp.keys[0].id + ".aaaaaaaa@lists.example.org"
    t = transact(ctx, "", [forged], POST)
    assert t.rcpt_rc[forged] == Milter.REJECT
    assert ctx._reply[:2] == ("550", "5.1.1") and "not a valid bounce address" in ctx._reply[2]


def test_closed_list_non_member_reject(milter_site, tmp_path):
    path = Path(milter_site.list_files[LIST])
    path.write_text(path.read_text().replace("non_member_action: hold", "non_member_action: reject"))
    ctx = fresh_ctx()
    t = transact(ctx, "stranger@example.net", [LIST], POST)
    assert t.rcpt_rc[LIST] == Milter.REJECT
    assert ctx._reply[:2] == ("550", "5.7.1")
    # a member may post
    open_store(ListgateMilter.sites.current(), LIST).add_member("member@example.net")
    t = transact(fresh_ctx(), "member@example.net", [LIST], POST)
    assert t.eom_rc == Milter.DISCARD


def test_store_unreadable_at_rcpt_tempfails(milter_site):
    # the members check needs the store; a directory where the database should be cannot be opened
    db = Path(milter_site.state_dir) / "lists" / f"{LIST}.db"
    for p in db.parent.glob(f"{LIST}.db*"):
        p.unlink()
    db.mkdir(parents=True)
    ctx = fresh_ctx()
    t = transact(ctx, "stranger@example.net", [LIST], POST)
    assert t.rcpt_rc[LIST] == Milter.TEMPFAIL
    assert ctx._reply[0] == "451" and ctx._reply[1] == "4.3.0"


def test_trusted_reinjection_passes(milter_site):
    from listgate import verp
    lc = milter_site.lists[LIST]
    sender = verp.member_bounce_address(milter_site, lc, "bob@example.com")
    ctx = fresh_ctx()
    t = transact(ctx, sender, [LIST, "bob@example.com"], POST, ip="127.0.0.1")
    assert t.data_rc == Milter.ACCEPT
    assert queued(milter_site) == []
    # the same sender from an untrusted client is an ordinary post
    t = transact(fresh_ctx(), sender, [LIST], POST, ip="192.0.2.77")
    assert t.eom_rc == Milter.DISCARD and len(queued(milter_site)) == 1


def test_retried_transaction_is_stored_again_for_the_runner_to_drop(milter_site):
    """No duplicate look at SMTP time (tests/test_duplicates.py: the runner posts it once)."""
    for _ in range(3):
        t = transact(fresh_ctx(), "alice@example.net", [LIST], POST)
        assert t.eom_rc == Milter.DISCARD
    assert len(queued(milter_site)) == 3


def test_reused_connection_does_not_leak_state(milter_site):
    ctx = fresh_ctx()
    t1 = transact(ctx, "alice@example.net", [LIST, "bob@example.com"], POST)
    assert t1.eom_rc == Milter.ACCEPT and len(ctx._delrcpt) == 1
    # second transaction on the same connection: no list recipient this time
    t2 = transact(ctx, "alice@example.net", ["bob@example.com"], POST, connect=False)
    assert t2.data_rc == Milter.ACCEPT
    # an aborted transaction (RSET) leaves nothing behind either
    ctx._envfrom("<alice@example.net>")
    ctx._envrcpt(f"<{LIST}>")
    ctx._priv.abort()
    assert ctx._priv.routed == [] and ctx._priv.chunks == []
    t3 = transact(ctx, "alice@example.net", ["carol@example.com"], POST, connect=False)
    assert t3.data_rc == Milter.ACCEPT
    assert len(queued(milter_site)) == 1


def test_config_reload_without_restart(milter_site):
    ctx = fresh_ctx()
    t = transact(ctx, "alice@example.net", ["news@lists.example.org"], POST)
    assert t.rcpt_rc["news@lists.example.org"] == Milter.REJECT
    lists_dir = Path(milter_site.lists_dir)
    text = (lists_dir / "demo.yaml").read_text().replace("name: demo", "name: news")
    (lists_dir / "news.yaml").write_text(text.replace("posting_policy: members_only", "posting_policy: open"))
    t = transact(ctx, "alice@example.net", ["news@lists.example.org"], POST, connect=False)
    assert t.eom_rc == Milter.DISCARD
    assert [q.meta["list"] for q in queued(milter_site)] == ["news@lists.example.org"]


def test_queue_read_only_tempfails_and_commits_nothing(milter_site):
    qdir = Path(milter_site.queue_dir)
    with tmpfs(qdir):
        (qdir / "in").mkdir()
        remount(qdir, "ro")
        t = transact(fresh_ctx(), "alice@example.net", [LIST, "bob@example.com"], POST)
        assert t.eom_rc == Milter.TEMPFAIL
        assert t.ctx._reply[:2] == ("451", "4.3.0")
        assert t.ctx._delrcpt == []
        remount(qdir, "rw")
        # the client retries: the message is stored now
        t = transact(fresh_ctx(), "alice@example.net", [LIST, "bob@example.com"], POST)
        assert t.eom_rc == Milter.ACCEPT
        [qf] = queued(milter_site)
        assert untraced(qf.msg) == POST


def test_store_read_only_tempfails_and_loses_nothing(milter_site, corpus):
    """A bounce is registered at end of message, in the store: a store that cannot
    be written gives 451 and commits nothing; the retry is registered."""
    dsn = (corpus / "flufl.bounce" / "dsn_01.txt").read_bytes()
    bounces = "demo-bounces@lists.example.org"
    lists = Path(milter_site.state_dir) / "lists"
    with tmpfs(lists):
        remount(lists, "ro")
        t = transact(fresh_ctx(), "", [bounces], dsn)
        assert t.rcpt_rc[bounces] == Milter.CONTINUE
        assert t.eom_rc == Milter.TEMPFAIL and t.ctx._reply[:2] == ("451", "4.3.0")
        assert queued(milter_site) == [] and list(lists.iterdir()) == []
        remount(lists, "rw")
        open_store(milter_site, LIST).close()   # drop the connection opened on the read-only mount
        t = transact(fresh_ctx(), "", [bounces], dsn)
        assert t.eom_rc == Milter.DISCARD
        assert open_store(milter_site, LIST).events(limit=10)
        open_store(milter_site, LIST).close()


def test_unexpected_error_at_end_of_message_tempfails(milter_site, monkeypatch):
    # fault injection: a bug anywhere below end of message must not accept (or lose) the mail
    def broken(*a, **kw):
        raise RuntimeError("bug")
    monkeypatch.setattr("listgate.milter.app.store_message", broken)
    t = transact(fresh_ctx(), "alice@example.net", [LIST], POST)
    assert t.eom_rc == Milter.TEMPFAIL and t.ctx._reply[:2] == ("451", "4.3.0")


def test_list_removed_during_transaction_tempfails(milter_site):
    ctx = fresh_ctx()
    ctx._connect(ip="192.0.2.10")
    ctx._envfrom("<alice@example.net>")
    assert ctx._envrcpt(f"<{LIST}>") == Milter.CONTINUE
    ctx._priv.site = dataclasses.replace(ctx._priv.site, lists={})
    assert ctx._data() == Milter.CONTINUE
    assert ctx._eom() == Milter.TEMPFAIL


def test_message_without_body(milter_site):
    msg = b"From: alice@example.net\r\nMessage-ID: <nobody@example.net>\r\n\r\n"
    t = transact(fresh_ctx(), "alice@example.net", ["demo-owner@lists.example.org"], msg)
    assert t.eom_rc == Milter.DISCARD
    assert untraced(queued(milter_site)[0].msg) == msg


def test_null_sender_and_8bit_recipient_junk(milter_site):
    t = transact(fresh_ctx(), "", ["demo-owner@lists.example.org", "b\udce9b@example.com"], POST)
    assert t.eom_rc == Milter.ACCEPT
    [qf] = queued(milter_site)
    assert qf.meta["envelope_sender"] == ""


def test_mta_without_leading_space_option(milter_site):
    # an MTA that strips the space after the colon (no P_HDR_LEADSPC): the milter puts it back
    from milter_helpers import NR_BITS
    ctx = fresh_ctx(FULL_OFFER & ~NR_BITS & ~Milter.P_HDR_LEADSPC)
    ctx._connect(ip="192.0.2.10")
    ctx._envfrom("<alice@example.net>")
    ctx._envrcpt("<demo-owner@lists.example.org>")
    ctx._data()
    ctx._priv.header_bytes("Subject", b"no leading space")
    ctx._priv.header_bytes("Message-ID", b"<nls@example.net>")
    ctx._priv.body(b"text\r\n")
    assert ctx._eom() == Milter.DISCARD
    assert untraced(queued(milter_site)[0].msg) == (b"Subject: no leading space\r\nMessage-ID: <nls@example.net>\r\n"
                                          b"\r\ntext\r\n")


def test_the_stored_message_starts_with_this_hops_received_field(milter_site):
    """Postfix never shows a milter its own Received: field: the milter writes it (RFC 5321 section 4.4)."""
    clock.freeze(1_796_000_000)
    ctx = fresh_ctx()
    ctx._setsymval("j", "mx.lists.example.org")
    t = transact(ctx, "alice@example.net", [LIST], POST, qid="4XyZ1abcD")
    assert t.eom_rc == Milter.DISCARD
    [qf] = queued(milter_site)
    field = qf.msg[:len(qf.msg) - len(POST)]
    assert field == (b"Received: from client.example (client.example [192.0.2.10])\r\n"
                     b"\tby mx.lists.example.org (Postfix, listgate milter) with ESMTP id 4XyZ1abcD\r\n"
                     b"\tfor <demo@lists.example.org>; " + email.utils.format_datetime(clock.now_dt()).encode()
                     + b"\r\n")
    parsed = email.message_from_bytes(qf.msg, policy=email.policy.default)
    assert parsed["Received"].startswith("from client.example") and parsed["Subject"]


def test_received_field_shapes():
    from listgate.milter.app import received_field
    v6 = received_field(helo="evil)\r\nBcc: x@y; (", client_name="unknown", client_address="2001:db8::1",
                        by="mx.test", queue_id="ABC", tls=True, auth=True, recipients=["a@l.test", "b@l.test"])
    assert v6.startswith(b"Received: from evilBcc:xy (unknown [IPv6:2001:db8::1])\r\n\tby mx.test "
                         b"(Postfix, listgate milter) with ESMTPSA id ABC; ")
    assert v6.count(b"\r\n") == 2 and b"for <" not in v6           # two recipients: no "for"
    internal = received_field(helo=None, client_name="localhost", client_address=None, by="mx.test",
                              queue_id=None, tls=False, auth=False, recipients=["a@l.test"])
    assert internal.startswith(b"Received: by mx.test (Postfix, listgate milter)\r\n\tfor <a@l.test>; ")
