"""Day-to-day admin commands (issue 21): ``lists``, ``lists create|remove``, ``members add|remove|sync|find``
in bulk with notices, and ``held show``. Real instances (``listgate init``), real SQLite stores; the
notices are asserted on the qfiles written to ``virgin``. ``cli`` is conftest's.
"""
from __future__ import annotations

import email
import json
import os

import pytest

from listgate import config
from listgate.app import moderation
from listgate.app.mail import headers as parse_headers
from listgate.queue import Switchboard
from listgate.store import open_store

LIST = "demo@lists.example.org"
OWNER = "owner@lists.example.org"


def virgin(site) -> list[tuple[str, list[str], email.message.Message]]:
    """(kind, recipients, message) of each qfile in virgin, oldest first."""
    board = Switchboard.for_site(site, "virgin")
    out = []
    for qid in board.ids():
        qf = board.peek(qid)
        out.append((qf.meta["kind"], [d["rcpt"] for d in qf.meta["deliveries"]],
                    email.message_from_bytes(qf.msg)))
    return out


def members(site, key=LIST) -> list[str]:
    return [m.address for m in open_store(site, key).members()]


def write(tmp_path, name, text) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


MEMBER_FILE = ("# exported from elsewhere\n\nAnn Example <ann@example.org>\n\"Doe, J.\" <j@example.org>\n"
               "plain@example.org\nnot an address\nann@example.org\nbad@\n")


# -- members add / remove ---------------------------------------------------------------------

def test_add_from_a_file_reports_invalid_lines_and_goes_on(cli, site, tmp_path):
    path = write(tmp_path, "m.txt", MEMBER_FILE)
    status, out, err = cli("members", "add", "demo", "zed@example.org", "bad@", "--file", path)
    assert status == 1                                    # invalid entries: exit 1, the rest is done
    assert f"{LIST}: added 4, already members 1, invalid 3" in out
    assert "line 6: not an address: no address on this line" in err and "line 8: bad@: no address" in err
    assert "listgate: bad@: malformed address" in err
    assert members(site) == ["ann@example.org", "j@example.org", "plain@example.org", "zed@example.org"]
    assert open_store(site, LIST).get_member("j@example.org").display_name == "Doe, J."
    assert virgin(site) == []                             # no welcome and no owner notice by default


def test_add_with_welcome_and_one_owner_notice(cli, site):
    status, out, _ = cli("members", "add", "demo", "a@example.org", "B <b@example.org>", "--welcome",
                         "--notify-owners", "--json")
    assert status == 0
    report = json.loads(out)
    assert report["added"] == ["a@example.org", "b@example.org"] and len(report["queued"]) == 3
    sent = virgin(site)
    welcomes = [(rcpts, m) for kind, rcpts, m in sent if kind == "welcome"]
    assert sorted(r for rcpts, _ in welcomes for r in rcpts) == ["a@example.org", "b@example.org"]
    assert all(m["Subject"] == f"Welcome to {LIST}" for _, m in welcomes)
    [(rcpts, notice)] = [(rcpts, m) for kind, rcpts, m in sent if kind == "owner_membership"]
    assert rcpts == [OWNER] and notice["Subject"] == f"{LIST}: members changed: 2 added"
    body = notice.get_payload(decode=True).decode()
    assert "Added (2):\n    a@example.org\n    b@example.org" in body


def test_dry_run_changes_nothing(cli, site, tmp_path):
    open_store(site, LIST).add_member("old@example.org")
    path = write(tmp_path, "m.txt", MEMBER_FILE)
    before = os.listdir(site.queue_dir + "/virgin") if os.path.isdir(site.queue_dir + "/virgin") else []
    status, out, _ = cli("members", "add", "demo", "--file", path, "--welcome", "--notify-owners", "--dry-run",
                         "-v")
    assert status == 1 and f"{LIST}: would add 3, already members 1, invalid 2" in out
    assert "would add ann@example.org" in out
    status, out, _ = cli("members", "remove", "demo", "old@example.org", "ghost@example.org", "--goodbye",
                         "--notify-owners", "--dry-run")
    assert status == 0 and out == f"would remove old@example.org\n{LIST}: would remove 1, not members 1\n"
    sync = write(tmp_path, "s.txt", "new@example.org\n")
    status, out, _ = cli("members", "sync", "demo", sync, "--dry-run")      # names them without -v
    assert (status, out) == (0, f"would add new@example.org\nwould remove old@example.org\n"
                                f"{LIST}: would add 1, would remove 1\n")
    status, out, _ = cli("members", "sync", "demo", sync, "--welcome", "--goodbye", "--notify-owners", "--dry-run",
                         "--json")
    assert status == 0 and json.loads(out)["added"] == ["new@example.org"]
    assert json.loads(out)["removed"] == ["old@example.org"] and json.loads(out)["dry_run"]
    assert members(site) == ["old@example.org"]
    after = os.listdir(site.queue_dir + "/virgin") if os.path.isdir(site.queue_dir + "/virgin") else []
    assert after == before == []


def test_remove_with_goodbye_from_standard_input(cli, site, monkeypatch):
    store = open_store(site, LIST)
    for a in ("a@example.org", "b@example.org", "c@example.org"):
        store.add_member(a)
    import io
    import sys
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"a@example.org\n# c stays\nb@example.org\n"
                                                                  b"nobody@example.org\n")))
    status, out, _ = cli("members", "remove", "demo", "--file", "-", "--goodbye", "--notify-owners")
    assert status == 0 and f"{LIST}: removed 2, not members 1; owners notified" in out
    assert members(site) == ["c@example.org"]
    sent = virgin(site)
    assert sorted(r for kind, rcpts, _ in sent if kind == "goodbye" for r in rcpts) == ["a@example.org",
                                                                                        "b@example.org"]
    [notice] = [m for kind, _, m in sent if kind == "owner_membership"]
    assert "Removed (2):" in notice.get_payload(decode=True).decode()


def test_single_address_form_keeps_its_errors(cli, site):
    assert cli("members", "add", "demo", "a@example.org", "--dry-run") == (0, "would add a@example.org\n", "")
    assert members(site) == []
    status, out, _ = cli("members", "add", "demo", "a@example.org")
    assert (status, out) == (0, "added a@example.org (enabled)\n")
    status, out, err = cli("members", "add", "demo", "a@example.org")
    assert status == 1 and out == "" and "already a member" in err
    status, _, err = cli("members", "remove", "demo", "ghost@example.org")
    assert status == 1 and "is not a member" in err
    status, _, err = cli("members", "add", "demo")
    assert status == 2 and "--file" in err


# -- members sync / find ----------------------------------------------------------------------

def test_sync_adds_and_removes_to_match_the_file(cli, site, tmp_path):
    store = open_store(site, LIST)
    for a in ("keep@example.org", "Mixed@Example.ORG", "gone@example.org"):
        store.add_member(a)
    path = write(tmp_path, "s.txt", "keep@example.org\nMixed@example.org\nnew@example.org\nno address here\n")
    status, out, err = cli("members", "sync", "demo", path, "--welcome", "--goodbye", "-v")
    assert status == 1 and "line 4: no address here" in err        # reported, not fatal
    assert "added new@example.org" in out and "removed gone@example.org" in out
    assert f"{LIST}: added 1, removed 1, invalid 1" in out
    assert members(site) == ["Mixed@Example.ORG", "keep@example.org", "new@example.org"]
    kinds = sorted((kind, rcpts[0]) for kind, rcpts, _ in virgin(site))
    assert kinds == [("goodbye", "gone@example.org"), ("welcome", "new@example.org")]
    status, out, _ = cli("members", "sync", "demo", path)                # again: nothing to do
    assert status == 1 and f"{LIST}: invalid 1" in out


def test_sync_refuses_to_empty_the_list_unless_allowed(cli, site, tmp_path):
    open_store(site, LIST).add_member("a@example.org")
    empty = write(tmp_path, "empty.txt", "# nobody\n\n")
    status, out, err = cli("members", "sync", "demo", empty)
    assert status == 1 and "would remove all 1 member(s)" in err and "--allow-empty" in err
    assert members(site) == ["a@example.org"]
    status, out, _ = cli("members", "sync", "demo", empty, "--force")     # --force only skips the DNS check
    assert status == 1 and members(site) == ["a@example.org"]
    status, out, _ = cli("members", "sync", "demo", empty, "--allow-empty")
    assert status == 0 and f"{LIST}: removed 1" in out and members(site) == []


def test_find_across_lists(cli, site):
    assert cli("lists", "create", "news@lists.example.org", "--owner", OWNER)[0] == 0
    site = config.load(site.path)
    open_store(site, LIST).add_member("Jane.Doe@Example.org", "Jane Doe")
    open_store(site, LIST).add_member("bob@other.test")
    open_store(site, "news@lists.example.org").add_member("jane@example.org")
    status, out, err = cli("members", "find", "JANE")
    assert status == 0 and "2 member(s) found" in err
    assert [line.split()[0] for line in out.splitlines()] == [LIST, "news@lists.example.org"]
    status, out, _ = cli("members", "find", "*@example.org", "--json")
    assert sorted((r["list"], r["address"]) for r in json.loads(out)) == [
        (LIST, "Jane.Doe@Example.org"), ("news@lists.example.org", "jane@example.org")]
    assert cli("members", "find", "b?b@*")[1].split()[1] == "bob@other.test"
    assert cli("members", "find", "nobody")[0] == 1


# -- lists --------------------------------------------------------------------------------------

def test_lists_shows_counts_and_creates_no_store(cli, site):
    status, out, _ = cli("lists")
    assert status == 0 and f"{LIST}  0 member(s): 0 enabled, 0 disabled; 0 held" in out
    assert not os.path.exists(os.path.join(site.state_dir, "lists", f"{LIST}.db"))     # reading made nothing
    store = open_store(site, LIST)
    for a in ("a@example.org", "b@example.org", "c@example.org"):
        store.add_member(a)
    m = store.get_member("c@example.org")
    m.delivery_status = "by_bounce"
    store.save_member(m)
    store.add_pending("held_message", {"message": "", "subject": "x"}, 3600)
    status, out, _ = cli("lists", "--json")
    [row] = json.loads(out)
    assert (row["list"], row["members"], row["enabled"], row["disabled"], row["held"]) == (LIST, 3, 2, 1, 1)


def test_lists_create_writes_a_checked_file_from_the_template(cli, site):
    status, out, _ = cli("lists", "create", "News@Lists.Example.org", "--owner", "a@example.org",
                         "--owner", "b@example.org", "--description", 'The "news"')
    assert status == 0, out
    path = os.path.join(site.lists_dir, "news.yaml")
    assert f"created {path}" in out
    assert "note: list names are lower case: 'News' is list 'news'" in out
    loaded = config.load(site.path)                                   # strict: the file is valid
    lc = loaded.get_list("news@lists.example.org")
    assert list(lc.owners) == ["a@example.org", "b@example.org"] and lc.description == 'The "news"'
    assert lc.posting_policy == "members_only"                        # the template's settings
    status, out, err = cli("lists", "create", "news@lists.example.org", "--owner", "a@example.org")
    assert status == 1 and "exists already" in err
    status, _, err = cli("lists", "create", "news@other.example", "--owner", "a@example.org")
    assert status == 1 and "one file per list name" in err            # news.yaml is taken
    status, out, _ = cli("check")
    assert status == 0 and "news@lists.example.org: members_only, 2 owner(s)" in out


@pytest.mark.parametrize("argv, message", [
    (("bad@lists.example.org", "--owner", "not-an-address"), "owners: item 0: 'not-an-address' is not a valid address"),
    (("bad@lists.example.org", "--owner", "a@example.org\nposting_policy: open"), "is not a valid address"),
    (("../evil@lists.example.org", "--owner", "a@example.org"), "is not a list address"),
    (("noatsign", "--owner", "a@example.org"), "is not a list address"),
    (("bad@no_domain", "--owner", "a@example.org"), "is not a list address"),
])
def test_lists_create_refuses_bad_input_and_leaves_no_file(cli, site, argv, message):
    before = sorted(os.listdir(site.lists_dir))
    status, out, err = cli("lists", "create", *argv)
    assert status == 1 and message in err and out == "", err
    assert sorted(os.listdir(site.lists_dir)) == before == ["demo.yaml"]
    assert not os.path.exists(os.path.join(os.path.dirname(site.lists_dir), "evil.yaml"))


def test_lists_remove_keeps_the_store_unless_purged(cli, site):
    open_store(site, LIST).add_member("a@example.org")
    db = os.path.join(site.state_dir, "lists", f"{LIST}.db")
    status, out, _ = cli("lists", "remove", "demo")
    assert status == 0 and f"kept its store (members, bounce info, held posts): {db}" in out
    assert not os.path.exists(os.path.join(site.lists_dir, "demo.yaml")) and os.path.exists(db)
    assert cli("lists", "create", LIST, "--owner", OWNER)[0] == 0          # the kept store is used again
    assert members(config.load(site.path)) == ["a@example.org"]
    status, out, _ = cli("lists", "remove", LIST, "--purge")
    assert status == 0 and f"deleted its store: {db}" in out
    assert not os.path.exists(db) and not os.path.exists(db + "-wal")
    assert cli("lists", "remove", LIST)[0] == 1


def test_lists_remove_of_a_list_that_never_had_a_store_says_so(cli, site):
    assert cli("lists", "create", "news@lists.example.org", "--owner", OWNER)[0] == 0
    db = os.path.join(site.state_dir, "lists", "news@lists.example.org.db")
    status, out, _ = cli("lists", "remove", "news")
    assert status == 0 and "it had no store" in out and "kept its store" not in out, out
    assert not os.path.exists(db)


@pytest.mark.parametrize("site", ["postgres"], indirect=True)
def test_lists_remove_purges_a_postgresql_store(cli, site):
    open_store(site, LIST).add_member("a@example.org")
    status, out, _ = cli("lists", "remove", "demo")
    assert status == 0 and "kept its store (members, bounce info, held posts): the rows of " in out
    assert cli("lists", "create", LIST, "--owner", OWNER)[0] == 0
    assert members(config.load(site.path)) == ["a@example.org"]
    status, out, _ = cli("lists", "remove", "demo", "--purge")
    assert status == 0 and "deleted its store: the rows of demo@lists.example.org in postgresql://" in out
    assert cli("lists", "create", LIST, "--owner", OWNER)[0] == 0
    assert members(config.load(site.path)) == []


def test_lists_remove_refuses_while_qfiles_wait(cli, site):
    assert cli("members", "add", "demo", "a@example.org", "--welcome")[0] == 0
    status, _, err = cli("lists", "remove", "demo")
    assert status == 1 and "has qfiles waiting (1 in virgin)" in err
    assert os.path.exists(os.path.join(site.lists_dir, "demo.yaml"))
    status, out, _ = cli("lists", "remove", "demo", "--force")
    assert status == 0 and "kept its qfiles: 1 in virgin" in out


# -- held show ----------------------------------------------------------------------------------

JUNK_POST = (b"From: =?iso-8859-1?q?J=F6rg_Stranger?= <joerg@outside.test>\r\n"
             b"To: demo@lists.example.org\r\n"
             b"Subject: =?utf-8?b?w4RwZmVs?= and raw \xe4\xff 8-bit\r\n"
             b"X-Junk: \x1b[31mred\r\n"
             b"Message-ID: <held-junk@outside.test>\r\n"
             b"MIME-Version: 1.0\r\n"
             b"Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
             b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
             b"Gr\xc3\xbc\xc3\x9fe, and junk \xff\xfe here \x1b[2J\r\n"
             b"--b1\r\nContent-Type: application/pdf; name=\"report.pdf\"\r\n"
             b"Content-Disposition: attachment; filename=\"report.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
             b"JVBERi0xLjQKJcfsj6IK\r\n--b1--\r\n")


def test_held_show_prints_a_post_with_8bit_junk_readably(cli, site):
    lc = site.get_list("demo")
    token = moderation.hold(site, lc, open_store(site, LIST), JUNK_POST, parse_headers(JUNK_POST),
                            {"envelope_sender": "joerg@outside.test"}, "non-member post")
    status, out, err = cli("held", "show", "demo", token)
    assert status == 0, err
    assert f"held post {token} of {LIST}: non-member post" in out
    assert "From: Jörg Stranger <joerg@outside.test>" in out
    assert "Subject: Äpfel and raw" in out
    assert "Grüße, and junk" in out and "JVBERi0" not in out                # the attachment is not dumped
    assert "application/pdf report.pdf (15 bytes)" in out
    assert "\x1b" not in out                                                # no terminal escapes
    status, out, _ = cli("held", "show", "demo", token, "--json")
    shown = json.loads(out)
    assert dict(shown["headers"])["Message-ID"] == "<held-junk@outside.test>" and shown["size"] == len(JUNK_POST)
    status, _, err = cli("held", "show", "demo", "a" * 26)
    assert status == 1 and "no held post with token" in err


# -- the progress bar -----------------------------------------------------------------------------

def _run_with_stderr(site, argv, *, tty: bool) -> tuple[int, bytes, bytes]:
    """Run the CLI as a process with stderr on a pseudo-terminal (``tty``) or a pipe."""
    import pty
    import subprocess
    import sys
    if not tty:
        out = subprocess.run([sys.executable, "-m", "listgate", "-c", site.path, *argv], capture_output=True,
                             timeout=120)
        return out.returncode, out.stdout, out.stderr
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "listgate", "-c", site.path, *argv],
                                stdout=subprocess.PIPE, stderr=slave)
        os.close(slave)
        err = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:           # EIO: the child closed its end
                break
            if not chunk:
                break
            err += chunk
        out = proc.stdout.read()
        return proc.wait(timeout=120), out, err
    finally:
        os.close(master)


def test_a_long_run_draws_a_progress_bar_only_on_a_terminal(site, tmp_path):
    path = write(tmp_path, "many.txt", "".join(f"m{i}@example.org\n" for i in range(120)))
    status, out, err = _run_with_stderr(site, ["members", "add", "demo", "--file", path, "--dry-run"], tty=True)
    assert status == 0 and b"would add 120" in out
    assert b"adding [" in err and b"] 60/120" in err
    status, out, err = _run_with_stderr(site, ["members", "add", "demo", "--file", path], tty=False)
    assert status == 0 and b"added 120" in out and err == b""
    status, out, err = _run_with_stderr(site, ["members", "remove", "demo", "m1@example.org", "m2@example.org"],
                                        tty=True)
    assert status == 0 and b"removed 2" in out and b"[" not in err          # a short run: no bar
