"""One bad local member is the member's failure, not a site incident; trials rotate; removed
members are not handed a paused post; ``listgate status`` shows incidents; an admin can end one.

The runner hands mail to a real SMTP sink playing our re-injection listener
(tests/harness/sink.py); the clock is the frozen test clock.
"""
from __future__ import annotations

import json
import time

import pytest
from harness import ACCEPT
from runner_helpers import LIST, Env, message

from listgate import clock
from listgate.app import site_incidents

LOCAL_TABLE = "550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown in local recipient table"
BAD = "erin@localhost"
MEMBERS = ["a@one.test", "b@two.test", "c@three.test"]
HOUR = 3600


@pytest.fixture
def env(tmp_path):
    clock.freeze(1_800_000_000.0)
    e = Env(tmp_path, list_settings="bounce_score_threshold: 3.0\n")
    yield e
    e.close()


def posts(env, rcpt):
    return [str(d.message()["Subject"]) for d in env.sink.messages_for(rcpt) if "post " in str(d.message()["Subject"])]


def scored(env, address):
    return [e.bounce_class for e in env.store.events(address) if e.action == "scored"]


@pytest.mark.parametrize("bad", ["0erin@localhost", BAD], ids=["first in fan-out order", "last"])
def test_one_unknown_local_member_is_scored_and_the_others_get_the_post(env, bad):
    env.members(bad, *MEMBERS)
    env.sink.set_behaviour(bad, LOCAL_TABLE)
    env.inject(message(MEMBERS[0], "post 1"), sender=MEMBERS[0])
    env.run()
    assert site_incidents.open_incidents(env.store, env.lc) == {}
    assert all(posts(env, m) == ["[demo] post 1"] for m in MEMBERS)
    assert scored(env, bad) == ["hard"]
    assert env.store.get_member(bad).bounce_score == 1.0
    assert env.queue("retry").ids() == []
    assert not [d for d in env.sink.messages() if "site incident" in str(d.message()["Subject"])]


def test_a_post_whose_only_recipient_is_the_bad_one(env):
    """No other recipient to compare: the listener is asked whether it takes the postmaster."""
    env.members(BAD)
    env.sink.set_behaviour(BAD, LOCAL_TABLE)
    env.inject(message(BAD, "post 1"), sender=BAD)
    env.run()
    assert site_incidents.open_incidents(env.store, env.lc) == {}
    assert scored(env, BAD) == ["hard"] and env.queue("retry").ids() == []
    assert env.sink.messages_for("postmaster@localhost") == []        # asked, nothing sent


def test_a_listener_refusing_its_only_recipient_and_the_postmaster_is_a_site_incident(env):
    env.members(BAD)
    env.sink.default = LOCAL_TABLE
    env.inject(message(BAD, "post 1"), sender=BAD)
    env.run()
    assert set(site_incidents.open_incidents(env.store, env.lc)) == {site_incidents.ALL}
    assert scored(env, BAD) == [] and env.store.get_member(BAD).bounce_score == 0.0
    assert env.queue("retry").ids()


def test_a_listener_refusing_everyone_still_opens_an_incident_and_scores_nobody(env):
    env.members(*MEMBERS, BAD)
    env.sink.default = LOCAL_TABLE
    env.inject(message(MEMBERS[0], "post 1"), sender=MEMBERS[0])
    env.run()
    [incident] = site_incidents.open_incidents(env.store, env.lc).values()
    assert incident.scope == site_incidents.ALL and "local recipient table" in incident.reason
    assert [m.bounce_score for m in env.store.members()] == [0.0] * 4
    assert not [e for e in env.store.events() if e.action == "scored"]


def test_the_trial_after_a_pause_is_not_the_address_the_evidence_names(env):
    bad = "0erin@localhost"            # first in fan-out order
    env.members(bad, *MEMBERS)
    # an incident seen from bounces whose evidence names erin: one trial delivery after the pause
    site_incidents.open_incident(env.site, env.lc, env.store, site_incidents.ALL,
                                 f"our MTA refused: 550 5.1.1 <{bad}>: User unknown in local recipient table",
                                 [bad], None, from_bounces=True, send=lambda *notice: None)
    env.inject(message(MEMBERS[0], "post 1"), sender=MEMBERS[0])
    env.run()
    assert env.sink.messages() == [] or all("post " not in str(d.message()["Subject"]) for d in env.sink.messages())
    clock.advance(2 * HOUR)
    env.run()
    trial = [d.rcpt for d in env.sink.messages() if "post " in str(d.message()["Subject"])]
    assert len(trial) == 1 and trial[0] != bad
    assert site_incidents.trial_order(site_incidents.open_incidents(env.store, env.lc), [bad, MEMBERS[0]]) == [1, 0]


def test_a_member_removed_since_the_fan_out_is_not_handed_the_paused_post(env):
    env.members(*MEMBERS, BAD)
    env.sink.default = LOCAL_TABLE
    env.inject(message(MEMBERS[0], "post 1"), sender=MEMBERS[0])
    env.run()
    assert set(site_incidents.open_incidents(env.store, env.lc)) == {site_incidents.ALL}
    env.store.remove_member(MEMBERS[1])
    env.sink.default = ACCEPT
    clock.advance(2 * HOUR)
    env.run()
    assert env.queue("retry").ids() == []
    assert posts(env, MEMBERS[1]) == []
    assert all(posts(env, m) == ["[demo] post 1"] for m in (MEMBERS[0], MEMBERS[2], BAD))
    # notices go to the owners and the postmaster, who are not members
    assert [d for d in env.sink.messages_for("postmaster@localhost") if "site incident" in str(d.message()["Subject"])]


def _clock_file(env, tmp_path):
    path = tmp_path / "clock"
    path.write_text(str(clock.now() - time.time()))
    return str(path)


def test_status_shows_the_incident_and_an_admin_clears_it(env, tmp_path):
    env.members(*MEMBERS)
    env.sink.default = LOCAL_TABLE
    env.inject(message(MEMBERS[0], "post 1"), sender=MEMBERS[0])
    env.run()
    cf = _clock_file(env, tmp_path)
    data = json.loads(env.cli("status", "--json", LISTGATE_CLOCK_FILE=cf).stdout)
    [incident] = data["incidents"][LIST]
    assert incident["scope"] == "*" and incident["paused"] and "local recipient table" in incident["reason"]
    assert incident["paused_until"] > incident["since"]
    assert f"site incident on {LIST}: all recipients paused" in data["problems"]
    text = env.cli("status", LISTGATE_CLOCK_FILE=cf)
    assert text.returncode == 1 and f"incident {LIST} scope *: since" in text.stdout
    check = env.cli("status", "--check", LISTGATE_CLOCK_FILE=cf)
    assert check.returncode == 2 and "site incident on" in check.stdout and "incidents=1;" in check.stdout
    # the admin fixed the listener and ends the incident by hand; flush makes the paused post due
    env.sink.default = ACCEPT
    out = env.cli("bounces", "clear-incident", LIST, LISTGATE_CLOCK_FILE=cf)
    assert out.returncode == 0 and "cleared site incident of scope *" in out.stdout, out.stderr
    assert site_incidents.open_incidents(env.store, env.lc) == {}
    assert "incidents" in json.loads(env.cli("status", "--json", LISTGATE_CLOCK_FILE=cf).stdout)
    assert json.loads(env.cli("status", "--json", LISTGATE_CLOCK_FILE=cf).stdout)["incidents"] == {}
    assert env.cli("queue", "flush", LISTGATE_CLOCK_FILE=cf).returncode == 0
    clock.advance(60)                      # the CLI's clock ran on a little from the frozen one
    env.run()
    assert all(posts(env, m) == ["[demo] post 1"] for m in MEMBERS)
    again = env.cli("bounces", "clear-incident", LIST, "--scope", "*", LISTGATE_CLOCK_FILE=cf)
    assert again.returncode == 1 and "no open site incident" in again.stdout
