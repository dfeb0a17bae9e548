"""A real PostgreSQL server for the tests: Debian's ``postgresql`` binaries, run by the test.

:class:`PostgresServer` runs ``initdb`` into a fresh directory under /tmp
(owned by an unprivileged user: PostgreSQL refuses to run as root), listens
on a unix socket in that directory only (no TCP port), with password
(SCRAM) authentication, and is stopped and removed at the end. Each test gets
a database of its own owned by a non-superuser role (:meth:`new_database`).
"""
from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import urllib.parse

import psycopg

ROLE = "listgate"                   # what listgate connects as: owns the test databases, no superuser


def binaries() -> str | None:
    """The newest ``/usr/lib/postgresql/N/bin`` with initdb and pg_ctl, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    return os.path.dirname(found[-1]) if found else None


def _run_as() -> str:
    """The unprivileged user the server runs as: ``postgres`` (made by the package), else ``nobody``."""
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("no unprivileged user (postgres or nobody) to run PostgreSQL as")


class PostgresServer:
    """A private PostgreSQL cluster on a unix socket; :meth:`start`, :meth:`stop`, :meth:`destroy`."""

    def __init__(self, bindir: str):
        self.bindir = bindir
        self.user = _run_as() if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        self.dir = tempfile.mkdtemp(prefix="lgpg-")     # short: a socket path is at most 107 bytes
        self.data = os.path.join(self.dir, "data")
        self.superpass = secrets.token_hex(16)
        self.password = secrets.token_hex(16)
        self.password_file = os.path.join(self.dir, "listgate.pw")
        self._count = 0
        self._role_made = False
        entry = pwd.getpwnam(self.user)
        os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        os.chmod(self.dir, 0o755)                       # root-run listgate processes reach the socket
        pwfile = os.path.join(self.dir, "super.pw")
        with open(pwfile, "w") as fh:
            fh.write(self.superpass + "\n")
        os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        self._pg("initdb", "-D", self.data, "-U", "postgres", "--pwfile", pwfile, "--auth", "scram-sha-256",
                 "-E", "UTF8", "--locale", "C.UTF-8", "--no-sync")
        with open(self.password_file, "w") as fh:
            fh.write(self.password + "\n")
        os.chmod(self.password_file, 0o600)

    def _pg(self, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([os.path.join(self.bindir, program), *args], user=self.user, cwd=self.dir,
                              capture_output=True, text=True, timeout=120, check=check)

    def start(self) -> None:
        # listen_addresses='': no TCP at all; fsync off: a test cluster need not survive power loss
        opts = f"-c listen_addresses='' -k {self.dir} -c fsync=off -c max_connections=200"
        self._pg("pg_ctl", "-D", self.data, "-o", opts, "-l", os.path.join(self.dir, "log"), "-w", "-t", "60",
                 "start")
        if not self._role_made:
            with self.superuser() as conn:
                conn.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{self.password}'")
            self._role_made = True

    def stop(self) -> None:
        """Stop now (``-m immediate``: every connection is cut, as when the server crashes)."""
        self._pg("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop", check=False)

    def destroy(self) -> None:
        self._pg("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.dir, ignore_errors=True)

    def superuser(self, dbname: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(host=self.dir, dbname=dbname, user="postgres", password=self.superpass,
                               autocommit=True)

    def url(self, dbname: str, user: str = ROLE) -> str:
        """``postgresql://USER@%2F...%2Flgpg-XXX/DB`` (the socket directory as the host)."""
        return f"postgresql://{user}@{urllib.parse.quote(self.dir, safe='')}/{dbname}"

    def new_database(self) -> str:
        """A fresh empty database owned by :data:`ROLE`; its name."""
        self._count += 1
        name = f"lg{self._count}"
        with self.superuser() as conn:
            conn.execute(f"CREATE DATABASE {name} OWNER {ROLE}")
        return name


def use_postgres(site_path: str, server: PostgresServer, **store) -> str:
    """Point the instance at ``site_path`` at a fresh database on ``server`` (schema made); its URL."""
    from listgate import config
    from listgate.store import init_schema
    url = server.url(server.new_database())
    settings = {"url": url, "password_file": server.password_file, "pool": "{min: 0, max: 4}",
                "connect_timeout": "3s", "statement_timeout": "5s", "busy_timeout": "5s", **store}
    with open(site_path, "a", encoding="utf-8") as fh:
        fh.write("store:\n" + "".join(f"  {k}: {v}\n" for k, v in settings.items()))
    init_schema(config.load(site_path).conf.store)
    return url
