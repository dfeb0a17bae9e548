"""`listgate init DIR`: a self-contained instance (the embedded default).

DIR gets ``listgate.yaml``, ``lists.d/NAME.yaml``, ``keys/KEYID.key`` (mode
0600), ``lists/`` (per-list stores) and ``queue/``. Nothing outside DIR is
touched, so README's demo and the tests can run anywhere.
"""
from __future__ import annotations

import os
import secrets
from importlib import resources

from .queue import QUEUES


def _template(name: str) -> str:
    return resources.files("listgate.templates").joinpath(name).read_text(encoding="utf-8")


def write_key(path: str) -> None:
    """Write a fresh 256-bit VERP signing key (hex) with mode 0600; never overwrite."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(secrets.token_hex(32) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def init(directory: str, *, name: str = "demo", domain: str = "lists.example.org",
         owner: str | None = None, hostname: str = "localhost",
         milter_socket: str = "unix:milter.sock", policy_socket: str = "inet:10040@127.0.0.1",
         reinject_port: int = 10026) -> str:
    """Create an instance under ``directory``; returns the site file's path.

    Raises FileExistsError if ``directory`` already holds a site file.
    """
    directory = os.path.abspath(directory)
    site_path = os.path.join(directory, "listgate.yaml")
    if os.path.exists(site_path):
        raise FileExistsError(f"{site_path} already exists")
    # read the templates before making anything: a broken install leaves no half-made instance
    list_text = _template("list.yaml").format(name=name, domain=domain, owner=owner or f"owner@{domain}")
    key_id = "k" + secrets.token_hex(2)
    site_text = _template("site.yaml").format(hostname=hostname, milter_socket=milter_socket,
                                              policy_socket=policy_socket, reinject_port=reinject_port,
                                              key_id=key_id)
    os.makedirs(os.path.join(directory, "lists.d"), exist_ok=True)
    os.makedirs(os.path.join(directory, "lists"), exist_ok=True)
    for q in QUEUES:
        os.makedirs(os.path.join(directory, "queue", q), exist_ok=True)
    write_key(os.path.join(directory, "keys", f"{key_id}.key"))
    with open(os.path.join(directory, "lists.d", f"{name}.yaml"), "w", encoding="utf-8") as fh:
        fh.write(list_text)
    with open(site_path, "w", encoding="utf-8") as fh:
        fh.write(site_text)
    return site_path
