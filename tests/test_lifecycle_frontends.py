"""The bounce life cycle of test_e2e.py on the other front ends: the same test
bodies (imported, not copied), run on Postfix with policy + LMTP and on a real
Exim with policy + LMTP; test_e2e.py runs them on Postfix with the milter.

Post (join by mail, confirm, fan-out with signed VERP), bounce scoring at most
once a day, the probe, disable, reminders and removal, a spam refusal that
never counts, forged bounce addresses refused at RCPT. On Exim, the members' servers' refusals come back as Exim's
own bounces, through Exim's router to the LMTP server.

Then Exim's other transport, the pipe to ``listgate inject`` (INSTALL's
router_transport.conf): one post reaches the members, one bounce is scored.
"""
from __future__ import annotations

import pytest

from listgate import verp

from harness import SPAM_REFUSE, UNKNOWN, available
from harness.exim import SYSTEM_PYTHON, EximStack, unavailable, unprivileged_listgate
from harness.stack import Stack
# the life cycle's steps, run here with this module's ``st``
from test_e2e import (ALICE, BOB, DEAD, OWNER, PICKY, post, received, test_1_join_confirm_and_post,  # noqa: F401
                      test_2_dead_address_scored_probed_disabled_reminded_removed,
                      test_3_spam_refusal_is_policy_and_never_disables, test_4_forged_bounces_refused_at_rcpt)

NO_EXIM = unavailable()
pytestmark = pytest.mark.skipif(not available(), reason="needs Postfix and root")
BEHAVIOURS = {DEAD: UNKNOWN, PICKY: SPAM_REFUSE}


@pytest.fixture(scope="module", params=["postfix-lmtp", "exim-lmtp"])
def st(request):
    if request.param == "postfix-lmtp":
        stack = Stack(behaviours=BEHAVIOURS, owner=OWNER, front_end="lmtp")
    else:
        if NO_EXIM:
            pytest.skip(NO_EXIM)
        stack = EximStack(behaviours=BEHAVIOURS, owner=OWNER, transport="lmtp")
    with stack:
        yield stack


@pytest.fixture(scope="module")
def exim_pipe():
    if NO_EXIM:
        pytest.skip(NO_EXIM)
    if unprivileged_listgate() is None:
        pytest.skip(f"the pipe runs listgate as Exim's user, with {SYSTEM_PYTHON}: not this Python's version")
    with EximStack(owner=OWNER, transport="pipe") as stack:
        yield stack


def test_exim_pipe_to_inject_post_and_bounce(exim_pipe, corpus):
    st = exim_pipe
    userx = "userx@example.com"  # the member the corpus DSN names
    for member in (ALICE, BOB, userx):
        st.listgate("members", "add", "demo", member)
    mid = post(st, "via the pipe")
    st.wait_until(lambda: received(st, BOB, mid), 60, what="the post to reach bob")
    dsn = (corpus / "flufl.bounce/dsn_13.txt").read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    # to userx's VERP address: a plain-address DSN naming a VERP member never scores (issue 20)
    assert st.send("", [verp.member_bounce_address(st.site, st.lc, userx)], dsn) == {}
    st.wait_until(lambda: st.member(userx).bounce_score == 1.0, 60, what="the bounce to be scored")
    log = st.exim.log_text()
    assert "T=listgate_pipe" in log and "T=listgate_lmtp" not in log
    assert st.member(BOB).bounce_score == 0.0
