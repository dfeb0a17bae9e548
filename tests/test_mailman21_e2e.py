"""Issue 16 end to end: the fake Mailman 2.1 tree of ``test_mailman21_import`` (three lists, every
kind of record, a few corrupt files) is imported into a running stack (tests/harness/stack.py:
a private Postfix, ``listgate serve``, the SMTP sink as every member's mail server), then its
life cycle runs through Postfix: the imported queued posts are delivered once to each member,
Mailman's re-enable cookie confirms at ``L-confirm+COOKIE``, a bounce of Mailman's probe at
``L-bounces+COOKIE`` disables the member, and a digest member gets the digest.

The import writes ``lists.d/NAME.yaml`` for lists listgate does not have; ``listgate serve``
picks them up by itself (:class:`listgate.config.Watcher`). The stack's clock file is set to
the tree's time first, so Mailman's tokens are live and its bounce dates are in the past.
"""
from __future__ import annotations

import json
import time

import pytest

from listgate import clock, config
from listgate.queue import Switchboard

from engine_helpers import dsn
from harness import available
from harness.stack import LIST_DOMAIN, Stack
from test_mailman21_import import C_BOB, C_PROBE, NOW, build_tree

pytestmark = pytest.mark.skipif(not available(), reason="needs Postfix and root")

ALPHA = f"alpha@{LIST_DOMAIN}"
REGULAR = ["ann@example.com", "eve@example.com"]      # alpha's enabled regular members


def with_subject(st: Stack, rcpt: str, subject: str) -> list:
    return [d for d in st.sink.messages_for(rcpt) if subject in str(d.message()["Subject"])]


def test_an_imported_mailman_site_runs_its_life_cycle_through_postfix(tmp_path):
    tree = build_tree(tmp_path / "mailman")
    with Stack() as st:
        clock.write_offset_file(st.clock_file, NOW - time.time())
        out = st.listgate("import", "mailman21", tree, "--json", check=False)
        assert out.returncode == 1, out.stderr          # incomplete: the unplaceable records are reported
        summary = json.loads(out.stdout)
        assert (summary["queue_moved"], summary["queue_refused"]) == (4, 3)
        assert {n: summary["lists"][n]["yaml"] for n in ("alpha", "beta", "gamma")} == dict.fromkeys(
            ("alpha", "beta", "gamma"), "written")
        st.site = config.load(st.site.path, strict=False)      # this process sees the new lists too
        store = _store(st, ALPHA)
        assert store.get_member("Bob@Example.com").re_enable_token == C_BOB

        # the imported queue entries: Mailman's `in` post goes through alpha's pipeline, its
        # `out` and `virgin` entries are handed to Postfix as they were; each copy once
        st.wait_until(lambda: all(with_subject(st, m, "queued in") for m in REGULAR), 60,
                      what="the imported queued post")
        st.wait_until(lambda: all(with_subject(st, m, "queued out") for m in REGULAR)
                      and with_subject(st, "hal@example.net", "virgin note"), 60, what="the out and virgin entries")
        st.settle()
        for m in REGULAR:
            assert len(with_subject(st, m, "queued in")) == 1, m
            assert len(with_subject(st, m, "queued out")) == 1, m
        for m in ("Bob@Example.com", "frank@example.com", "carl@example.com", "dora@example.com"):
            assert not with_subject(st, m, "queued in"), m      # disabled, or a digest member
        assert _only_imported_shunt(st)          # nothing of ours was shunted

        # Mailman's re-enable cookie, replied to through Postfix
        assert store.get_member("Bob@Example.com").delivery_status == "by_bounce"
        reply = (f"From: Bob@Example.com\r\nTo: alpha-confirm+{C_BOB}@{LIST_DOMAIN}\r\n"
                 f"Subject: Re: confirm {C_BOB}\r\nMessage-ID: <reenable-bob@example.com>\r\n\r\nyes\r\n").encode()
        assert st.send("Bob@Example.com", [f"alpha-confirm+{C_BOB}@{LIST_DOMAIN}"], reply) == {}
        st.wait_until(lambda: _store(st, ALPHA).get_member("Bob@Example.com").delivery_status == "enabled", 60,
                      what="Bob re-enabled by Mailman's cookie")
        bob = _store(st, ALPHA).get_member("Bob@Example.com")
        assert (bob.bounce_score, bob.re_enable_token) == (0.0, None)

        # a bounce of Mailman's probe to carl, at Mailman's probe address
        assert store.get_member("carl@example.com").delivery_status == "enabled"
        probe_rcpt = f"alpha-bounces+{C_PROBE}@{LIST_DOMAIN}"
        bounce = dsn("carl@example.com", original_message_id="<probe.1@lists.example.org>").replace(
            b"demo-bounces@", b"alpha-bounces@")
        assert st.send("", [probe_rcpt], bounce) == {}
        st.wait_until(lambda: _store(st, ALPHA).get_member("carl@example.com").delivery_status == "by_bounce",
                      60, what="carl disabled by the probe's bounce")
        st.settle()

        # dora, a plain-digest member, gets the day's digest with the imported post in it
        assert not [d for d in st.sink.messages_for("dora@example.com") if "Digest" in str(d.message()["Subject"])]
        st.advance_days(1.01)
        st.wait_until(lambda: [d for d in st.sink.messages_for("dora@example.com")
                               if "Digest, Vol 1, Issue 1" in str(d.message()["Subject"])], 60,
                      what="dora's digest")
        st.settle()
        [digest] = [d for d in st.sink.messages_for("dora@example.com") if "Digest" in str(d.message()["Subject"])]
        assert digest.message().get_content_type() == "text/plain" and b"queued in" in digest.data
        assert not [d for d in st.sink.messages_for("carl@example.com") if "Digest" in str(d.message()["Subject"])]


def _store(st: Stack, key: str):
    from listgate.store import open_store
    return open_store(st.site, key)


def _only_imported_shunt(st: Stack) -> bool:
    """The one shunt entry is the one Mailman had shunted (moved as it was)."""
    board = Switchboard.for_site(st.site, "shunt")
    return len(board.ids()) == 1 and b"shunted" in board.peek(board.ids()[0]).msg
