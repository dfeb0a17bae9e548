"""A real Exim (Debian's exim4, unpacked by scripts/install-deps) configured from
conf/exim/: the RCPT ACL asks the policy server with ${readsocket}, the list
router hands list mail to ``listgate lmtp`` over the LMTP transport. A post
reaches the members, a bounce is scored, a forged bounce address is refused at
RCPT. listgate runs as ``listgate serve`` in the test stack (its runner hands
outgoing mail to the stack's re-injection listener, which relays to the sink)."""
from __future__ import annotations

import os
import smtplib
import time

import pytest

from listgate import verp

from harness import available
from harness.exim import EximInstance, unavailable
from harness.stack import LIST_DOMAIN, Stack

REASON = unavailable() or (None if available() else "needs root and an installed Postfix (the test stack)")
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

ALICE, BOB, USERX = "alice@members.test", "bob@members.test", "userx@example.com"


@pytest.fixture(scope="module")
def ex():
    with Stack(owner="owner@owners.test", front_end="lmtp") as st:
        lmtp = st.site.resolve(st.site.conf.lmtp.socket.split(":", 1)[1])
        # Exim's deliveries run as Debian-exim: let it reach the socket (INSTALL: the socket's group)
        os.chmod(os.path.dirname(lmtp), 0o2755)
        os.chmod(lmtp, 0o666)
        host, port = st.site.conf.policy.socket.split(":", 1)[1].split("@")[::-1]
        with EximInstance(list_domain=LIST_DOMAIN, policy=(host, int(port)), lmtp_socket=lmtp,
                          sink_port=st.sink.port) as exim:
            exim.stack = st
            yield exim


def test_1_post_through_exim_reaches_members(ex):
    st = ex.stack
    for m in (ALICE, BOB):
        st.listgate("members", "add", "demo", m)
    mid = f"<exim-{time.monotonic_ns()}@members.test>"
    msg = (f"From: Alice <{ALICE}>\r\nTo: demo@lists.example.org\r\nSubject: via Exim\r\n"
           f"Message-ID: {mid}\r\n\r\nbody\r\n").encode()
    assert ex.send(ALICE, ["demo@lists.example.org"], msg) == {}
    st.wait_until(lambda: any(mid.encode() in d.data for d in st.sink.messages_for(BOB)), 60,
                  what="the post to reach bob\n" + ex.log_text()[-2000:])
    assert "listgate_lmtp" in ex.log_text()


def test_2_bounce_through_exim_is_scored(ex, corpus):
    st = ex.stack
    st.listgate("members", "add", "demo", USERX)
    dsn = (corpus / "flufl.bounce/dsn_13.txt").read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    rcpt = verp.member_bounce_address(st.site, st.lc, USERX)    # plain-address DSNs never score VERP members
    assert ex.send("", [rcpt], dsn) == {}
    st.wait_until(lambda: st.member(USERX).bounce_score == 1.0, 60, what="the bounce to be scored")


def test_3_forged_bounce_refused_at_rcpt_by_exim(ex):
    st = ex.stack
    good = verp.member_bounce_address(st.site, st.lc, BOB)
    local, domain = good.split("@")
    forged = local[:-4] + ("aaaa" if not local.endswith("aaaa") else "bbbb") + "@" + domain
    result = ex.send("", [forged], b"From: MAILER-DAEMON@example.net\r\nSubject: x\r\n\r\n550 5.1.1 gone\r\n")
    assert isinstance(result, smtplib.SMTPRecipientsRefused), result
    code, text = result.recipients[forged]
    assert code == 550 and b"not a valid bounce address" in text
