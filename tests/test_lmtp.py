"""The LMTP front end (``listgate lmtp``, RFC 2033) over a real socket: real routing,
real stores and qfiles, the real bounce engine. The decisions it shares with the
milter and ``listgate inject`` are in test_lmtp_decisions.py."""
from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from listgate import verp
from listgate.queue import Switchboard
from listgate.store import open_store

from conftest import make_site
from lmtp_helpers import RunningLmtp
from milter_helpers import REPO, fill, tmpfs

LIST = "demo@lists.example.org"
MSG = (b"From: Alice <alice@example.net>\r\nSubject: caf\xc3\xa9\r\nMessage-ID: <l1@example.net>\r\n\r\n"
       b"8-bit body \xe9\r\n.leading dot\r\n")


@pytest.fixture
def site(tmp_path):
    return make_site(tmp_path / "inst", owner="owner@lists.example.org")


def queued(site):
    sb = Switchboard.for_site(site, "in")
    return [sb.peek(q) for q in sb.ids()]


def test_lhlo_announces_size_8bitmime_smtputf8_and_refuses_helo(site):
    with RunningLmtp(site) as srv, srv.client() as c:
        assert c.does_esmtp
        for ext in ("size", "8bitmime", "smtputf8", "pipelining"):
            assert c.has_extn(ext), ext
        assert int(c.esmtp_features["size"]) == site.conf.lmtp.max_message_size
        assert c.docmd("HELO", "x")[0] == 500


def test_one_reply_per_recipient_in_rcpt_order_and_byte_exact(site):
    rcpts = [LIST, "nosuch@lists.example.org", "demo-owner@lists.example.org", "DEMO@lists.example.org",
             "someone@elsewhere.test"]
    with RunningLmtp(site) as srv:
        out = srv.transact("alice@example.net", rcpts, MSG, ["BODY=8BITMIME", "SMTPUTF8"])
    assert out == {
        LIST: (250, "2.0.0 stored"), "demo-owner@lists.example.org": (250, "2.0.0 stored"),
        "DEMO@lists.example.org": (250, "2.0.0 stored"),
        "nosuch@lists.example.org": (550, "5.1.1 no such list address"),
        "someone@elsewhere.test": (550, "5.1.1 not a list address listgate manages")}
    post, owner = queued(site)
    assert (post.meta["role"], post.meta["recipients"]) == ("post", [LIST, "DEMO@lists.example.org"])
    assert (owner.meta["role"], owner.meta["recipients"]) == ("owner", ["demo-owner@lists.example.org"])
    assert post.msg == MSG and post.meta["envelope_sender"] == "alice@example.net"


def test_bounce_with_null_sender_is_scored_inline(site, corpus):
    open_store(site, LIST).add_member("userx@example.com")
    bounce = (corpus / "flufl.bounce/dsn_13.txt").read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    with RunningLmtp(site) as srv:
        rcpt = verp.member_bounce_address(site, site.get_list("demo", "lists.example.org"), "userx@example.com")
        out = srv.transact("", [rcpt], bounce)
    assert out == {rcpt: (250, "2.0.0 stored")}
    assert open_store(site, LIST).get_member("userx@example.com").bounce_score == 1.0
    assert queued(site) == []


def test_size_limit_at_mail_and_per_recipient_after_data(site):
    with open(site.path, "a", encoding="utf-8") as fh:
        fh.write("lmtp:\n  max_message_size: 2KB\n")
    from listgate import config
    site = config.load(site.path)
    big = MSG + b"x" * 3000 + b"\r\n"
    with RunningLmtp(site) as srv:
        assert srv.transact("a@example.net", [LIST], big, ["SIZE=5000"])["MAIL"][0] == 552
        # no SIZE announced: the limit bites while reading, and each recipient hears it (RFC 2033 section 4.2)
        out = srv.transact("a@example.net", [LIST, "demo-owner@lists.example.org"], big)
        assert out == {r: (552, "5.3.4 message too big for listgate") for r in (LIST, "demo-owner@lists.example.org")}
        # the connection is still in step: the next transaction works
        assert srv.transact("a@example.net", [LIST], MSG) == {LIST: (250, "2.0.0 stored")}
    assert len(queued(site)) == 1


def test_unusable_input_is_refused_per_recipient(site):
    with RunningLmtp(site) as srv:
        out = srv.transact("a@example.net", [LIST, "demo-request@lists.example.org"], b"no header here\r\n")
    assert {code for code, _ in out.values()} == {554} and len(out) == 2
    assert queued(site) == []


def test_full_queue_disk_answers_452_then_the_retry_is_stored(site):
    qdir = site.queue_dir
    with tmpfs(__import__("pathlib").Path(qdir) / "in", size="1m") as mnt:
        with RunningLmtp(site) as srv:
            fill(mnt)
            out = srv.transact("a@example.net", [LIST], MSG)
            assert out[LIST][0] == 452 and out[LIST][1].startswith("4.3.1")
            os.unlink(mnt / "filler")
            assert srv.transact("a@example.net", [LIST], MSG) == {LIST: (250, "2.0.0 stored")}
        assert [q.msg for q in queued(site)] == [MSG]


def test_unix_socket_gets_its_mode_and_is_removed(site):
    path = os.path.join(site.state_dir, "lmtp.sock")
    with RunningLmtp(site, f"unix:{path}") as srv:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        assert srv.transact("a@example.net", [LIST], MSG) == {LIST: (250, "2.0.0 stored")}
    assert not os.path.exists(path)


def test_cli_without_lmtp_socket_exits_1(site):
    out = subprocess.run([sys.executable, "-m", "listgate", "-c", site.path, "lmtp"], capture_output=True,
                         text=True, timeout=60, cwd=str(REPO), env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 1 and "lmtp.socket is not set" in out.stderr


def test_each_part_answered_on_its_own_full_in_queue_spares_the_bounce(site, corpus):
    """RFC 2033 section 4.2: one transaction, two parts (a post, a bounce); the full
    ``in`` disk costs only the post's recipient a retry, the bounce is scored."""
    open_store(site, LIST).add_member("userx@example.com")
    dsn = (corpus / "flufl.bounce/dsn_13.txt").read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    bounces = verp.member_bounce_address(site, site.get_list("demo", "lists.example.org"), "userx@example.com")
    with tmpfs(__import__("pathlib").Path(site.queue_dir) / "in", size="1m") as mnt:
        with RunningLmtp(site) as srv:
            fill(mnt)
            out = srv.transact("mailer-daemon@example.com", [LIST, bounces], dsn)
    assert out[LIST][0] == 452 and out[bounces] == (250, "2.0.0 stored")
    assert open_store(site, LIST).get_member("userx@example.com").bounce_score == 1.0
