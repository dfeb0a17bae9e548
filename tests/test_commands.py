"""Email commands and confirmations through the runner, replies seen in a real SMTP sink."""
from __future__ import annotations

import pytest
from runner_helpers import OWNER, Env, any_text, message, text_of

from listgate.app.commands import parse_commands


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    yield e
    e.close()


def test_parse_commands_subject_body_quotes_signature():
    cmds = parse_commands("Re: subscribe", "> unsubscribe\n\nchange address new@x.test\nhelp\n-- \nunsubscribe\n")
    assert cmds == [("subscribe", []), ("change-address", ["new@x.test"]), ("help", [])]
    assert parse_commands("", "help\nend\nsubscribe") == [("help", [])]
    assert len(parse_commands("", "\n".join(["help"] * 50))) == 10


def test_subscribe_by_request_confirm_by_reply(env):
    env.inject(message("Ann <new@one.test>", "subscribe"), role="request", sender="new@one.test")
    env.run()
    token = env.confirm_token("new@one.test")
    assert env.store.get_member("new@one.test") is None
    assert len(env.sink.messages_for("new@one.test")) == 1  # the confirmation is the only answer
    env.inject(message("new@one.test", f"Re: confirm {token}"), role="confirm", sender="new@one.test",
               extension=token)
    env.run()
    member = env.store.get_member("new@one.test")
    assert member is not None and member.display_name == "Ann"
    assert any_text(env.sink.messages_for("new@one.test"), "Welcome to")
    assert any_text(env.sink.messages_for(OWNER), "joined")  # notify_owner_on_join


def test_join_and_leave_addresses(env):
    env.inject(message("j@one.test", "anything"), role="join", sender="j@one.test")
    env.run()
    token = env.confirm_token("j@one.test")
    # confirm via "confirm TOKEN" in the Subject to the request address
    env.inject(message("j@one.test", f"confirm {token}"), role="request", sender="j@one.test")
    env.run()
    assert env.store.get_member("j@one.test") is not None
    env.sink.clear()
    env.inject(message("j@one.test", ""), role="leave", sender="j@one.test")
    env.run()
    token = env.confirm_token("j@one.test")
    env.inject(message("j@one.test", "Re: confirm"), role="confirm", sender="j@one.test", extension=token)
    env.run()
    assert env.store.get_member("j@one.test") is None
    assert any_text(env.sink.messages_for(OWNER), "left")


def test_forged_from_cannot_unsubscribe_someone_else(env):
    env.members("victim@one.test")
    env.inject(message("victim@one.test", "unsubscribe"), role="request", sender="attacker@evil.test")
    env.run()
    # the confirmation goes to the member, not to the forger; nothing changes without it
    assert env.confirm_token("victim@one.test")
    assert env.sink.messages_for("attacker@evil.test") == []
    assert env.store.get_member("victim@one.test") is not None


def test_change_of_address_confirmed_by_the_new_address(env):
    env.members("old@one.test")
    env.inject(message("old@one.test", "", b"change-address new@two.test\r\n"), role="request",
               sender="old@one.test")
    env.run()
    token = env.confirm_token("new@two.test")
    assert any_text(env.sink.messages_for("old@one.test"), "confirmation request was sent to new@two.test")
    env.inject(message("new@two.test", f"Re: confirm {token}"), role="confirm", sender="new@two.test",
               extension=token)
    env.run()
    assert env.store.get_member("old@one.test") is None
    assert env.store.get_member("new@two.test") is not None


def test_help_and_unknown_commands_get_a_helpful_reply(env):
    env.inject(message("who@one.test", "what is this", b"frobnicate\r\n"), role="request", sender="who@one.test")
    env.run()
    [reply] = env.sink.messages_for("who@one.test")
    assert "Unknown command: what is this" in text_of(reply)
    assert "subscribe" in text_of(reply) and reply.mail_from == "demo-bounces@lists.example.org"
    assert b"Auto-Submitted: auto-generated" in reply.data


def test_the_runner_logs_a_short_outcome_not_the_reply_text(env, caplog):
    env.inject(message("who@one.test", "help"), role="request", sender="who@one.test")
    env.inject(message("new@one.test", "subscribe"), role="request", sender="new@one.test")
    with caplog.at_level("INFO", logger="listgate.runner"):
        env.run()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("qfile_processed")]
    assert len(lines) == 2, lines
    assert "outcome=commands_replied:help" in lines[0] and "command address" not in lines[0]
    assert "outcome=confirmation_sent:subscribe" in lines[1]


@pytest.mark.parametrize("sender,extra", [
    ("", ""),
    ("MAILER-DAEMON@mx.one.test", ""),
    ("bot@one.test", "Auto-Submitted: auto-replied\r\n"),
    ("bot@one.test", "Precedence: bulk\r\n"),
])
def test_no_reply_to_null_or_auto_generated_senders(env, sender, extra):
    env.inject(message("bot@one.test", "help", extra=extra), role="request", sender=sender)
    env.run()
    assert env.sink.messages() == []


def test_autoresponder_cannot_confirm_a_subscription(env):
    env.inject(message("new@one.test", "subscribe"), role="request", sender="new@one.test")
    env.run()
    token = env.confirm_token("new@one.test")
    env.inject(message("new@one.test", f"Out of office: confirm {token}", extra="Auto-Submitted: auto-replied\r\n"),
               role="confirm", sender="new@one.test", extension=token)
    env.run()
    assert env.store.get_member("new@one.test") is None
    assert env.store.peek_pending(token) is not None


def test_unknown_or_reused_token(env):
    env.inject(message("new@one.test", "subscribe"), role="request", sender="new@one.test")
    env.run()
    token = env.confirm_token("new@one.test")
    for _ in range(2):
        env.inject(message("new@one.test", "Re: confirm"), role="confirm", sender="new@one.test", extension=token)
    env.run()
    assert env.store.get_member("new@one.test") is not None
    assert any_text(env.sink.messages_for("new@one.test"), "unknown or has expired")


def test_forged_requests_to_one_address_are_rate_limited_and_logged_once(env, caplog):
    # issue 20: forged -request mail (unsubscribe, made-up confirmation tokens) must not mail-bomb its victim
    env.members("victim@one.test")
    for i in range(4):
        env.inject(message("victim@one.test", "unsubscribe"), role="request", sender="attacker@evil.test")
        env.inject(message("victim@one.test", f"confirm {'a' * 25}{'bcdefg'[i]}"), role="request",
                   sender="attacker@evil.test")
    with caplog.at_level("WARNING", logger="listgate.app.ratelimit"):
        env.run()
    got = env.sink.messages_for("victim@one.test")
    assert len(got) == env.site.conf.commands.max_replies_per_address == 3
    assert env.store.get_member("victim@one.test") is not None
    # no pending record was made for the requests past the limit
    assert len(env.store.pending("unsubscription")) <= 3
    bursts = [r for r in caplog.records if "rate-limited" in r.getMessage()]
    assert len(bursts) == 1 and "victim@one.test" in bursts[0].getMessage()
    # another address is served as usual
    env.inject(message("other@one.test", "help"), role="request", sender="other@one.test")
    env.run()
    assert len(env.sink.messages_for("other@one.test")) == 1


def test_per_list_limit(env):
    import yaml
    with open(env.site.path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    data["commands"] = {"max_replies_per_list": 2}
    with open(env.site.path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(data, fh)
    from listgate import config
    env.site = config.load(env.site.path)
    for i in range(4):
        env.inject(message(f"u{i}@one.test", "help"), role="request", sender=f"u{i}@one.test")
    env.run()
    assert sum(len(env.sink.messages_for(f"u{i}@one.test")) for i in range(4)) == 2
