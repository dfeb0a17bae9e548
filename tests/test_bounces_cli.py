"""Issue 15 item 4: owners can see and undo (``listgate bounces list|evidence|reset|strike``, owner notice
on each scored bounce)."""
from __future__ import annotations

import json

import pytest

from listgate.cli import main

from engine_helpers import dsn, make_env, parse

JANE, BOB = "jane@example.com", "bob@example.net"


def cli(env, capsys, *args):
    try:
        code = main(["-c", env.site.path, "bounces", *args])
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def env(site):
    env = make_env(site, members=(JANE, BOB), bounce_score_threshold=5.0)
    env.verp_bounce(JANE)
    env.verp_bounce(BOB, "4.2.2", "452 4.2.2 Mailbox full")
    return env


def test_list_shows_score_state_next_action_sorted_and_json(env, capsys):
    code, out, _ = cli(env, capsys, "list", "demo")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(JANE) and "score 1" in lines[0] and "enabled" in lines[0]
    assert "probe after 4 more" in lines[0] and lines[1].startswith(BOB) and "score 0.5" in lines[1]
    code, out, _ = cli(env, capsys, "list", "demo", "--sort", "address", "--json")
    rows = json.loads(out)
    assert [r["address"] for r in rows] == [BOB, JANE] and rows[1]["score"] == 1.0 and rows[1]["state"] == "enabled"


def test_evidence_raw_and_summary(env, capsys):
    code, out, _ = cli(env, capsys, "evidence", "demo", JANE)
    assert code == 0 and "bounce 1 of 1" in out and "Final-Recipient: rfc822; jane@example.com" in out
    code, out, _ = cli(env, capsys, "evidence", "demo", JANE, "--summary")
    assert code == 0 and "hard 5.1.1" in out and "why:" in out


def test_reset_one_all_and_enable(env, capsys):
    code, out, _ = cli(env, capsys, "reset", "demo", JANE)
    assert code == 0 and env.member(JANE).bounce_score == 0 and env.member(BOB).bounce_score == 0.5
    assert any(e.action == "bounce_reset" for e in env.store.events(JANE))
    m = env.member(BOB)
    m.delivery_status, m.notices_left = "by_bounce", 2
    env.store.save_member(m)
    cli(env, capsys, "reset", "demo", "--all")
    assert env.member(BOB).delivery_status == "by_bounce" and env.member(BOB).bounce_score == 0
    code, out, _ = cli(env, capsys, "reset", "demo", "--all", "--enable")
    assert code == 0 and env.member(BOB).delivery_status == "enabled" and env.member(BOB).notices_left is None


def test_strike_recomputes_the_score(env, capsys):
    from listgate import clock
    clock.advance(86400)
    env.verp_bounce(JANE)
    assert env.member(JANE).bounce_score == 2.0
    first = [e for e in env.store.events(JANE) if e.action == "scored"][-1]
    code, out, _ = cli(env, capsys, "strike", "demo", str(first.id))
    assert code == 0 and "bounce score now 1" in out
    assert env.member(JANE).bounce_score == 1.0 and env.store.event(first.id).action == "struck"
    # A struck event cannot be struck twice.
    code, _, err = cli(env, capsys, "strike", "demo", str(first.id))
    assert code == 1 and "no bounce event" in err


@pytest.mark.parametrize("args,words", [
    (("list", "nosuch"), "unknown list"),
    (("evidence", "demo", "nobody@example.org"), "not a member"),
    (("reset", "demo", "nobody@example.org"), "not a member"),
    (("reset", "demo"), "ADDRESS or --all"),
    (("strike", "demo", "999999"), "no bounce event"),
    (("strike", "demo", "x1"), "no bounce event"),
])
def test_bad_input_is_a_message_and_exit_1(env, capsys, args, words):
    code, _, err = cli(env, capsys, *args)
    assert code == 1 and words in err and "Traceback" not in err


def test_owner_notice_on_each_scored_bounce(site):
    env = make_env(site, members=(JANE,), bounce_notify_owner_on_bounce_increment=True)
    env.verp_bounce(JANE)
    [notice] = env.virgin("owner_notice")
    msg = parse(notice)
    assert "scored" in msg["Subject"] and JANE in msg["Subject"]
    assert any(p.get_content_type() == "message/rfc822" for p in msg.iter_attachments())
    env.verp_bounce(JANE)                # same day: not scored, no notice
    assert len(env.virgin("owner_notice")) == 1


def test_no_owner_notice_by_default(site):
    env = make_env(site, members=(JANE,))
    env.verp_bounce(JANE)
    assert env.virgin("owner_notice") == []
