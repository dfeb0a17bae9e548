"""Fixtures shared by every test module.

* every test starts with the real clock and ends with it reset, and with
  no list store or ``in`` queue left open by an earlier test;
* ``site`` makes a fresh self-contained instance (``listgate init``) in the
  test's tmp dir, with free loopback ports, and returns the loaded Site;
* ``free_port()`` finds an unused loopback TCP port;
* ``cli`` runs the ``listgate`` command in-process against ``site``.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from listgate import clock, config, inject, instance
from listgate.store import close_all

from dns_helpers import TEST_DNS
from wheel_helpers import installed_wheel  # noqa: F401  (session fixture: the built wheel in a fresh venv)

SHARED = Path(__file__).resolve().parents[2] / "shared"
CORPUS = SHARED / "corpus" / "bounces"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def _real_clock(monkeypatch):
    monkeypatch.delenv(clock.ENV_VAR, raising=False)
    monkeypatch.delenv(config.ENV_VAR, raising=False)
    clock.reset()
    yield
    clock.reset()


@pytest.fixture(autouse=True)
def _forget_open_stores():
    """pytest deletes a passed test's tmp dir and may give its path to the next
    test: stores and queues this process keeps open by path must not outlive
    the test (they would point at the deleted files)."""
    yield
    close_all()
    inject.forget_in_queues()


def make_site(directory: Path, **kw) -> config.Site:
    """``listgate init`` into ``directory`` with free ports; returns the loaded Site."""
    kw.setdefault("policy_socket", f"inet:{free_port()}@127.0.0.1")
    kw.setdefault("reinject_port", free_port())
    path = instance.init(str(directory), **kw)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(TEST_DNS)
    return config.load(path)


@pytest.fixture(scope="session")
def pg_server():
    """A private PostgreSQL server for the whole session (tests/pg_helpers.py), stopped at the end."""
    from pg_helpers import PostgresServer, binaries
    bindir = binaries()
    if bindir is None:
        pytest.skip("PostgreSQL binaries missing in /usr/lib/postgresql/*/bin (scripts/install-deps installs them)")
    server = PostgresServer(bindir)
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture
def site(request, tmp_path) -> config.Site:
    """The instance; parametrized indirectly with "postgres", its store is a fresh PostgreSQL database."""
    made = make_site(tmp_path / "instance")
    if getattr(request, "param", "sqlite") == "postgres":
        from pg_helpers import use_postgres
        use_postgres(made.path, request.getfixturevalue("pg_server"))
        made = config.load(made.path)
    return made


@pytest.fixture
def cli(site, capsys):
    """run(*argv) -> (exit status, stdout, stderr): the CLI in this process, ``-c`` naming the test's instance."""
    from listgate.cli import main

    def run(*argv: str) -> tuple[int, str, str]:
        try:
            status = main(["-c", site.path, *argv])
        except SystemExit as exc:
            status = exc.code
        out, err = capsys.readouterr()
        return status, out, err
    yield run
    close_all()


# a store contract test runs on both backends
BOTH_BACKENDS = pytest.mark.parametrize("site", ["sqlite", "postgres"], indirect=True)


@pytest.fixture
def corpus() -> Path:
    if not (CORPUS / "EXPECTED.tsv").exists():
        pytest.skip("bounce corpus ../shared/corpus/bounces not present")
    return CORPUS
