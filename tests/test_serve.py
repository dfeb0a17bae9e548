"""``listgate serve`` and signals: SIGHUP stops nothing, children do not outlive a killed serve."""
from __future__ import annotations

import os
import re
import signal
import socket
import time

import pytest
from runner_helpers import Env, message, wait_until

from test_runner import _children, _state


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    e.children = []
    yield e
    e.close()
    for pid in e.children:  # orphans of a failed run (without the fix): stop what we started
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    return _state(pid) not in ("gone", "Z")


def _policy_answers(env) -> None:
    port = int(env.site.conf.policy.socket.split(":")[1].split("@")[0])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"request=smtpd_access_policy\nprotocol_state=RCPT\nrecipient=nobody@elsewhere.test\n\n")
        assert s.recv(4096).startswith(b"action=")


def _serve(env):
    proc = env.spawn("serve")
    pids = wait_until(lambda: _children(proc.pid) if len(_children(proc.pid)) >= 3 else None, timeout=30)
    env.children.extend(pids)
    end = time.monotonic() + 30
    while True:
        try:
            _policy_answers(env)
            return proc, pids
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.1)


def test_sighup_leaves_serve_and_its_children_running(env):
    proc, pids = _serve(env)
    proc.send_signal(signal.SIGHUP)
    time.sleep(1.5)
    assert proc.poll() is None
    assert _children(proc.pid) == pids and all(_alive(p) for p in pids)
    _policy_answers(env)
    env.members("a@one.test")
    env.inject(message("a@one.test", "after a hangup"), sender="a@one.test")
    env.sink.wait_for_message("a@one.test", timeout=30)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(40) == 0
    assert re.search(r'event=sighup msg="nothing to do', proc.stderr.read())


def test_children_die_with_a_killed_serve(env):
    proc, pids = _serve(env)
    proc.kill()
    proc.wait(10)
    end = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < end:
        time.sleep(0.1)
    assert [p for p in pids if _alive(p)] == []
