"""Every command meets an unusable queue or store with a message and a sysexits code, not a traceback."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest


def run(site, *args, stdin=b""):
    return subprocess.run([sys.executable, "-m", "listgate", "-c", site.path, *args], input=stdin,
                          capture_output=True, timeout=120)


@pytest.fixture
def broken_in_queue(site):
    qin = os.path.join(site.queue_dir, "in")
    shutil.rmtree(qin)
    with open(qin, "w") as fh:           # the queue directory cannot be made or listed
        fh.write("not a directory\n")
    return site


@pytest.mark.parametrize("args", [
    ("inject", "-r", "demo@lists.example.org", "-f", "a@example.org"),
    ("queue", "ls"),
    ("runner", "--once"),
])
def test_unusable_queue_is_exit_75_with_a_message(broken_in_queue, args):
    out = run(broken_in_queue, *args, stdin=b"From: a@example.org\r\n\r\nhi\r\n")
    assert out.returncode == 75, out.stderr.decode()
    assert b"Traceback" not in out.stderr and b"try again later" in out.stderr


def test_unusable_store_is_exit_75_for_held(site):
    os.makedirs(os.path.join(site.state_dir, "lists"), exist_ok=True)
    db = os.path.join(site.state_dir, "lists", "demo@lists.example.org.db")
    with open(db, "wb") as fh:
        fh.write(b"this is not an SQLite database" * 100)
    out = run(site, "held", "list", "demo")
    assert out.returncode == 75, out.stderr.decode()
    assert b"Traceback" not in out.stderr
