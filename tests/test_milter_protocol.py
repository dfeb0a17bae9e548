"""The milter daemon over a real socket, driven by a milter client (``miltertest``).

``listgate milter`` runs as a child process (libmilter threads, real socket,
real signals); the client plays the MTA's side of the milter protocol.
"""
from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from miltertest import constants as mc

from listgate.queue import Switchboard

from conftest import free_port, make_site
from milter_helpers import REPO, Client, Daemon, short_dir, untraced

LIST = "demo@lists.example.org"
POST = (b"From: Alice <alice@example.net>\r\nSubject: protocol test\r\nMessage-ID: <p1@example.net>\r\n"
        b"X-Folded: one\r\n two\r\n\r\nhello over a socket\r\n")


@pytest.fixture
def sockdir():
    d = short_dir()
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def unix_site(tmp_path, sockdir):
    return make_site(tmp_path / "inst", milter_socket=f"unix:{sockdir}/milter.sock")


@pytest.fixture
def daemon(unix_site, sockdir, tmp_path):
    with Daemon(unix_site.path, str(sockdir / "milter.sock"), tmp_path / "milter.log") as d:
        yield d


def queued(site):
    sb = Switchboard.for_site(site, "in")
    return [sb.peek(q) for q in sb.ids()]


def run_milter(site_path: str) -> subprocess.CompletedProcess:
    """A milter that is expected to refuse to start (bounded wait)."""
    return subprocess.run([sys.executable, "-m", "listgate", "-c", site_path, "milter"], cwd=str(REPO),
                          capture_output=True, text=True, timeout=30)


def codes(replies) -> list[str]:
    return [r[0] for r in replies]


def test_negotiation_over_the_wire(daemon):
    c = Client(daemon.connect())
    assert c.actions == mc.SMFIF_DELRCPT
    for bit in (mc.SMFIP_NR_HELO, mc.SMFIP_NOEOH, mc.SMFIP_NR_CONN, mc.SMFIP_NR_MAIL, mc.SMFIP_NR_HDR,
                mc.SMFIP_NR_BODY, mc.SMFIP_HDR_LEADSPC):
        assert c.protocol & bit, hex(bit)
    for bit in (mc.SMFIP_NORCPT, mc.SMFIP_NR_RCPT, mc.SMFIP_NODATA, mc.SMFIP_NR_DATA, mc.SMFIP_NOBODY,
                mc.SMFIP_NOHELO):
        assert not c.protocol & bit, hex(bit)
    c.quit()


def test_socket_mode_and_owner(daemon, unix_site):
    st = os.stat(daemon.connect_to)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == int(unix_site.conf.milter.socket_mode, 8) == 0o660


def test_transactions_on_one_connection(daemon, unix_site):
    c = Client(daemon.connect())
    c.connect(ip="192.0.2.10")
    # 1: no list recipient: accepted at DATA, headers and body never asked for
    c.mail("alice@example.net")
    assert c.rcpt("bob@example.com")[0] == mc.SMFIR_CONTINUE
    assert c.data()[0] == mc.SMFIR_ACCEPT
    # 2: unknown list address: refused with routing's code
    c.mail("alice@example.net")
    reply = c.rcpt("nosuch@lists.example.org")
    assert reply[0] == mc.SMFIR_REPLYCODE and reply[1]["smtpcode"] == "550"
    assert reply[1]["text"].startswith("5.1.1 ")
    c.abort()
    # 3: a list post and another recipient: stored, list recipient removed, accepted
    c.mail("alice@example.net")
    assert c.rcpt(LIST)[0] == mc.SMFIR_CONTINUE
    assert c.rcpt("bob@example.com")[0] == mc.SMFIR_CONTINUE
    assert c.data()[0] == mc.SMFIR_CONTINUE
    eom = c.message(POST, qid="4ABCDEF01")
    assert codes(eom) == [mc.SMFIR_DELRCPT, mc.SMFIR_ACCEPT]
    assert eom[0][1]["rcpt"] == f"<{LIST}>"
    [qf] = queued(unix_site)
    assert untraced(qf.msg) == POST.replace(b"one\r\n two", b"one\r\n two")
    assert qf.meta["mta_queue_id"] == "4ABCDEF01" and qf.meta["client_address"] == "192.0.2.10"
    # 4: only list recipients: discarded after storing (a new Message-ID)
    c.mail("alice@example.net")
    c.rcpt("demo-owner@lists.example.org")
    c.data()
    eom = c.message(POST.replace(b"<p1@", b"<p2@"), qid="4ABCDEF02")
    assert codes(eom) == [mc.SMFIR_DISCARD]
    assert [q.meta["role"] for q in queued(unix_site)] == ["post", "owner"]
    # 5: the retried transaction of 3 is accepted and stored again (the runner drops it)
    c.mail("alice@example.net")
    c.rcpt(LIST)
    c.rcpt("bob@example.com")
    c.data()
    assert codes(c.message(POST)) == [mc.SMFIR_DELRCPT, mc.SMFIR_ACCEPT]
    assert [q.meta["role"] for q in queued(unix_site)] == ["post", "owner", "post"]
    c.quit()


def test_queue_failure_tempfails_over_the_wire(daemon, unix_site):
    qin = Path(unix_site.queue_dir) / "in"
    shutil.rmtree(qin)
    qin.write_text("not a directory")       # enqueue cannot write: QueueError
    c = Client(daemon.connect())
    c.connect()
    c.mail("alice@example.net")
    c.rcpt(LIST)
    c.data()
    eom = c.message(POST)
    assert eom[-1][0] == mc.SMFIR_REPLYCODE
    assert eom[-1][1]["smtpcode"] == "451" and eom[-1][1]["text"].startswith("4.3.0 ")
    assert mc.SMFIR_DELRCPT not in codes(eom)
    c.quit()


def test_config_reload_while_running(daemon, unix_site):
    lists_dir = Path(unix_site.lists_dir)
    text = (lists_dir / "demo.yaml").read_text().replace("name: demo", "name: fresh")
    (lists_dir / "fresh.yaml").write_text(text)
    # the watcher looks at most once a second: a new transaction after that sees the list
    import time
    deadline = time.monotonic() + 10
    while True:
        c = Client(daemon.connect())
        c.connect()
        c.mail("alice@example.net")
        reply = c.rcpt("fresh-owner@lists.example.org")
        c.quit()
        if reply[0] == mc.SMFIR_CONTINUE:
            break
        assert time.monotonic() < deadline, "reload not seen within 10 s"
        time.sleep(0.2)
    assert daemon.proc.poll() is None


def test_stale_socket_is_replaced(unix_site, sockdir, tmp_path):
    path = sockdir / "milter.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()                               # a socket file nobody listens on
    with Daemon(unix_site.path, str(path), tmp_path / "m.log") as d:
        Client(d.connect()).quit()
        assert "removed stale socket" in d.log()
        # a second daemon must not steal the live socket
        second = run_milter(unix_site.path)
        assert second.returncode == 1 and "another milter is listening" in second.stderr
        Client(d.connect()).quit()


def test_non_socket_file_is_left_alone(unix_site, sockdir, tmp_path):
    path = sockdir / "milter.sock"
    path.write_text("precious")
    p = run_milter(unix_site.path)
    assert p.returncode == 1 and "not a socket" in p.stderr
    assert path.read_text() == "precious"


def test_inet_socket_and_sigterm(tmp_path):
    port = free_port()
    site = make_site(tmp_path / "inst", milter_socket=f"inet:{port}@127.0.0.1")
    d = Daemon(site.path, ("127.0.0.1", port), tmp_path / "m.log").start()
    try:
        c = Client(d.connect())
        c.connect()
        c.mail("alice@example.net")
        assert c.rcpt("bob@example.com")[0] == mc.SMFIR_CONTINUE
        assert c.data()[0] == mc.SMFIR_ACCEPT
        c.quit()
    finally:
        assert d.stop(graceful=True) == 0


def test_systemd_readiness_after_the_socket_is_bound(unix_site, sockdir, tmp_path):
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(sockdir / "notify"))
    notify.settimeout(20)
    try:
        d = Daemon(unix_site.path, str(sockdir / "milter.sock"), tmp_path / "m.log",
                   env={"NOTIFY_SOCKET": str(sockdir / "notify")})
        d.start()
        try:
            ready = notify.recv(4096).decode()
            assert "READY=1" in ready.split("\n")
            assert f"MAINPID={d.proc.pid}" in ready
            # READY was sent after bind: the socket answers
            Client(d.connect()).quit()
        finally:
            d.stop(graceful=True)
        assert "STOPPING=1" in notify.recv(4096).decode()
        assert not (sockdir / "milter.sock").exists()     # a clean stop removes its socket
    finally:
        notify.close()
