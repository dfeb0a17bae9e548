"""The list application's one-place rules: the posting rule at RCPT and after DATA, header
decoding, owner notices, and routing's VERP decision carried to the bounce life cycle."""
from __future__ import annotations

import pytest

from listgate import header_text, routing
from listgate.app import bounces, notices, posting
from listgate.app.mail import author, header_text as mail_header_text, headers
from listgate.bounce import message as bmsg
from listgate.store import open_store

from engine_helpers import DOMAIN, dsn, make_env
from policy_helpers import write_list

JANE = "jane@example.com"


def _list(site, **keys):
    site = write_list(site, "demo", DOMAIN, owners=["Owner@Example.NET"], moderators=["mod@example.net"], **keys)
    open_store(site, f"demo@{DOMAIN}").add_member("Member@Example.com")
    return site, site.get_list("demo")


@pytest.mark.parametrize("policy, sender, rcpt_action, runner_action", [
    ("announce", "<owner@EXAMPLE.net>", "accept", "accept"),      # staff: brackets and case do not matter
    ("announce", "OWNER@example.net", "accept", "accept"),
    ("announce", "Member@example.com", "reject", "reject"),      # members may not post to announce lists
    ("members_only", "Member@EXAMPLE.COM", "accept", "accept"),  # the domain's case does not matter
    ("members_only", "stranger@example.org", "reject", "reject"),
    ("members_only", "", "reject", "reject"),                    # the null sender is nobody
    ("moderated", "Member@example.com", "accept", "hold"),       # RCPT takes it, the runner holds it
    ("moderated", "mod@example.net", "accept", "accept"),
    ("open", "stranger@example.org", "accept", "accept"),
])
def test_one_posting_rule_at_rcpt_and_after_data(site, policy, sender, rcpt_action, runner_action):
    site, lc = _list(site, posting_policy=policy, non_member_action="reject")
    decision = routing.decide_rcpt(site, f"demo@{DOMAIN}", sender=sender)
    assert decision.action == rcpt_action
    store = open_store(site, f"demo@{DOMAIN}")
    verdict = posting.decide(lc, (None, sender), lambda: store, size=100)
    assert verdict.action == runner_action


def test_posting_rule_uses_from_after_data_and_size(site):
    site, lc = _list(site, posting_policy="members_only", non_member_action="hold", max_message_size=1000)
    store = open_store(site, f"demo@{DOMAIN}")
    # a null sender is nobody: non_member_action hold, so RCPT takes it and the runner decides ...
    assert routing.decide_rcpt(site, f"demo@{DOMAIN}", sender="").action == "accept"
    assert posting.decide(lc, ("",), lambda: store).action == "hold"
    # ... where a member's From lets the post through, however its case (the list's default rule)
    assert posting.decide(lc, ("Member@example.com", ""), lambda: store).action == "accept"
    assert posting.decide(lc, ("MEMBER@example.com", ""), lambda: store).action == "accept"
    assert posting.decide(lc, ("stranger@example.com", ""), lambda: store).action == "hold"
    big = posting.decide(lc, ("owner@example.net",), lambda: store, size=1001)
    assert big.action == "hold" and "1001 bytes" in big.reason


def test_open_list_and_staff_never_open_the_store(site):
    site, lc = _list(site, posting_policy="announce")

    def no_store():
        raise AssertionError("the store was asked")
    assert posting.decide(lc, ("owner@example.net",), no_store).action == "accept"
    assert posting.decide(lc, ("stranger@example.org",), no_store).action == lc.non_member_action


@pytest.mark.parametrize("raw, text", [
    ("=?utf-8?q?caf=C3=A9?= =?utf-8?q?_au_lait?=", "café au lait"),   # RFC 2047 section 6.2: space between words goes
    ("=?iso-8859-1?q?Gr=FC=DFe?=", "Grüße"),
    ("plain\n text", "plain text"),
    ("caf\udce9", "caf\ufffd"),                                        # 8-bit junk: U+FFFD, no exception
    ("=?no-such-charset?q?abc?=", "abc"),
])
def test_one_header_decoder(raw, text):
    assert header_text.decode(raw) == text


def test_readers_share_the_header_decoder():
    raw = b"From: =?utf-8?q?J=C3=BCrgen?= <j@example.com>\nSubject: =?utf-8?b?w6lsw6h2ZQ==?=\n\nbody\n"
    assert mail_header_text(headers(raw), "Subject") == "élève"
    assert bmsg.decoded_header(bmsg.parse(raw), "Subject") == "élève"
    assert author(headers(raw)) == ("Jürgen", "j@example.com")


def test_owner_notices_one_builder(site):
    site, lc = _list(site, posting_policy="open", description="Demo list")
    msg = notices.owner_notice(lc, "s", "b", moderators=True, reply_to="x@example.org")
    assert msg["To"] == "mod@example.net" and msg["Reply-To"] == "x@example.org"
    assert msg["List-Id"] == notices.list_id(lc) == f'"Demo list" <demo.{DOMAIN}>'
    assert notices.owner_deliveries(lc) == [{"rcpt": "Owner@Example.NET", "sender": ""}]
    assert notices.unrecognized(lc, b"Subject: x\n\ny\n", recipient="r@x.org", envelope_sender="",
                                reason="r")["List-Id"] == msg["List-Id"]


def test_engine_takes_routings_verp_decision(site):
    env = make_env(site, bounce_score_threshold=5.0)
    rcpt = env.verp_rcpt(JANE)
    with pytest.raises(ValueError):
        env.engine.handle_bounce(env.lc, dsn(JANE), rcpt, envelope_sender="")
    text = f"demo-bounces+{rcpt.extension}@{DOMAIN}"
    decision = routing.decide_rcpt(env.site, text, sender="")
    assert decision.action == "accept" and decision.verp.member == JANE
    outcome = env.engine.handle_bounce(env.lc, dsn(JANE), rcpt, verp_result=decision.verp, envelope_sender="")
    assert [(a.address, a.action, a.attribution) for a in outcome.actions] == [(JANE, "scored", "verp")]


def test_probe_live_at_rcpt_is_spent_once_at_end_of_message(site):
    """Two bounces of one probe routed while its token was live: only the first disables."""
    env = make_env(site, bounce_score_threshold=1.0)
    env.verp_bounce(JANE)
    [record] = env.pending_probes(JANE)
    text = f"demo-bounces+{record.token}@{DOMAIN}"
    first = routing.decide_rcpt(env.site, text, sender="")
    second = routing.decide_rcpt(env.site, text, sender="")
    assert first.verp.kind == second.verp.kind == "probe"
    rcpt = env.probe_rcpt(record.token)
    out1 = env.engine.handle_bounce(env.lc, dsn(JANE), rcpt, verp_result=first.verp, envelope_sender="")
    out2 = env.engine.handle_bounce(env.lc, dsn(JANE), rcpt, verp_result=second.verp, envelope_sender="")
    assert [a.action for a in out1.actions] == ["disabled"]
    assert [a.action for a in out2.actions] == ["probe_unknown"]
    assert len(env.virgin("disabled_notice")) == 1


def test_bounces_module_is_the_engine():
    assert bounces.BounceEngine.handle_bounce.__module__ == "listgate.app.bounces"
