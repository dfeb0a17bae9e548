"""Operations (issue 21): ``listgate status``/``--check``, ``reload``, ``stop``, stale restart-only
settings in ``check``, and the Prometheus endpoint, against a real ``listgate serve``."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
import urllib.request

import pytest
from conftest import free_port
from engine_helpers import dsn
from runner_helpers import LIST, Env, message, wait_until

from listgate import clock
from listgate.queue import Switchboard


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    e.metrics_port = free_port()
    with open(e.site.path, "a", encoding="utf-8") as fh:
        fh.write(f"metrics:\n  listen: 127.0.0.1:{e.metrics_port}\n")
    e.site = __import__("listgate.config", fromlist=["load"]).load(e.site.path)
    yield e
    e.close()


def _policy_port(env) -> int:
    return int(env.site.conf.policy.socket.split(":")[1].split("@")[0])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"request=smtpd_access_policy\nprotocol_state=RCPT\nrecipient=nobody@elsewhere.test\n\n")
            return s.recv(4096).startswith(b"action=")
    except OSError:
        return False


def _status(env, *args):
    out = env.cli("status", *args)
    return out, (json.loads(out.stdout) if "--json" in args else None)


def _serve(env):
    proc = env.spawn("serve")
    wait_until(lambda: _answers(_policy_port(env)), timeout=40)
    # every configured daemon wrote its record and listens
    wait_until(lambda: all(d["running"] and d["pid"] for d in _status(env, "--json")[1]["daemons"].values()),
               timeout=40)
    return proc


def _scrape(env) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{env.metrics_port}/metrics", timeout=10) as r:
        return r.read().decode()


def _value(text: str, name: str, **labels) -> float:
    """The sample ``name{labels}`` of a scrape (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name):
            m = re.match(r"([a-z_]+)(\{[^}]*\})? (\S+)$", line)
            if m and m.group(1) == name:
                got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
                if all(got.get(k) == v for k, v in labels.items()):
                    return float(m.group(3))
    return 0.0


def test_status_check_reload_stop_with_serve(env):
    proc = _serve(env)
    out, data = _status(env, "--json")
    assert out.returncode == 0, out.stdout
    assert set(data) == {"daemons", "slices", "queues", "stores", "lists_not_served", "incidents", "problems"}
    assert data["incidents"] == {}
    assert set(data["daemons"]) == {"serve", "milter", "policy", "runner", "metrics"}
    assert data["daemons"]["serve"]["pid"] == proc.pid
    assert data["daemons"]["policy"]["accepting"] is True and data["daemons"]["runner"]["accepting"] is None
    assert data["daemons"]["metrics"]["accepting"] is True
    assert data["queues"]["retry"] == {"waiting": 0, "in_progress": 0, "oldest": None, "oldest_age": None}
    assert data["stores"][LIST]["state"] in ("ok", "absent") and data["problems"] == []
    run = env.dir / "run"
    assert (run / "serve.pid").read_text() == f"{proc.pid}\n"
    children = json.loads((run / "serve.json").read_text())["children"]
    assert children["milter"] == data["daemons"]["milter"]["pid"]
    text = env.cli("status")
    assert re.search(rf"policy +up, pid {data['daemons']['policy']['pid']}", text.stdout), text.stdout
    assert data["daemons"]["milter"]["accepting"] is True     # it answered libmilter's option negotiation
    # a hung policy daemon (stopped): the kernel still accepts the connection, but it does not answer
    policy_pid = data["daemons"]["policy"]["pid"]
    os.kill(policy_pid, signal.SIGSTOP)
    try:
        out = env.cli("status", "--check")
        assert out.returncode == 2 and "policy not accepting" in out.stdout, out.stdout
    finally:
        os.kill(policy_pid, signal.SIGCONT)

    out = env.cli("status", "--check")
    assert out.returncode == 0 and out.stdout.startswith("LISTGATE OK - "), out.stdout
    assert "| " in out.stdout and "retry_age=0s;3600;86400;0" in out.stdout
    # a qfile in retry for an hour and a half, one in shunt: WARNING; with tighter limits CRITICAL
    env.queue("retry").enqueue(b"Subject: x\r\n\r\nx\r\n", {"list": LIST, "retry_at": clock.now() + 3600},
                               arrival=clock.now() - 5400)
    env.queue("shunt").enqueue(b"Subject: y\r\n\r\ny\r\n", {"list": LIST})
    out = env.cli("status", "--check")
    assert out.returncode == 1 and out.stdout.startswith("LISTGATE WARNING - retry age 1.5h; shunt 1"), out.stdout
    out = env.cli("status", "--check", "--retry-age", "10m,1h")
    assert out.returncode == 2 and out.stdout.startswith("LISTGATE CRITICAL"), out.stdout
    assert env.cli("status", "--check", "--bad", "x").returncode == 3
    # site incidents: one domain's is WARNING, scope all (every recipient paused) CRITICAL
    from listgate.app import site_incidents
    loose = ("--retry-age", "1d,2d", "--shunt", "5,10")
    for scope, code, what in (("broken.test", 1, "WARNING - site incident on demo@lists.example.org: recipients at "
                                                  "broken.test paused"),
                              ("*", 2, "CRITICAL - site incident on demo@lists.example.org: all recipients paused")):
        site_incidents.open_incident(env.site, env.lc, env.store, scope, "our MTA refused: 554 5.3.0 broken", [],
                                     None, send=lambda *notice: None)
        out = env.cli("status", "--check", *loose)
        assert out.returncode == code and what in out.stdout, out.stdout
    assert env.cli("bounces", "clear-incident", LIST).returncode == 0
    assert env.cli("status", "--check", *loose).returncode == 0

    # a restart-only setting changed on disk: check says which daemon runs the old value
    assert env.cli("check").returncode == 0
    old, new = _policy_port(env), free_port()
    path = env.site.path
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text.replace(f"inet:{old}@127.0.0.1", f"inet:{new}@127.0.0.1"))
    out = env.cli("check")
    assert out.returncode == 1, out.stderr
    assert re.search(rf"policy \(pid \d+\): policy.socket is 'inet:{new}@127.0.0.1' in the config, the daemon "
                     rf"uses 'inet:{old}@127.0.0.1': run listgate reload", out.stderr), out.stderr
    assert "milter (pid" not in out.stderr
    milter_pid = data["daemons"]["milter"]["pid"]
    out = env.cli("reload")
    assert out.returncode == 0 and out.stdout.strip() == f"reloaded serve (pid {proc.pid}): restarted policy", out
    assert _answers(new) and not _answers(old)
    assert env.cli("check").returncode == 0
    out = env.cli("reload")        # nothing changed since: nothing restarted
    assert out.returncode == 0 and "nothing to do" in out.stdout, out.stdout
    with open(path, "a", encoding="utf-8") as fh:     # a site file with errors: refused, nothing stops
        fh.write("no_such_key: 1\n")
    out = env.cli("reload")        # the command reads the site file first: nothing is signalled
    assert out.returncode == 1 and "no_such_key" in out.stderr, out
    proc.send_signal(signal.SIGHUP)   # serve itself refuses it too
    wait_until(lambda: json.loads((env.dir / "run" / "serve.json").read_text())["reload_result"].startswith(
        "refused: the site file has errors"), timeout=20)
    assert _answers(new) and proc.poll() is None
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text.replace(f"inet:{old}@127.0.0.1", f"inet:{new}@127.0.0.1"))
    assert proc.poll() is None
    _, data = _status(env, "--json")
    assert data["daemons"]["milter"]["pid"] == milter_pid

    pids = [d["pid"] for d in data["daemons"].values()]
    out = env.cli("stop")
    assert out.returncode == 0 and f"stopped serve (pid {proc.pid})" in out.stdout, out.stdout
    assert proc.wait(10) == 0
    assert not any(os.path.exists(f"/proc/{pid}/stat") and open(f"/proc/{pid}/stat").read().split()[2] != "Z"
                   for pid in pids)
    assert sorted(os.listdir(run)) == ["metrics"]                  # every record removed
    out, data = _status(env, "--json")
    assert out.returncode == 1 and "milter not running" in data["problems"] and "serve" not in data["daemons"]
    out = env.cli("status", "--check")
    assert out.returncode == 2 and out.stdout.startswith("LISTGATE CRITICAL - milter not running"), out.stdout
    assert env.cli("stop").returncode == 0
    assert env.cli("reload").returncode == 7


def test_status_check_unknown_without_a_site(tmp_path):
    e = Env(tmp_path)
    try:
        out = e.cli("-c", str(tmp_path / "nothing.yaml"), "status", "--check")
        assert out.returncode == 3 and out.stdout.startswith("LISTGATE UNKNOWN"), out
    finally:
        e.close()


def test_a_stale_record_is_not_a_running_daemon(env):
    """A record left by a SIGKILLed daemon (or one whose pid now runs another program) is not
    signalled by stop/reload and not reported as running."""
    run = env.dir / "run"
    run.mkdir()
    (run / "serve.json").write_text(json.dumps({"daemon": "serve", "pid": os.getpid() + 10**6 - 1, "settings": {}}))
    (run / "milter.json").write_text(json.dumps({"daemon": "milter", "pid": 1, "settings": {}}))  # init, not ours
    assert env.cli("reload").returncode == 7
    out, data = _status(env, "--json")
    assert data["daemons"]["milter"]["running"] is False and "serve" not in data["daemons"]


def test_metrics_count_posts_deliveries_and_bounces(env):
    pytest.importorskip("prometheus_client")
    env.sink.set_behaviour("gone@two.test", "550 5.1.1 no such user")
    env.members("a@one.test", "gone@two.test")
    proc = _serve(env)
    before = _scrape(env)
    assert _value(before, "listgate_posts_accepted_total") == 0
    assert "listgate_queue_depth" in before and "listgate_policy_decision_seconds_bucket" in before
    assert "listgate_milter_eom_seconds_bucket" in before
    env.inject(message("stranger@else.test", "held"), sender="stranger@else.test")   # a non-member: held
    env.inject(message("a@one.test", "counted"), sender="a@one.test")
    env.sink.wait_for_message("a@one.test", timeout=30)
    env.inject(dsn("a@one.test"), role="bounces", sender="")
    wait_until(lambda: _value(_scrape(env), "listgate_bounces_total", bounce_class="hard", source="mail") == 1,
               timeout=30)
    after = wait_until(lambda: (lambda t: t if _value(t, "listgate_bounces_total", source="handover") else None)(
        _scrape(env)), timeout=30)
    assert _value(after, "listgate_posts_accepted_total") == 1
    assert _value(after, "listgate_deliveries_total", reply="2xx") >= 1
    assert _value(after, "listgate_deliveries_total", reply="5xx") == 1
    assert _value(after, "listgate_bounces_total", bounce_class="hard", source="handover") == 1
    assert _value(after, "listgate_holds_total") == 1
    assert _value(after, "listgate_queue_depth", queue="in") == 0
    # the policy server's histogram moved with a request
    _answers(_policy_port(env))
    assert _value(_scrape(env), "listgate_policy_decision_seconds_count") >= 1
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(40) == 0


def test_metrics_listen_is_checked_and_off_by_default(tmp_path):
    e = Env(tmp_path)
    try:
        out = e.cli("metrics")
        assert out.returncode == 1 and "metrics are off" in out.stderr, out
        with open(e.site.path, "a", encoding="utf-8") as fh:
            fh.write("metrics:\n  listen: 9310\n")
        out = e.cli("check")
        assert out.returncode == 1 and "metrics.listen" in out.stderr and "HOST:PORT" in out.stderr, out
    finally:
        e.close()
