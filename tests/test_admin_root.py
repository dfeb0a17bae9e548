"""The CLI run as root against an instance owned by an unprivileged user (issue 21, problem 1).

A command run as root becomes the user and group that own state_dir before
it touches anything, so what it writes (stores, qfiles, their directories)
stays usable by the daemons running as that user; ``--as-root`` keeps root;
``listgate check`` names files that user does not own; reading creates nothing.
"""
from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile

import pytest
from dns_helpers import TEST_DNS

from listgate import instance

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the CLI's switch to state_dir's owner)")

# The CLI comes from the installed wheel (tests/wheel_helpers.py): an interpreter
# under a root-only directory (pyenv in /root) could not import as nobody.

USER = "nobody"
POST = (b"From: Stranger <stranger@outside.test>\r\nTo: demo@lists.example.org\r\n"
        b"Subject: from a non-member\r\nMessage-ID: <held-1@outside.test>\r\n\r\nhello\r\n")


@pytest.fixture
def owned_instance(installed_wheel):
    """A ``listgate init`` instance chowned to nobody, in a directory nobody can reach (not pytest's 0700 one)."""
    top = tempfile.mkdtemp(prefix="lg-admin-")
    os.chmod(top, 0o711)
    pw = pwd.getpwnam(USER)
    path = instance.init(os.path.join(top, "inst"), reinject_port=9)   # port 9: nothing listens
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(TEST_DNS)          # no DNS on a test machine: the domain check is off, as in every test
    for dirpath, dirnames, filenames in os.walk(os.path.dirname(path)):
        for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            os.lchown(name, pw.pw_uid, pw.pw_gid)
    global LISTGATE
    LISTGATE = str(installed_wheel / "bin" / "listgate")
    yield path, pw
    shutil.rmtree(top)


LISTGATE = None


def lg(path, *args, user=None, stdin=None):
    # umask 022, a root shell's: the modes of what the CLI makes must not depend on it
    return subprocess.run([LISTGATE, "-c", path, *args], capture_output=True,
                          input=stdin, timeout=120, user=user, cwd="/", umask=0o022)


def not_owned(top, uid):
    found = []
    for dirpath, dirnames, filenames in os.walk(top):
        for name in [dirpath, *(os.path.join(dirpath, n) for n in filenames)]:
            if os.lstat(name).st_uid != uid:
                found.append(name)
    return found


def test_root_commands_write_as_state_dirs_owner(owned_instance):
    path, pw = owned_instance
    top = os.path.dirname(path)
    out = lg(path, "members", "add", "demo", "alice@members.test")
    assert out.returncode == 0, out.stderr
    # the audit line names who ran it (root), not the user the command became
    with open(os.path.join(os.path.dirname(path), "audit.log"), "rb") as fh:
        audit = fh.read()
    assert re.search(rb"event=cli_command user=root uid=0 (sudo_user=\S+ )?command=\"members add\" "
                     rb"argv=\"-c \S+ members add demo alice@members.test\" status=0", audit), audit
    assert os.listdir(os.path.join(top, "lists")), "the store was made"
    # a post from a non-member is held (non_member_action: hold)
    out = lg(path, "inject", "-r", "demo@lists.example.org", "-f", "stranger@outside.test", stdin=POST)
    assert out.returncode == 0, out.stderr
    out = lg(path, "runner", "--once")
    assert out.returncode == 0, out.stderr
    out = lg(path, "held", "list", "demo", "--json")
    assert out.returncode == 0, out.stderr
    [held] = json.loads(out.stdout)
    out = lg(path, "held", "approve", "demo", held["token"])
    assert out.returncode == 0, out.stderr
    assert not_owned(top, pw.pw_uid) == []
    # the runner's user reads the qfile approve wrote (the fan-out in "out")
    out = lg(path, "queue", "ls", "--json", user=USER)
    assert out.returncode == 0, out.stderr
    [approved] = [e for e in json.loads(out.stdout)["out"] if e.get("list") == "demo@lists.example.org"]
    out = lg(path, "queue", "show", approved["id"], user=USER)
    assert out.returncode == 0 and b"from a non-member" in out.stdout, out.stderr
    out = lg(path, "check")
    assert out.returncode == 0, out.stderr


def test_check_reports_a_root_owned_file_and_as_root_keeps_root(owned_instance):
    path, pw = owned_instance
    top = os.path.dirname(path)
    out = lg(path, "--as-root", "inject", "-r", "demo@lists.example.org", "-f", "stranger@outside.test",
             stdin=POST)
    assert out.returncode == 0, out.stderr
    rooted_files = not_owned(top, pw.pw_uid)            # the qfile, and the store routing opened
    assert all(os.stat(p).st_uid == 0 for p in rooted_files)
    [rooted] = [p for p in rooted_files if "/queue/in/" in p]
    out = lg(path, "check")
    assert out.returncode == 1
    assert f"{rooted}: owned by uid 0, not by {USER}".encode() in out.stderr, out.stderr
    out = lg(path, "check", "--site-only")         # reported, but no reason to keep the daemons down
    assert out.returncode == 0 and rooted.encode() in out.stderr, out.stderr


def test_reading_creates_nothing(owned_instance):
    path, _ = owned_instance
    queue = os.path.join(os.path.dirname(path), "queue")
    shutil.rmtree(queue)
    for args in (("queue", "ls"), ("queue", "ls", "--json"), ("queue", "show", "nosuchid"), ("status",),
                 ("status", "--json")):
        lg(path, *args)
        assert not os.path.exists(queue), args


def test_a_missing_state_dir_is_refused_as_root(owned_instance):
    path, _ = owned_instance
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("queue_dir: queue\n")
    text = open(path, encoding="utf-8").read().replace("state_dir: .", "state_dir: ./missing")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    out = lg(path, "members", "list", "demo")
    assert out.returncode == 1 and b"--as-root" in out.stderr, out.stderr
    assert not os.path.exists(os.path.join(os.path.dirname(path), "missing"))


def test_a_python_the_owner_cannot_read_gives_a_clear_error(owned_instance):
    """Run as root from a Python under /root (pyenv, a venv of root's python3): after
    becoming state_dir's owner it could not load its own modules; it says so instead
    of failing later with a traceback."""
    path, _ = owned_instance
    stdlib = os.path.dirname(os.__file__)
    readable = subprocess.run(["test", "-r", stdlib, "-a", "-x", stdlib], user=USER, timeout=30).returncode == 0
    if readable:
        pytest.skip(f"{USER} can read this Python's library {stdlib}")
    out = subprocess.run([sys.executable, "-m", "listgate", "-c", path, "members", "list", "demo"],
                         capture_output=True, text=True, timeout=120, cwd="/")
    assert out.returncode == 1, out.stderr
    assert "cannot read its own library" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_admin_commands_as_root_leave_files_the_owner_can_use(owned_instance):
    """``lists create`` writes configuration as root, the file taking lists.d's owner; bulk
    ``members add`` becomes state_dir's owner like every command that writes state."""
    path, pw = owned_instance
    top = os.path.dirname(path)
    out = lg(path, "lists", "create", "news@lists.example.org", "--owner", "owner@lists.example.org")
    assert out.returncode == 0, out.stderr
    assert os.stat(os.path.join(top, "lists.d", "news.yaml")).st_uid == pw.pw_uid
    out = lg(path, "members", "add", "news", "--file", "-", "--welcome", "--notify-owners",
             stdin=b"a@members.test\nBee <b@members.test>\nnot an address\n")
    assert out.returncode == 1 and b"news@lists.example.org: added 2, invalid 1" in out.stdout, out.stderr
    out = lg(path, "lists", "--json")
    assert out.returncode == 0, out.stderr
    assert {r["list"]: r["members"] for r in json.loads(out.stdout)} == {"demo@lists.example.org": 0,
                                                                        "news@lists.example.org": 2}
    assert not_owned(top, pw.pw_uid) == []
    out = lg(path, "check")
    assert out.returncode == 0, out.stderr


def test_files_the_cli_makes_have_the_daemons_modes(owned_instance):
    """List file, a new store, the tasks stamp and audit.log: 0640 (INSTALL 3.3), as the daemons make them."""
    path, pw = owned_instance
    top = os.path.dirname(path)
    out = lg(path, "lists", "create", "team@lists.example.org", "--owner", "owner@lists.example.org")
    assert out.returncode == 0, out.stderr
    assert lg(path, "members", "add", "team", "alice@members.test").returncode == 0
    assert lg(path, "tasks", "run").returncode == 0
    stores = [os.path.join(top, "lists", n) for n in os.listdir(os.path.join(top, "lists"))
              if n.startswith("team")]
    made = [os.path.join(top, "lists.d", "team.yaml"), os.path.join(top, "runner-tasks.stamp"),
            os.path.join(top, "audit.log"), *stores]
    assert stores and {p: oct(os.stat(p).st_mode & 0o777) for p in made} == {p: "0o640" for p in made}
