"""``listgate members|pending|bounces``: output, --json, and clear failures on bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from listgate import clock
from listgate.store import BounceEvent, open_store

from conftest import SHARED

LIST = "demo@lists.example.org"
MAILMAN = SHARED / "corpus" / "mailman21"


def test_members_add_list_export_remove(cli, site):
    assert cli("members", "add", "demo", "Jane@Example.COM", "--name", "Jane Doe")[0] == 0
    status, out, _ = cli("members", "add", "demo@lists.example.org", "bob@example.com", "--json")
    assert status == 0 and json.loads(out)["key"] == "bob@example.com"
    status, out, err = cli("members", "list", "demo")
    assert status == 0 and "Jane@Example.COM (Jane Doe)" in out and "2 member(s)" in err
    status, out, _ = cli("members", "list", "demo", "--json")
    assert [m["address"] for m in json.loads(out)] == ["Jane@Example.COM", "bob@example.com"]  # by key
    assert cli("members", "export", "demo")[1].split() == ["Jane@Example.COM", "bob@example.com"]
    assert cli("members", "export", "demo", "--names")[1].splitlines()[0] == "Jane Doe <Jane@Example.COM>"
    status, _, err = cli("members", "add", "demo", "jane@example.com")     # one member, however spelt
    assert status == 1 and "already a member" in err, err
    status, out, _ = cli("members", "remove", "demo", "JANE@example.com")
    assert status == 0 and "removed Jane@Example.COM" in out
    assert [m.key for m in open_store(site, LIST).members()] == ["bob@example.com"]


@pytest.mark.parametrize("argv, message", [
    (("members", "add", "nosuch", "a@example.com"), "unknown list 'nosuch'"),
    (("members", "add", "demo", "not-an-address"), "malformed address"),
    (("members", "add", "demo", "a@example.com\n"), None),  # trailing newline is stripped: fine
    (("members", "remove", "demo", "ghost@example.com"), "is not a member"),
    (("members", "disable", "demo", "ghost@example.com"), "is not a member"),
    (("pending", "show", "demo", "aaaaaaaaaaaaaaaaaaaaaaaaaa"), "unknown or expired token"),
    (("pending", "confirm", "demo", "nonsense"), "unknown or expired token"),
    (("pending", "list", "nosuch"), "unknown list"),
    (("bounces", "show", "demo", "ghost@example.com"), "not a member"),
])
def test_bad_input_fails_clearly(cli, argv, message):
    status, out, err = cli(*argv)
    if message is None:
        assert status == 0
    else:
        assert status == 1 and message in err and err.startswith("listgate: ") and out == ""


def test_duplicate_member_fails(cli):
    assert cli("members", "add", "demo", "a@example.com")[0] == 0
    status, _, err = cli("members", "add", "demo", "a@EXAMPLE.com")
    assert status == 1 and "already a member" in err


def test_enable_disable(cli, site):
    clock.freeze(1_800_000_000.0)
    store = open_store(site, LIST)
    store.add_member("a@example.com")
    assert cli("members", "disable", "demo", "a@example.com", "--by", "user")[0] == 0
    assert store.get_member("a@example.com").delivery_status == "by_user"
    assert cli("members", "disable", "demo", "a@example.com")[0] == 0
    assert store.get_member("a@example.com").delivery_status == "by_admin"
    m = store.get_member("a@example.com")
    m.delivery_status, m.bounce_score, m.notices_left, m.last_bounce_day = "by_bounce", 5.0, 2, "2027-01-15"
    store.save_member(m)
    status, out, _ = cli("members", "enable", "demo", "a@example.com", "--json")
    m = store.get_member("a@example.com")
    assert status == 0 and json.loads(out)["delivery_status"] == "enabled"
    assert (m.delivery_status, m.bounce_score, m.notices_left, m.last_bounce_day) == ("enabled", 0.0, None, None)
    assert m.status_changed_at == 1_800_000_000.0


def test_import_address_file(cli, site, tmp_path):
    path = tmp_path / "members.txt"
    path.write_text("# exported from elsewhere\nAnn Example <ann@example.org>\n\"Doe, J.\" <j@example.org>\n"
                    "plain@example.org\nnot an address\nann@EXAMPLE.org\nZoë <zoe@example.org>\n", encoding="utf-8")
    status, out, err = cli("members", "import", "demo", str(path))
    assert status == 0 and "imported 4 member(s), skipped 2" in out
    assert "not an address" in err and "already a member" in err
    names = {m.address: m.display_name for m in open_store(site, LIST).members()}
    assert names == {"ann@example.org": "Ann Example", "j@example.org": "Doe, J.", "plain@example.org": "",
                     "zoe@example.org": "Zoë"}
    # export --names | import round-trips
    exported = cli("members", "export", "demo", "--names")[1]
    assert "\"Doe, J.\" <j@example.org>" in exported and "Zoë <zoe@example.org>" in exported


def test_import_bad_files(cli, tmp_path):
    status, _, err = cli("members", "import", "demo", str(tmp_path / "missing"))
    assert status == 1 and "cannot read" in err
    (tmp_path / "binary").write_bytes(b"\xff\xfe\x00junk")
    status, _, err = cli("members", "import", "demo", str(tmp_path / "binary"))
    assert status == 1 and "neither UTF-8 text nor a Mailman" in err
    (tmp_path / "evil.pck").write_bytes(b"(dp1\nS'members'\np2\n(dp3\nsS'x'\ncos\nsystem\n(S'true'\ntRp4\ns.")
    status, _, err = cli("members", "import", "demo", str(tmp_path / "evil.pck"))
    assert status == 1 and "refusing to load os.system" in err


def test_import_mailman_pickle(cli, site):
    if not (MAILMAN / "config-with-instances.pck").exists():
        pytest.skip("Mailman corpus ../shared/corpus/mailman21 not present")
    status, out, _ = cli("members", "import", "demo", str(MAILMAN / "config-with-instances.pck"), "--json")
    assert status == 0 and len(json.loads(out)["added"]) == 3
    status, out, _ = cli("bounces", "show", "demo", "--json")
    shown = json.loads(out)
    assert sorted(m["address"] for m in shown["members"]) == ["xxxxxx@examplexxxxxx.org", "xxxxxxxx@exampl.com"]
    assert all(m["bounce_score"] == 1.0 and m["last_bounce_day"] == "2015-03-24" for m in shown["members"])


def test_pending_commands(cli, site):
    status, out, _ = cli("pending", "list", "demo")
    assert status == 0 and out.strip() == f"no pending records for {LIST}"
    store = open_store(site, LIST)
    sub = store.add_pending("subscription", {"address": "new@example.com"}, 3600)
    probe = store.add_pending("probe", {"member": "a@example.com"}, 7200)
    status, out, _ = cli("pending", "list", "demo")
    assert status == 0 and sub.token in out.splitlines()[0] and probe.token in out.splitlines()[1]
    status, out, _ = cli("pending", "list", "demo", "--type", "probe", "--json")
    assert [r["token"] for r in json.loads(out)] == [probe.token]
    status, out, _ = cli("pending", "show", "demo", sub.token)
    assert status == 0 and "new@example.com" in out and store.peek_pending(sub.token) is not None
    status, out, _ = cli("pending", "confirm", "demo", sub.token, "--json")
    assert status == 0 and json.loads(out)["payload"] == {"address": "new@example.com"}
    assert store.get_member("new@example.com") is not None      # the subscription took effect
    assert cli("pending", "confirm", "demo", sub.token)[0] == 1
    status, _, err = cli("pending", "confirm", "demo", probe.token)
    assert status == 1 and "probe" in err and store.peek_pending(probe.token) is not None
    status, out, _ = cli("pending", "discard", "demo", probe.token)
    assert status == 0 and f"discarded {probe.token}" in out and store.pending() == []


def test_bounces_show(cli, site):
    store = open_store(site, LIST)
    m = store.add_member("a@example.com")
    m.bounce_score, m.last_bounce_day, m.last_bounce_at = 2.0, "2027-01-15", 1_800_000_000.0
    store.save_member(m)
    store.add_event(BounceEvent(at=1_800_000_000.0, address="a@example.com", bounce_class="hard", status="5.1.1",
                                attribution="verp", message_id="<x@y>", action="scored", detail="no such user"))
    store.add_event(BounceEvent(at=1_800_000_100.0, address="stranger@example.net", bounce_class="hard",
                                action="non_member"))
    status, out, _ = cli("bounces", "show", "demo", "a@example.com")
    assert status == 0 and "bounce score 2" in out and "2027-01-15" in out and "5.1.1" in out
    assert "stranger" not in out
    status, out, _ = cli("bounces", "show", "demo", "stranger@example.net")
    assert status == 0 and "not a member" in out and "non_member" in out
    status, out, _ = cli("bounces", "show", "demo", "--json")
    shown = json.loads(out)
    assert [m["address"] for m in shown["members"]] == ["a@example.com"] and len(shown["events"]) == 2


def test_entry_point_runs_as_a_process(site):
    env = {**os.environ, "LISTGATE_CONFIG": site.path}
    done = subprocess.run([sys.executable, "-m", "listgate", "members", "add", "demo", "p@example.com"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "added p@example.com" in done.stdout
    done = subprocess.run([sys.executable, "-m", "listgate", "members", "add", "demo", "p@"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "malformed address" in done.stderr
