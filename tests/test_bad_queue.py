"""Issue 20: nothing a member should receive stays in ``bad`` silently.

``listgate queue requeue`` puts bad qfiles back (into the queue they came
from, the requeue recorded), ``listgate check`` warns, and the periodic tasks
send the owners and the postmaster a notice once a day.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import make_site
from listgate import clock
from listgate.queue import Switchboard
from listgate.runner import tasks

LIST = "demo@lists.example.org"


def cli(site, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "listgate", "-c", site.path, *args],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def site(tmp_path):
    return make_site(tmp_path / "inst")


def to_bad(site, queue: str, meta: dict) -> str:
    sb = Switchboard.for_site(site, queue)
    qid = sb.enqueue(b"Subject: s\r\n\r\nbody\r\n", meta)
    qf = sb.take(qid)
    sb.move(qf, "bad", reason="left in progress 3 times in a row without progress",
            meta={**qf.meta, "attempts": 3})
    return qid


def test_requeue_puts_bad_qfiles_back_where_they_came_from(site):
    fan = to_bad(site, "out", {"list": LIST, "deliveries": [{"rcpt": "m@x.test", "sender": ""}], "done": []})
    post = to_bad(site, "in", {"list": LIST, "role": "post"})
    lost = Switchboard.for_site(site, "bad").enqueue(b"x", {"list": LIST, "deliveries": []})  # no from_queue
    r = cli(site, "queue", "requeue", "0000000000000000001-1-000001-deadbeef")
    assert r.returncode == 1 and "no qfile 0000000000000000001-1-000001-deadbeef waiting in bad" in r.stderr
    assert cli(site, "queue", "requeue").returncode == 2     # neither ids nor --all
    r = cli(site, "queue", "requeue", fan)
    assert r.returncode == 0 and f"{fan} -> out" in r.stdout
    back = Switchboard.for_site(site, "out").peek(fan)
    assert back.meta["attempts"] == 0 and "reason" not in back.meta
    [note] = back.meta["requeued"]
    assert note["attempts"] == 3 and "without progress" in note["reason"]
    r = cli(site, "queue", "requeue", "--all")
    assert r.returncode == 0 and f"{post} -> in" in r.stdout and f"{lost} -> out" in r.stdout
    assert Switchboard.for_site(site, "bad").ids() == []
    assert cli(site, "queue", "requeue", "--all").stdout.strip() == "bad is empty"


def test_unparsable_files_stay_in_bad(site):
    bad = Switchboard.for_site(site, "bad")
    qid = bad.enqueue(b"garbage", {"unparsable": True, "reason": "unparsable qfile: x", "from_queue": "in"})
    r = cli(site, "queue", "requeue", qid)
    assert r.returncode == 1 and "could not be parsed" in r.stderr
    assert bad.ids() == [qid]


def test_check_warns_about_bad(site):
    assert "bad queue" not in cli(site, "check").stderr
    qid = to_bad(site, "out", {"list": LIST, "deliveries": [], "done": []})
    r = cli(site, "check")
    assert r.returncode == 0
    assert f"warning: 1 qfile(s) in the bad queue, oldest {qid}" in r.stderr and "queue requeue" in r.stderr


def test_bad_reported_to_owners_and_postmaster_once_a_day(site):
    clock.freeze(1_800_000_000.0)
    assert tasks.report_bad(site) == []     # nothing in bad: nothing said
    qid = to_bad(site, "out", {"list": LIST, "deliveries": [], "done": []})
    lines = tasks.run(site)
    assert any("bad queue reported to the owners" in x for x in lines)
    assert any("bad queue reported to the postmaster" in x for x in lines)
    virgin = Switchboard.for_site(site, "virgin")
    notes = [virgin.peek(q) for q in virgin.ids()]
    rcpts = sorted(d["rcpt"] for qf in notes for d in qf.meta["deliveries"])
    assert rcpts == sorted([f"postmaster@{site.conf.hostname}", *site.get_list(LIST).owners])
    assert all(qid.encode() in qf.msg and b"listgate queue requeue" in qf.msg for qf in notes)
    clock.advance(3600)
    assert tasks.report_bad(site) == []     # once a day
    clock.advance(86400)
    assert len(tasks.report_bad(site)) == 2
