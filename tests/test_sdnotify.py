"""sd_notify over a real unix datagram socket, as systemd listens for it."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile

import pytest

from listgate import sdnotify


@pytest.fixture
def notify_socket(monkeypatch):
    # AF_UNIX paths are limited to 108 bytes: keep it short, not under tmp_path
    directory = tempfile.mkdtemp(prefix="lg-sd-")
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    monkeypatch.setenv(sdnotify.ENV_VAR, path)
    yield sock
    sock.close()
    os.unlink(path)
    os.rmdir(directory)


def test_no_socket_is_a_no_op(monkeypatch):
    monkeypatch.delenv(sdnotify.ENV_VAR, raising=False)
    assert sdnotify.notify("READY=1") is False
    assert sdnotify.ready() is False


def test_ready_sends_one_datagram(notify_socket):
    assert sdnotify.ready("listening on inet:10040@127.0.0.1") is True
    data = notify_socket.recv(4096).decode()
    assert data.split("\n") == ["READY=1", f"MAINPID={os.getpid()}",
                                "STATUS=listening on inet:10040@127.0.0.1"]


def test_status_and_stopping(notify_socket):
    assert sdnotify.status("2 lists\nloaded")
    assert notify_socket.recv(4096) == b"STATUS=2 lists loaded"
    assert sdnotify.stopping()
    assert notify_socket.recv(4096) == b"STOPPING=1"


def test_abstract_namespace(monkeypatch):
    name = f"listgate-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv(sdnotify.ENV_VAR, "@" + name)
        assert sdnotify.notify("READY=1")
        assert sock.recv(100) == b"READY=1"


def test_from_a_child_process(notify_socket):
    """What systemd sees from a daemon it started: the variable is inherited."""
    code = "import sys; from listgate import sdnotify; sys.exit(0 if sdnotify.ready() else 1)"
    proc = subprocess.run([sys.executable, "-c", code], timeout=30)
    assert proc.returncode == 0
    assert notify_socket.recv(4096).startswith(b"READY=1\nMAINPID=")


def test_broken_socket_does_not_raise(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv(sdnotify.ENV_VAR, str(tmp_path / "missing"))
    assert sdnotify.notify("READY=1") is False
    assert "sd_notify" in caplog.text
    monkeypatch.setenv(sdnotify.ENV_VAR, "vsock:2:1234")
    assert sdnotify.notify("READY=1") is False
