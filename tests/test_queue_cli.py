"""``listgate queue ls|show|edit|unshunt`` run as the real command on a fresh instance."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from listgate.queue import Switchboard

from conftest import make_site
from milter_helpers import remount, tmpfs

MSG = b"From: a@example.org\r\nSubject: caf\xe9\r\n\r\nbody\r\n"


def run(site, *args: str, check: int | None = 0) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "listgate", "-c", site.path, "queue", *args],
                       capture_output=True, timeout=60)
    if check is not None:
        assert r.returncode == check, r.stderr.decode(errors="replace")
    return r


@pytest.fixture
def inst(tmp_path):
    site = make_site(tmp_path / "inst")
    sb = Switchboard.for_site(site, "in")
    ids = [sb.enqueue(MSG, {"list": "demo@lists.example.org", "envelope_sender": f"s{i}@example.org",
                            "recipients": ["demo@lists.example.org"]}, arrival=1800000000.0 + i)
           for i in range(3)]
    return site, ids


def test_ls_human_and_json(inst):
    site, ids = inst
    sb = Switchboard.for_site(site, "in")
    held = sb.dequeue()
    sb.move(held, "shunt", reason="KeyError: 'x'")
    taken = sb.dequeue()  # a runner is working on this one
    with open(os.path.join(sb.dir, "stray.qf"), "wb") as fh:
        fh.write(b"garbage")

    out = run(site, "ls").stdout.decode()
    assert "in: 3 qfile(s), 1 in progress" in out
    assert f"{taken.id}  held" in out and f"{ids[2]}  waiting" in out
    assert "from=<s2@example.org>" in out and "2027-01-15 08:00:02" in out
    assert "stray  waiting  UNPARSABLE: no 'listgate-qfile VERSION' first line" in out
    assert "shunt: 1 qfile(s)" in out and "reason=\"KeyError: 'x'\"" in out
    assert "virgin" not in out  # empty queues are left out of the overview

    data = json.loads(run(site, "ls", "--json").stdout)
    assert set(data) == {"in", "bounces", "out", "virgin", "retry", "shunt", "bad"}
    assert [e["id"] for e in data["in"]] == sorted([ids[1], ids[2], "stray"])
    first = data["in"][0]
    assert first == {"id": ids[1], "queue": "in", "state": "held", "arrival": 1800000001.0, "size": len(MSG),
                     "list": "demo@lists.example.org", "envelope_sender": "s1@example.org", "recipients": 1,
                     "attempts": 0, "reason": None, "from_queue": None}
    assert data["shunt"][0]["reason"] == "KeyError: 'x'" and data["shunt"][0]["from_queue"] == "in"

    only = json.loads(run(site, "ls", "shunt", "--json").stdout)
    assert list(only) == ["shunt"]
    assert run(site, "ls", "virgin").stdout.decode() == "virgin: 0 qfile(s)\n"
    assert run(site, "ls", "nonsense", check=2).returncode == 2


def test_show_prints_metadata_and_exact_message(inst):
    site, ids = inst
    r = run(site, "show", ids[0])
    head, _, body = r.stdout.partition(b"--- message ---\n")
    assert body == MSG
    text = head.decode()
    assert text.startswith(f"qfile {ids[0]}\nqueue in (waiting), arrived 2027-01-15 08:00:00 UTC")
    assert '"envelope_sender": "s0@example.org"' in text

    assert run(site, "show", ids[0], "--raw").stdout == MSG
    data = json.loads(run(site, "show", ids[0], "--json").stdout)
    assert data["meta"]["recipients"] == ["demo@lists.example.org"] and data["queue"] == "in"
    assert data["message"] == "From: a@example.org\r\nSubject: caf\\xe9\r\n\r\nbody\r\n"
    assert data["size"] == len(MSG)

    missing = run(site, "show", "0000000000000000000-1-000000-00000000", check=1)
    assert b"no qfile" in missing.stderr


def test_unshunt_moves_back_to_original_queue_and_discard(inst):
    site, ids = inst
    sb_in = Switchboard.for_site(site, "in")
    out = Switchboard.for_site(site, "out")
    out_id = out.enqueue(b"fan-out", {"deliveries": [], "done": []}, arrival=1700000000.0)
    for sb in (sb_in, out):
        qf = sb.dequeue()
        sb.move(qf, "shunt", reason="boom")
    shunt = Switchboard.for_site(site, "shunt")
    assert shunt.ids() == [out_id, ids[0]]

    r = run(site, "unshunt", "--json")
    assert json.loads(r.stdout) == [{"id": out_id, "to": "out"}, {"id": ids[0], "to": "in"}]
    assert shunt.ids() == []
    back = sb_in.dequeue()
    assert back.id == ids[0] and back.msg == MSG and "reason" not in back.meta
    assert back.meta["arrival"] == 1800000000.0  # still first in line
    assert out.dequeue().id == out_id

    sb_in.move(back, "shunt", reason="again")
    assert run(site, "unshunt", "--discard").stdout.decode() == f"{ids[0]} -> discarded\n"
    assert shunt.ids() == [] and ids[0] not in sb_in.ids()
    assert run(site, "unshunt").stdout.decode() == "shunt is empty\n"
    assert b"no qfile nope waiting in shunt" in run(site, "unshunt", "nope", check=1).stderr


def test_unshunt_on_a_read_only_queue_exits_75_and_keeps_the_qfile(tmp_path):
    with tmpfs(tmp_path / "mnt", "4m") as mnt:
        site = make_site(mnt / "inst")
        sb = Switchboard.for_site(site, "in")
        qid = sb.enqueue(MSG, {"list": "demo@lists.example.org"})
        sb.move(sb.dequeue(), "shunt", reason="boom")
        remount(mnt, "ro")
        r = run(site, "unshunt", check=75)
        assert b"cannot take qfile" in r.stderr and b"Read-only file system" in r.stderr
        assert Switchboard.for_site(site, "shunt").ids() == [qid]
        assert run(site, "ls", "shunt", "--json", check=0).returncode == 0  # reading still works


def test_ls_and_show_report_entries_that_are_not_files_without_hanging(inst):
    """Finding 4/10: a FIFO named ID.qf hung ``queue ls``; a dangling symlink was counted
    but not listed. Both are listed as unparsable, and ``show`` says what they are."""
    site, ids = inst
    sb = Switchboard.for_site(site, "in")
    fifo, dangling = "0000000000000000001-1-000000-00000000", "0000000000000000002-1-000000-00000000"
    os.mkfifo(os.path.join(sb.dir, fifo + ".qf"))
    os.symlink("/nonexistent/x", os.path.join(sb.dir, dangling + ".held"))
    out = run(site, "ls", "in").stdout.decode()
    assert "in: 5 qfile(s), 1 in progress" in out
    assert f"{fifo}  waiting  UNPARSABLE: {fifo}.qf is not a regular file but a FIFO" in out
    assert f"{dangling}  held     UNPARSABLE: {dangling}.held is not a regular file but a symbolic link" in out
    r = run(site, "show", fifo, check=1)
    assert b"unparsable" in r.stderr and b"a FIFO" in r.stderr


# -- queue edit ----------------------------------------------------------------------------

def edit(site, tmp_path, qid: str, script: str, check: int | None = 0) -> subprocess.CompletedProcess:
    """``listgate queue edit QID`` with $EDITOR a Python script (``path`` is the file to edit)."""
    editor = tmp_path / "editor.py"
    editor.write_text("import sys\npath = sys.argv[1]\n" + script)
    env = {**os.environ, "EDITOR": f"{sys.executable} {editor}", "TMPDIR": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "listgate", "-c", site.path, "queue", "edit", qid],
                       capture_output=True, timeout=60, env=env)
    if check is not None:
        assert r.returncode == check, r.stderr.decode(errors="replace")
    return r


def _names(sb: Switchboard) -> list[str]:
    return sorted(os.listdir(sb.dir))


def test_edit_stores_a_valid_edit_as_plain_text(inst, tmp_path):
    site, ids = inst
    sb = Switchboard.for_site(site, "in")
    out = edit(site, tmp_path, ids[1], """
data = open(path, 'rb').read()
assert data.startswith(b'listgate-qfile 1\\n'), data[:40]
data = data.replace(b's1@example.org', b'fixed@example.org').replace(b'body', b'edited body')
open(path, 'wb').write(data)
""").stdout.decode()
    assert out == f"qfile {ids[1]} in queue in updated\n"
    assert sb.ids() == ids and [n for n in _names(sb) if "edit" in n or n.startswith(".")] == []
    qf = sb.take(ids[1])
    assert qf.meta["envelope_sender"] == "fixed@example.org" and qf.msg == MSG.replace(b"body", b"edited body")
    assert qf.meta["arrival"] == 1800000001.0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("listgate-")]  # the temp copy is gone


def test_an_invalid_edit_keeps_the_original_and_exits_1(inst, tmp_path):
    site, ids = inst
    sb = Switchboard.for_site(site, "in")
    path = os.path.join(sb.dir, ids[0] + ".qf")
    before = open(path, "rb").read()
    st = os.stat(path)
    r = edit(site, tmp_path, ids[0], "data = open(path, 'rb').read().replace(b'--- message ---', b'--- massage ---')\n"
             "open(path, 'wb').write(data)\n", check=1)
    err = r.stderr.decode()
    assert "the edited qfile is not valid: no '--- message ---' separator line" in err
    assert f"qfile {ids[0]} is unchanged" in err
    kept = err.rsplit("your edit is kept in ", 1)[1].splitlines()[0].strip()
    assert b"--- massage ---" in open(kept, "rb").read()
    assert open(path, "rb").read() == before and os.stat(path).st_ino == st.st_ino
    assert sb.ids() == ids and not [n for n in _names(sb) if "edit" in n]


def test_an_unchanged_edit_writes_nothing(inst, tmp_path):
    site, ids = inst
    sb = Switchboard.for_site(site, "in")
    path = os.path.join(sb.dir, ids[2] + ".qf")
    st = os.stat(path)
    assert edit(site, tmp_path, ids[2], "pass\n").stdout.decode() == f"qfile {ids[2]} unchanged\n"
    assert os.stat(path).st_ino == st.st_ino and sb.ids() == ids


def test_edit_of_an_unknown_or_held_qfile_is_a_clear_error(inst, tmp_path):
    site, ids = inst
    unknown = "1800000000000000000-1-000000-00000000"
    r = edit(site, tmp_path, unknown, "raise SystemExit('the editor must not run')\n", check=1)
    (message,) = r.stderr.decode().splitlines()         # the audit line goes to state_dir/audit.log
    assert message == f"listgate: no qfile {unknown} in any queue (see: listgate queue ls)"
    with open(os.path.join(site.state_dir, "audit.log"), encoding="utf-8") as fh:
        audit = fh.read().splitlines()[-1]
    assert "event=cli_command" in audit and 'command="queue edit"' in audit and audit.endswith(" status=1")
    sb = Switchboard.for_site(site, "in")
    held = sb.dequeue()
    r = edit(site, tmp_path, held.id, "raise SystemExit('the editor must not run')\n", check=1)
    assert "is in progress in queue in (a runner holds it)" in r.stderr.decode()
    assert sb.held_ids() == [held.id]


def test_a_failing_editor_changes_nothing(inst, tmp_path):
    site, ids = inst
    sb = Switchboard.for_site(site, "in")
    r = edit(site, tmp_path, ids[0], "open(path, 'wb').write(b'junk')\nraise SystemExit(3)\n", check=1)
    assert "exited with status 3; nothing changed" in r.stderr.decode()
    assert sb.take(ids[0]).msg == MSG


def test_no_runner_takes_a_qfile_while_it_is_edited(inst, tmp_path):
    """While the editor is open the qfile is out of every runner's reach (dequeue, take,
    recover) and ``queue ls`` shows it as being edited; afterwards it is back in order."""
    site, ids = inst
    report = tmp_path / "seen.json"
    edit(site, tmp_path, ids[0], f"""
import json, subprocess
from listgate.queue import Switchboard
sb = Switchboard({site.queue_dir!r}, "in")
ls = subprocess.run([{sys.executable!r}, "-m", "listgate", "-c", {site.path!r}, "queue", "ls", "in", "--json"],
                    capture_output=True, check=True).stdout
recovered = sb.recover()  # a runner starting now: the qfile being edited is not abandoned
taken = [sb.dequeue(), sb.dequeue(), sb.dequeue()]
result = {{"ids": [q.id if q else None for q in taken], "take": sb.take({ids[0]!r}) is not None,
          "recovered": recovered, "editing": sb.editing_ids(), "ls": json.loads(ls)["in"]}}
for q in taken:
    if q:
        sb.release(q)
open({str(report)!r}, "w").write(json.dumps(result))
open(path, "ab").write(b"appended by hand\\r\\n")
""")
    seen = json.loads(report.read_text())
    assert seen["ids"] == [ids[1], ids[2], None] and seen["take"] is False and seen["recovered"] == 0
    assert seen["editing"] == [ids[0]]
    assert {"id": ids[0], "queue": "in", "state": "editing"} in seen["ls"]
    sb = Switchboard.for_site(site, "in")
    assert sb.ids() == ids and sb.dequeue().msg == MSG + b"appended by hand\r\n"


def test_edit_left_by_a_killed_editor_goes_back_at_recovery(inst, tmp_path):
    site, ids = inst
    sb = Switchboard.for_site(site, "in")
    r = edit(site, tmp_path, ids[1], "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n", check=None)
    assert r.returncode == -9
    assert sb.ids() == [ids[0], ids[2]] and sb.editing_ids() == [ids[1]]
    assert sb.recover() == 0 and sb.ids() == ids and sb.editing_ids() == []
    assert sb.take(ids[1]).msg == MSG


def test_edit_hands_a_version_2_file_over_as_plain_text(inst, tmp_path):
    """A qfile written by an older release (version 2, with padding) is edited as
    version 1 text; the padding, someone else's old mail, never reaches the editor."""
    from test_queue import v2_file
    site, ids = inst
    sb = Switchboard.for_site(site, "in")
    path = os.path.join(sb.dir, ids[0] + ".qf")
    meta, msg = sb.peek(ids[0]).meta, MSG
    with open(path, "wb") as fh:
        fh.write(v2_file(meta, msg, padding=b"OLD MAIL OF SOMEBODY ELSE" * 10))
    edit(site, tmp_path, ids[0], """
data = open(path, 'rb').read()
assert data.startswith(b'listgate-qfile 1\\n') and b'OLD MAIL' not in data, data
open(path, 'wb').write(data.replace(b'Subject:', b'X-Edited: yes\\r\\nSubject:'))
""")
    data = open(path, "rb").read()
    assert data.startswith(b"listgate-qfile 1\n") and b"OLD MAIL" not in data
    assert sb.take(ids[0]).msg == b"From: a@example.org\r\nX-Edited: yes\r\n" + MSG.split(b"\r\n", 1)[1]


def test_flush_makes_retry_qfiles_due_now_and_keeps_their_count(inst):
    from listgate.runner import delivery
    site, ids = inst
    sb = Switchboard.for_site(site, "in")
    for _ in ids:
        qf = sb.dequeue()
        sb.move(qf, "retry", meta={**qf.meta, "retry_at": 4000000000.0, "retries": 3,
                                   "first_deferred_at": 1800000000.0})
    retry = Switchboard.for_site(site, "retry")
    busy = retry.take(ids[0])   # a runner is sending this one: flush leaves it alone
    out = run(site, "flush").stdout.decode()
    assert out.splitlines() == [f"{ids[1]} due now", f"{ids[2]} due now"]
    retry.release(busy)
    qfs = {q: retry.take(q) for q in ids}
    assert [delivery.due(qfs[q]) for q in ids] == [False, True, True]
    assert all(qfs[q].meta["retries"] == 3 and qfs[q].meta["first_deferred_at"] == 1800000000.0 for q in ids)
    for qf in qfs.values():
        retry.release(qf)
    assert json.loads(run(site, "flush", "--json", ids[0]).stdout) == [ids[0]]
    assert run(site, "flush", "nosuch", check=1).stderr.startswith(b"listgate: no qfile nosuch")
    assert json.loads(run(site, "flush", "--json").stdout) == ids
