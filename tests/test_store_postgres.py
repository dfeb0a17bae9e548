"""The PostgreSQL store on a real server: schema, isolation, exactly-once across processes,
faults (server down, slow, locked), credentials, and ``listgate store copy``."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from listgate import clock, config
from listgate.store import BounceEvent, StoreUnavailable, UnknownToken, close_all, open_store
from listgate.store.postgres_schema import SCHEMA_VERSION

from conftest import make_site
from pg_helpers import use_postgres
from store_helpers import add_second_list

LIST, OTHER = "demo@lists.example.org", "other@lists.example.org"
T0 = 1_800_000_000.0


@pytest.fixture
def pg_site(pg_server, tmp_path):
    site = make_site(tmp_path / "instance")
    add_second_list(site.path, "5s")            # also store.busy_timeout: 5s
    text = Path(site.path).read_text().replace("store:\n  busy_timeout: 5s\n", "")
    Path(site.path).write_text(text)
    use_postgres(site.path, pg_server, busy_timeout="2s")
    clock.freeze(T0)
    yield config.load(site.path)
    close_all()


def _cli(site, *args, check=True):
    out = subprocess.run([sys.executable, "-m", "listgate.cli", "-c", site.path, *args],
                         capture_output=True, text=True, timeout=120)
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def test_store_init_is_idempotent_and_the_daemons_refuse_another_schema(pg_site, pg_server):
    assert "schema up to date" in _cli(pg_site, "store", "init").stdout
    url = pg_site.conf.store.url
    dbname = url.rsplit("/", 1)[1]
    with pg_server.superuser(dbname) as conn:
        assert conn.execute("SELECT max(version) FROM listgate_schema").fetchone()[0] == SCHEMA_VERSION
        conn.execute("INSERT INTO listgate_schema (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreUnavailable, match="newer"):
        open_store(pg_site, LIST).members()
    empty = pg_server.new_database()
    site = config.load(pg_site.path)
    Path(site.path).write_text(Path(site.path).read_text().replace(f"/{dbname}\n", f"/{empty}\n"))
    close_all()
    with pytest.raises(StoreUnavailable, match="listgate store init"):
        open_store(config.load(site.path), LIST).members()
    assert f"schema migrated to version {SCHEMA_VERSION}" in _cli(site, "store", "init").stdout
    close_all()
    assert open_store(config.load(site.path), LIST).members() == []


def test_lists_are_isolated_by_rows_and_tokens_are_unique_site_wide(pg_site):
    demo, other = open_store(pg_site, LIST), open_store(pg_site, OTHER)
    demo.add_member("a@example.com")
    other.add_member("a@example.com")           # the same address on another list: another member
    other.remove_member("a@example.com")
    assert demo.has_member("a@example.com") and not other.has_member("a@example.com")
    probe = demo.add_pending("probe", {"member": "a@example.com"}, 60)
    assert other.peek_pending(probe.token) is None
    with pytest.raises(UnknownToken):
        other.confirm_pending(probe.token)      # another list's token: unknown there, not spent
    assert demo.confirm_pending(probe.token).token == probe.token
    assert demo.remember("accepted", "k", 60) and other.remember("accepted", "k", 60)
    assert demo.try_lock("tasks", 60, "host1") and other.try_lock("tasks", 60, "host2")


def test_a_write_lock_held_elsewhere_is_unavailable_after_busy_timeout_and_blocks_no_other_list(pg_site):
    demo, other = open_store(pg_site, LIST), open_store(pg_site, OTHER)
    inside, finish = threading.Event(), threading.Event()

    def holder():
        with demo.transaction():
            demo.add_member("holder@example.com")
            inside.set()
            finish.wait(30)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert inside.wait(30)
        start = time.monotonic()
        other.add_member("free@example.com")    # another list: no wait
        assert time.monotonic() - start < 1.5
        start = time.monotonic()
        with pytest.raises(StoreUnavailable, match="lock timeout"):
            demo.add_member("waiter@example.com")
        assert 1.5 < time.monotonic() - start < 6           # busy_timeout: 2s
        assert demo.get_member("holder@example.com") is None  # reads never wait for the writer
    finally:
        finish.set()
        thread.join(30)
    demo.add_member("waiter@example.com")
    assert [m.key for m in demo.members()] == ["holder@example.com", "waiter@example.com"]


def test_a_slow_statement_is_cut_at_statement_timeout(pg_site):
    store = open_store(pg_site, LIST)
    start = time.monotonic()
    with pytest.raises(StoreUnavailable, match="statement timeout"):
        store._query("SELECT pg_sleep(30)")
    assert time.monotonic() - start < 10                    # statement_timeout: 5s
    assert store.members() == []


def _race(site_path: str, what: str, arg: str, n: int) -> list[str]:
    """``n`` processes, each with its own pool, do ``what`` at once; their answers."""
    code = ("import sys, time\nfrom listgate import config\nfrom listgate.store import UnknownToken, open_store\n"
            "store = open_store(config.load(sys.argv[1]), 'demo@lists.example.org')\nstore.members()\n"
            "while time.time() < float(sys.argv[4]): time.sleep(0.001)\n"
            "what, arg = sys.argv[2], sys.argv[3]\n"
            "if what == 'confirm':\n"
            "    try:\n        store.confirm_pending(arg); print('won')\n"
            "    except UnknownToken:\n        print('unknown')\n"
            "elif what == 'remember':\n    print(store.remember('accepted', arg, 3600))\n"
            "else:\n    print(store.try_lock(arg, 3600, holder=str(__import__('os').getpid())))\n")
    go = str(time.time() + 3)
    procs = [subprocess.Popen([sys.executable, "-c", code, site_path, what, arg, go], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(n)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    return sorted(out.strip() for out, _ in outs)


def test_exactly_once_across_processes_by_the_database(pg_site):
    store = open_store(pg_site, LIST)
    token = store.add_pending("probe", {"member": "a@example.com"}, 3600).token
    assert _race(pg_site.path, "confirm", token, 6) == ["unknown"] * 5 + ["won"]
    assert _race(pg_site.path, "remember", "<post@x>", 6) == ["False"] * 5 + ["True"]
    assert _race(pg_site.path, "lock", "tasks", 6) == ["False"] * 5 + ["True"]


def test_server_down_is_unavailable_within_the_timeouts_and_recovers_without_restart(pg_site, pg_server):
    store = open_store(pg_site, LIST)
    store.add_member("a@example.com")
    pg_server.stop()
    try:
        for call in (lambda: store.has_member("a@example.com"), lambda: store.add_member("b@example.com"),
                     lambda: store.remember("accepted", "k", 60)):
            start = time.monotonic()
            with pytest.raises(StoreUnavailable):
                call()
            assert time.monotonic() - start < 8             # connect_timeout: 3s
    finally:
        pg_server.start()
    assert store.has_member("a@example.com")                # the same store object, the same process
    store.add_member("b@example.com")
    assert [m.key for m in store.members()] == ["a@example.com", "b@example.com"]


def test_a_wrong_password_is_unavailable_and_never_shown(pg_site, pg_server, tmp_path):
    Path(pg_server.password_file).write_text("not-the-password\n")
    try:
        close_all()
        with pytest.raises(StoreUnavailable) as caught:
            open_store(config.load(pg_site.path), LIST).members()
        assert pg_server.password not in str(caught.value) and "not-the-password" not in str(caught.value)
    finally:
        Path(pg_server.password_file).write_text(pg_server.password + "\n")
    close_all()
    # read at each connect: the right password works again without a restart
    assert open_store(config.load(pg_site.path), LIST).members() == []
    out = _cli(pg_site, "check")
    assert pg_server.password not in out.stdout + out.stderr and "store: PostgreSQL postgresql://" in out.stdout


def test_a_password_in_the_url_reaches_no_log_error_or_check(pg_server, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)                 # every logger: listgate's, psycopg's, the pool's
    site = make_site(tmp_path / "instance")
    url = use_postgres(site.path, pg_server)
    text = Path(site.path).read_text()
    text = text.replace(f"  password_file: {pg_server.password_file}\n", "")
    with_password = url.replace("postgresql://listgate@", f"postgresql://listgate:{pg_server.password}@")
    Path(site.path).write_text(text.replace(url, with_password))
    try:
        open_store(config.load(site.path), LIST).add_member("a@example.com")      # the URL's password works
        out = _cli(config.load(site.path), "check")
        assert "postgresql://listgate:***@" in out.stdout
        close_all()
        Path(site.path).write_text(text.replace(url, with_password.replace(pg_server.password, "wrong-pass-word")))
        with pytest.raises(StoreUnavailable) as caught:
            open_store(config.load(site.path), LIST).members()
        assert "wrong-pass-word" not in str(caught.value)
        out = _cli(config.load(site.path), "members", "list", "demo", check=False)
        assert out.returncode == 75 and "postgresql://listgate:***@" in out.stderr, out.stderr
    finally:
        close_all()
    for seen in (caplog.text, out.stdout + out.stderr):
        assert pg_server.password not in seen and "wrong-pass-word" not in seen


def _fill(store) -> None:
    for i in range(3):
        m = store.add_member(f"m{i}@example.com", f"Member\t{i} \\N")      # COPY's text escapes
        m.bounce_score, m.last_bounce_day = i + 0.5, "2027-01-15"
        store.save_member(m)
        store.add_evidence(m.key, f"bounce {i}\n\\.\r\n".encode() + bytes(range(256)), T0 + i)
        store.add_event(BounceEvent(at=T0 + i, address=m.key, bounce_class="hard", detail="nul \x00 here"))
    store.add_pending("probe", {"member": "m1@example.com"}, 3600)
    store.add_pending("subscription", {"address": "new@example.com"}, 3600)
    store.remember("accepted", "<post@x>", 3600, owner="q1")


def _state(store) -> tuple:
    return (store.members(), [store.evidence(m.key) for m in store.members()],
            [(e.at, e.address, e.bounce_class) for e in store.events()], store.pending())


def test_store_copy_to_postgresql_and_back_is_idempotent_and_counted(pg_server, tmp_path):
    site = make_site(tmp_path / "instance")
    add_second_list(site.path, "5s")
    site = config.load(site.path)
    clock.freeze(T0)
    sqlite_demo = open_store(site, LIST)
    _fill(sqlite_demo)
    open_store(site, OTHER).add_member("x@example.com")
    before = _state(sqlite_demo)
    url = pg_server.url(pg_server.new_database())
    close_all()
    env = dict(os.environ)
    args = [sys.executable, "-m", "listgate.cli", "-c", site.path, "store", "copy", "--to", url,
            "--password-file", pg_server.password_file]
    for _ in range(2):                          # idempotent: the second run gives the same rows
        out = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)
        assert out.returncode == 0, out.stderr
        assert "demo@lists.example.org: 3 members, 3 evidence, 3 events, 2 pending, 1 remembered" in out.stdout
        assert "copied 2 list(s)" in out.stdout and "row counts checked" in out.stdout
    pg_site_path = Path(site.path).with_name("pg.yaml")     # the same instance, its store on PostgreSQL
    pg_site_path.write_text(Path(site.path).read_text().replace("store:\n  busy_timeout: 5s\n", "")
                            + f"store:\n  url: {url}\n  password_file: {pg_server.password_file}\n")
    pg = config.load(str(pg_site_path))
    pg_demo = open_store(pg, LIST)
    members, evidence, events, pending = _state(pg_demo)
    assert (members, evidence, pending) == before[0:2] + before[3:]
    assert events == [(at, a, c) for at, a, c in before[2]]
    assert pg_demo.remember("accepted", "<post@x>", 60, owner="q2") is False      # the duplicate record came
    assert open_store(pg, OTHER).has_member("x@example.com")
    pg_demo.add_member("only-in-pg@example.com")
    close_all()
    # and back: the SQLite files get PostgreSQL's rows (the new member too), idempotent as well
    for _ in range(2):
        back = subprocess.run([sys.executable, "-m", "listgate.cli", "-c", site.path, "store", "copy", "--from", url,
                               "--to", "sqlite", "--password-file", pg_server.password_file],
                              capture_output=True, text=True, timeout=120, env=env)
        assert back.returncode == 0, back.stderr
        assert "demo@lists.example.org: 4 members, 3 evidence, 3 events, 2 pending, 1 remembered" in back.stdout
        assert "copied 2 list(s) to the SQLite files; row counts checked" in back.stdout
    demo = open_store(config.load(site.path), LIST)
    assert [m.key for m in demo.members()] == ["m0@example.com", "m1@example.com", "m2@example.com",
                                               "only-in-pg@example.com"]
    assert demo.pending() == before[3] and demo.evidence("m2@example.com") == before[1][2]
    assert "\x00" not in demo.events()[0].detail            # PostgreSQL text holds no NUL: replaced


def test_store_copy_refuses_two_sqlite_sides_and_hides_passwords(site):
    out = _cli(site, "store", "copy", "--to", "sqlite", check=False)
    assert out.returncode == 1 and "copy goes from sqlite" in out.stderr
    out = _cli(site, "store", "copy", "--to", "postgresql://u:s3cret@h", check=False)
    assert out.returncode == 1 and "name the database" in out.stderr and "s3cret" not in out.stderr
    out = _cli(site, "store", "copy", "--to", "postgresql://u:s3cret@127.0.0.1:1/db", check=False)
    assert out.returncode == 75 and "s3cret" not in out.stderr, out.stderr


def test_policy_server_answers_451_while_postgresql_is_down_and_resumes_without_restart(pg_site, pg_server, tmp_path):
    from policy_helpers import connect, rcpt_request, read_replies, write_list
    site = write_list(pg_site, "demo", posting_policy="members_only", non_member_action="reject")
    open_store(site, LIST).add_member("member@example.com")
    sock_path = tmp_path / "p.sock"
    proc = subprocess.Popen([sys.executable, "-m", "listgate", "-c", site.path, "policy", "--log-level", "debug",
                             "--socket", f"unix:{sock_path}"], stderr=subprocess.PIPE, cwd=str(tmp_path))
    member, stranger = (rcpt_request(LIST, sender=f"{who}@example.com") for who in ("member", "stranger"))
    try:
        deadline = time.monotonic() + 30
        while not sock_path.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "listgate policy did not start"
            time.sleep(0.1)
        address = ("unix", str(sock_path))
        with connect(address) as s:
            s.sendall(member + stranger)
            up = read_replies(s, 2)
        assert up[0] == "DUNNO" and up[1].startswith("550 "), up
        pg_server.stop()
        try:
            for request in (member, stranger):              # a new SMTP session each, as Postfix retries
                with connect(address, timeout=20) as s:
                    s.sendall(request)
                    down = read_replies(s, 1, timeout=20)
                assert down[0].startswith("451 4.3.0 "), down
            with connect(address, timeout=20) as s:         # mail for no list never reaches the store
                s.sendall(rcpt_request("bob@members.test", sender="stranger@example.com")
                          + rcpt_request(f"nolist@{LIST.split('@')[1]}", sender="stranger@example.com"))
                assert read_replies(s, 2, timeout=20) == ["DUNNO", "550 5.1.1 no such list address"]
        finally:
            pg_server.start()
        with connect(address) as s:
            s.sendall(member + stranger)
            assert read_replies(s, 2, timeout=20) == up     # the same process: no restart
    finally:
        proc.terminate()
        proc.wait(20)
        stderr = proc.stderr.read().decode()
        proc.stderr.close()
    assert pg_server.password not in stderr


def test_a_version_3_database_holding_two_spellings_keeps_both_after_store_init(pg_server, tmp_path):
    from listgate.store.postgres_pool import connect_kwargs
    from listgate.store.postgres_schema import _SCHEMA_TABLE, MIGRATIONS
    site = make_site(tmp_path / "instance")
    url = pg_server.url(pg_server.new_database())
    with open(site.path, "a", encoding="utf-8") as fh:     # use_postgres, without making the schema
        fh.write(f"store:\n  url: {url}\n  password_file: {pg_server.password_file}\n  pool: {{min: 0, max: 4}}\n"
                 "  connect_timeout: 3s\n")
    site = config.load(site.path)
    with psycopg.connect(url, **connect_kwargs(site.conf.store)) as conn:    # what the version 3 code made
        conn.execute(_SCHEMA_TABLE)
        for number, statements in enumerate(MIGRATIONS[:3], 1):
            for statement in statements:
                conn.execute(statement)
            conn.execute("INSERT INTO listgate_schema (version) VALUES (%s)", (number,))
        for key, address, at, score in [("alice@example.com", "alice@example.com", T0 + 10, 2.0),
                                        ("Alice@example.com", "Alice@Example.com", T0, 1.0),
                                        ("Bob@example.com", "Bob@example.com", T0, 0.0)]:
            conn.execute("INSERT INTO members (list_key, key, address, subscribed_at, bounce_score) "
                         "VALUES (%s, %s, %s, %s, %s)", (LIST, key, address, at, score))
    assert "schema migrated to version 4" in _cli(site, "store", "init").stdout
    try:
        store = open_store(site, LIST)
        assert [(m.key, m.bounce_score) for m in store.members()] == [
            ("Alice@example.com", 1.0), ("Bob@example.com", 0.0), ("alice@example.com", 2.0)]
        assert store.get_member("alice@example.com").bounce_score == 2.0
        assert store.get_member("ALICE@EXAMPLE.COM").bounce_score == 1.0
        assert store.get_member("bob@example.com").address == "Bob@example.com"
        assert [[m.address for m in g] for g in store.case_duplicates()] == [["Alice@Example.com", "alice@example.com"]]
        out = _cli(site, "check")
        assert f"{LIST}: warning: one address, 2 members (Alice@Example.com, alice@example.com)" in out.stderr
    finally:
        close_all()
