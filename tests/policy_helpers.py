"""Helpers for the VERP, routing and policy-server tests: edit an instance's YAML, talk the protocol."""
from __future__ import annotations

import os
import secrets
import socket
import time

import pytest
import yaml

from listgate import config


def edit_site(site: config.Site, **changes) -> config.Site:
    """Rewrite top-level keys of the site file (sections replaced whole); returns the reloaded Site."""
    with open(site.path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    data.update(changes)
    _write_yaml(site.path, data)
    return config.load(site.path)


def add_key(site: config.Site, key_id: str) -> str:
    """Write a fresh hex key file for ``key_id`` beside the instance; returns its path."""
    path = os.path.join(site.state_dir, "keys", f"{key_id}.key")
    with open(path, "w", encoding="ascii") as fh:
        fh.write(secrets.token_hex(32) + "\n")
    os.chmod(path, 0o600)
    return path


def write_list(site: config.Site, name: str, domain: str = "lists.example.org", **keys) -> config.Site:
    """Add or replace list ``name`` (owners default to owner@DOMAIN); returns the reloaded Site."""
    data = {"name": name, "domain": domain, "owners": [f"owner@{domain}"], **keys}
    _write_yaml(os.path.join(site.lists_dir, f"{name}.yaml"), data)
    return config.load(site.path)


@pytest.fixture
def closed_site(site) -> config.Site:
    """Fixture: list demo is members_only with non_member_action reject and one member, member@example.com."""
    from listgate.store import open_store
    site = write_list(site, "demo", posting_policy="members_only", non_member_action="reject")
    open_store(site, f"demo@{site.get_list('demo').domain}").add_member("member@example.com")
    return site


def _write_yaml(path: str, data) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        yaml.safe_dump(data, fh, sort_keys=False)
    os.replace(tmp, path)


def rcpt_request(recipient: str, sender: str = "someone@example.net", client_address: str = "192.0.2.10",
                 protocol_state: str = "RCPT", **extra) -> bytes:
    """One Postfix policy delegation request (SMTPD_POLICY_README), blank-line terminated."""
    attrs = {"request": "smtpd_access_policy", "protocol_state": protocol_state, "protocol_name": "ESMTP",
             "client_address": client_address, "client_name": "client.example.net",
             "helo_name": "client.example.net", "sender": sender, "recipient": recipient,
             "recipient_count": "0", "queue_id": "", "instance": "123.456.7", "size": "0", **extra}
    return "".join(f"{k}={v}\n" for k, v in attrs.items()).encode() + b"\n"


def connect(address, timeout: float = 10.0) -> socket.socket:
    """A client socket to ``("inet", (host, port))`` or ``("unix", path)``."""
    kind, where = address
    if kind == "unix":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(where)
    return s


def read_replies(sock: socket.socket, count: int, timeout: float = 10.0) -> list[str]:
    """Read ``count`` replies (each ``attr=value`` lines + blank line); returns their ``action`` values."""
    buf = b""
    deadline = time.monotonic() + timeout
    while buf.count(b"\n\n") < count:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
    out = []
    for block in buf.split(b"\n\n")[:count]:
        if not block:
            continue
        attrs = dict(line.split("=", 1) for line in block.decode().split("\n") if line)
        out.append(attrs.get("action", ""))
    return out


def wait_closed(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Read until the peer closes; returns whatever came. Raises socket.timeout if it does not close."""
    sock.settimeout(timeout)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


class ServerThread:
    """A :class:`~listgate.policy.PolicyServer` on its own event loop in a thread (real sockets).

    ``with ServerThread(site, socket_spec) as srv: srv.address`` ... ; leaving
    the block closes every connection and joins the thread (bounded).
    """

    def __init__(self, site: config.Site, socket_spec: str | None = None, reload_interval: float = 0.0):
        import asyncio
        import threading

        from listgate.policy import PolicyServer

        self.watcher = config.Watcher(site.path, interval=reload_interval, site=site)
        self.server = PolicyServer(self.watcher.current, socket_spec)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> "ServerThread":
        import asyncio
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        except BaseException:
            self._stop_loop()
            raise
        return self

    @property
    def address(self):
        return self.server.address

    def connections(self) -> int:
        import asyncio

        async def count():
            return len(self.server.connections)
        return asyncio.run_coroutine_threadsafe(count(), self.loop).result(10)

    def __exit__(self, *exc) -> None:
        import asyncio
        try:
            asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
