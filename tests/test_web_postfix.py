"""One-click unsubscribe through the real stack: a post through Postfix carries, for each member,
List-Unsubscribe with that member's own token and List-Unsubscribe-Post (RFC 8058 section 3.1);
the link from a received post, POSTed to the ``listgate web`` that ``listgate serve`` runs,
removes the member."""
from __future__ import annotations

import email
import email.policy
import socket
import time
from urllib.parse import urlsplit

import pytest

from listgate.web import tokens

from harness import available
from harness.postfix import free_port
from harness.stack import Stack
from web_helpers import one_click

pytestmark = pytest.mark.skipif(not available(), reason="needs Postfix and root")

MEMBERS = ("alice@members.test", "bob@members.test", "carol@elsewhere.test")
OWNER = "owner@owners.test"


def test_post_carries_per_member_one_click_headers_and_the_link_works():
    port = free_port()
    web = f"web:\n  base_url: http://127.0.0.1:{port}/lg\n  listen: inet:{port}@127.0.0.1\n"
    with Stack(owner=OWNER, site_settings=web) as st:
        for member in MEMBERS:
            st.listgate("members", "add", "demo", member)
        mid = f"<web-{time.monotonic_ns()}@members.test>"
        msg = (f"From: Alice <{MEMBERS[0]}>\r\nTo: demo@lists.example.org\r\nSubject: one click\r\n"
               f"Message-ID: {mid}\r\n\r\nHello.\r\n").encode()
        assert st.send(MEMBERS[0], ["demo@lists.example.org"], msg) == {}
        got = {}
        for member in MEMBERS:
            st.wait_until(lambda: [d for d in st.sink.messages_for(member) if mid.encode() in d.data], 60,
                          what=f"post for {member}")
            [got[member]] = [d for d in st.sink.messages_for(member) if mid.encode() in d.data]
        urls = {}
        for member, delivery in got.items():
            m = email.message_from_bytes(delivery.data, policy=email.policy.compat32)
            assert m.get_all("List-Unsubscribe-Post") == ["List-Unsubscribe=One-Click"]
            (value,) = m.get_all("List-Unsubscribe")
            url, mailto = [v.strip() for v in " ".join(value.split()).split(",")]
            assert mailto == "<mailto:demo-leave@lists.example.org?subject=unsubscribe>"
            url = url.strip("<>")
            assert url.startswith(f"http://127.0.0.1:{port}/lg/u/")
            unsub = tokens.verify(st.site, url.rsplit("/", 1)[1])
            assert (unsub.lc.name, unsub.member) == ("demo", member)       # each member's own token
            urls[member] = url
        assert len(set(urls.values())) == len(MEMBERS)

        # the proxy strips /lg; the runner's web child serves /u/TOKEN
        st.wait_until(lambda: _listening(port), 30, what="listgate web under serve")
        path = urlsplit(urls["bob@members.test"]).path.removeprefix("/lg")
        status, _, page = one_click(port, path)
        assert status == 200, page
        assert st.member("bob@members.test") is None
        st.wait_until(lambda: [d for d in st.sink.messages_for(OWNER) if b"bob@members.test left" in d.data], 60,
                      what="owner notice of the leave")
        assert one_click(port, path)[0] == 200                          # replay: still 200
        assert {m.address for m in st.store().members()} == {"alice@members.test", "carol@elsewhere.test"}


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
