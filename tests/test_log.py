"""Logs a machine can read (issue 21, problem 8): logfmt lines, one per event, whatever the mail says;
a stuck qfile warned about at a backoff; a missing syslog socket said; CLI changes audited."""
from __future__ import annotations

import argparse
import io
import logging
import os
import pwd
import re
import socket

import pytest

from listgate import clock, log as lg_log
from listgate.runner.loop import REPEAT_FIRST, Runner

from runner_helpers import LIST, Env, message

PAIR_RE = re.compile(r'([^\s=]+)=("(?:[^"\\]|\\.)*"|[^\s"]*)')
UNESCAPE = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"'}


def parse(line: str) -> list[tuple[str, str]]:
    """A logfmt reader (escapes as written by listgate.log), strict: the whole line must be pairs."""
    pairs, pos = [], 0
    for m in PAIR_RE.finditer(line):
        assert line[pos:m.start()].strip() == "", f"junk in {line!r} at {pos}"
        pos = m.end()
        raw = m.group(2)
        if raw.startswith('"'):
            raw = re.sub(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8}|.)",
                         lambda e: UNESCAPE.get(e.group(1)) or chr(int(e.group(1)[1:], 16)), raw[1:-1])
        pairs.append((m.group(1), raw))
    assert line[pos:].strip() == ""
    return pairs


def formatted(event: str, msg=None, /, *, exc_info=None, **fields) -> str:
    """What the daemons' handler writes for one event (a real handler on a real logger)."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(lg_log.LogfmtFormatter("listgate-runner"))
    logger = logging.Logger("listgate.test", logging.DEBUG)
    logger.addHandler(handler)
    ev = lg_log.EventLog(logger.name, logger)
    if exc_info:
        try:
            raise ValueError("first line\nsecond line")
        except ValueError:
            ev.exception(event, msg, **fields)
    else:
        ev.info(event, msg, **fields)
    return out.getvalue()


HOSTILE = [
    "Hi\r\nts=2026-01-01T00:00:00.000Z level=error daemon=runner event=fake list=evil",
    'quote " and = and \\ backslash',
    "tab\there, NUL\x00, ESC\x1b[31m, DEL\x7f",
    "next line\x85and\u2028separators\u2029too\x0b\x0c\x1c",
    "",
    "caf\u00e9 \u65e5\u672c",
    "trailing space ",
]


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_values_stay_on_one_line_and_read_back(hostile):
    line = formatted("post_held", "post held", list=LIST, subject=hostile)
    assert line.endswith("\n") and len(line.splitlines()) == 1, line   # splitlines: every Unicode line break
    pairs = parse(line.rstrip("\n"))
    keys = [k for k, _ in pairs]
    assert keys == ["ts", "level", "daemon", "event", "msg", "list", "subject"], line
    assert dict(pairs)["event"] == "post_held" and dict(pairs)["subject"] == hostile


def test_undecodable_mail_bytes_are_escaped():
    subject = b"8-bit \xff\xfe\r\n".decode("utf-8", "surrogateescape")
    line = formatted("bounce", subject=subject)
    assert len(line.splitlines()) == 1
    assert r'subject="8-bit \xff\xfe\r\n"' in line


def test_bare_and_quoted_values():
    line = formatted("delivered", qfile="0001-ab", sent=3, failed=None, ok=True, why="two words", eq="a=b", empty="")
    assert line.split(" ", 3)[3].rstrip("\n") == \
        'event=delivered qfile=0001-ab sent=3 ok=true why="two words" eq="a=b" empty=""'


def test_reserved_and_odd_field_names_cannot_forge_the_head():
    line = formatted("bounce", level="error", event="fake", **{"bad key\n=": "x"})
    pairs = parse(line.rstrip("\n"))
    assert [k for k, _ in pairs][:4] == ["ts", "level", "daemon", "event"]
    assert dict(pairs)["event"] == "bounce" and ("level_", "error") in pairs and ("event_", "fake") in pairs
    assert ("bad_key__", "x") in pairs


def test_a_traceback_is_one_line_with_error_and_trace():
    line = formatted("qfile_shunted", exc_info=True, qfile="q1")
    assert len(line.splitlines()) == 1
    fields = dict(parse(line.rstrip("\n")))
    assert fields["error"] == "ValueError: first line\nsecond line"
    assert fields["trace"].startswith("Traceback (most recent call last):\n") and "second line" in fields["trace"]


def test_plain_logging_calls_are_one_line_too():
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(lg_log.LogfmtFormatter("listgate-milter"))
    logger = logging.Logger("listgate.lib", logging.DEBUG)
    logger.addHandler(handler)
    logger.warning("library says %s", "a\nb")
    assert len(out.getvalue().splitlines()) == 1
    fields = dict(parse(out.getvalue().strip()))
    assert (fields["daemon"], fields["event"], fields["msg"]) == ("milter", "message", "library says a\nb")


def test_backoff_warns_at_once_then_doubling():
    clock.freeze(1_000_000.0)
    try:
        b = lg_log.Backoff(first=60, maximum=240)
        warned = []
        for second in range(0, 900, 2):               # a poll every 2 s for 15 minutes
            n = b.hit("q")
            if n is not None:
                warned.append(second)
            clock.advance(2)
        assert warned == [0, 60, 180, 420, 660]        # +60, +120, +240, +240 (the maximum)
        assert b.clear("q") == 450 and b.clear("q") == 0
        assert b.hit("q") == 1                         # a new episode warns at once again
    finally:
        clock.freeze(None)


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    yield e
    e.close()


def test_a_stuck_qfile_warns_once_then_at_a_backoff(env, caplog):
    """The store is a directory, not an SQLite file: every pass puts the post back (StoreUnavailable)."""
    env.members("alice@example.org")
    env.inject(message("alice@example.org", "hello"))
    store_file = os.path.join(env.site.state_dir, "lists", f"{LIST}.db")
    from listgate.store import close_all
    close_all()
    os.rename(store_file, store_file + ".away")
    os.mkdir(store_file)
    runner = Runner(env.site)
    board = runner.boards["in"]
    clock.freeze(2_000_000.0)
    try:
        with caplog.at_level("DEBUG", logger="listgate.runner"):
            for _ in range(int(3 * REPEAT_FIRST / 2) + 1):     # a poll every 2 s for 3 first intervals
                qf = board.dequeue()
                assert qf is not None and runner.process(board, qf) is False
                clock.advance(2)
            warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.lg_event == "qfile_stuck"]
            quiet = [r for r in caplog.records if r.levelno == logging.DEBUG and r.lg_event == "qfile_stuck"]
            assert [r.lg_fields["attempts"] for r in warnings] == [1, 31, 91]     # at 0 s, 60 s, 180 s
            assert len(quiet) == 88
            os.rmdir(store_file)
            os.rename(store_file + ".away", store_file)
            close_all()
            qf = board.dequeue()
            assert runner.process(board, qf) is True
        done = [r for r in caplog.records if getattr(r, "lg_event", None) == "qfile_unstuck"]
        assert len(done) == 1 and done[0].lg_fields["attempts"] == 91 and done[0].lg_fields["qfile"] == qf.id
    finally:
        clock.freeze(None)
        runner.close()


def test_missing_syslog_socket_is_said_once_and_logs_go_to_stderr(tmp_path):
    conf = _logging_conf(tmp_path, str(tmp_path / "no-such-log"))
    err = io.StringIO()
    try:
        problem = lg_log.setup(conf, program="listgate-runner", stderr=err)
        lg_log.setup(conf, program="listgate-runner", stderr=err)          # a second set-up says nothing new
    finally:
        _reset_logging()
    text = err.getvalue()
    assert problem == f"syslog socket {tmp_path}/no-such-log (logging.syslog_socket): No such file or " \
                      "directory; logging to stderr instead"
    assert text.count(f"listgate-runner: warning: {problem}\n") == 1
    assert text.count("event=syslog_unavailable") == 2 and "daemon=runner" in text


def test_syslog_socket_receives_logfmt_lines(tmp_path):
    path = str(tmp_path / "log")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sink:
        sink.bind(path)
        sink.settimeout(10)
        try:
            assert lg_log.setup(_logging_conf(tmp_path, path), program="listgate-runner") is None
            lg_log.events("listgate.runner").info("post_held", list=LIST, subject="a\nb")
            data = sink.recv(4096).decode()
        finally:
            _reset_logging()
    assert re.fullmatch(r'<22>listgate-runner\[\d+\]: ts=\S+ level=info daemon=runner event=post_held '
                        r'list=demo@lists.example.org subject="a\\nb"\x00?', data), data


def test_check_reports_a_missing_syslog_socket(env):
    use_syslog(env.site.path, f"{env.dir}/no-such-log")
    out = env.cli("check")
    assert out.returncode == 1, out.stderr
    assert f"logging.destination: syslog: syslog socket {env.dir}/no-such-log (logging.syslog_socket): " \
           "No such file or directory; the daemons will log to stderr instead" in out.stderr
    assert env.cli("check", "--site-only").returncode == 0


def _logging_conf(tmp_path, socket_path):
    from conftest import make_site
    site = make_site(tmp_path / "site")
    use_syslog(site.path, socket_path)
    from listgate import config
    return config.load(site.path).conf.logging


def use_syslog(site_path, socket_path) -> None:
    """Point the instance's ``logging`` section at syslog on ``socket_path``."""
    with open(site_path, encoding="utf-8") as fh:
        text = fh.read()
    assert "  destination: stderr\n" in text
    text = text.replace("  destination: stderr\n", f"  destination: syslog\n  syslog_socket: {socket_path}\n")
    with open(site_path, "w", encoding="utf-8") as fh:
        fh.write(text)


def _reset_logging():
    root = logging.getLogger("listgate")
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    root.propagate = True
    root.setLevel(logging.NOTSET)
    lg_log._reported.clear()


# -- CLI audit ---------------------------------------------------------------------------
def audit_lines(env) -> list[dict]:
    """The audit lines written since the last call (state_dir/audit.log: the site logs to stderr)."""
    path = os.path.join(env.site.state_dir, "audit.log")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    os.unlink(path)
    return [dict(parse(ln)) for ln in text.splitlines() if "event=cli_command" in ln]


def test_cli_changes_are_logged_with_who_ran_them(env):
    me = pwd.getpwuid(os.getuid()).pw_name
    out = env.cli("members", "add", LIST, "bob@example.org", SUDO_USER="alice")
    assert out.returncode == 0, out.stderr
    assert "cli_command" not in out.stderr      # the admin's terminal gets no log line
    (line,) = audit_lines(env)
    assert {k: line[k] for k in ("level", "daemon", "user", "uid", "sudo_user", "command", "argv", "status")} == {
        "level": "info", "daemon": "cli", "user": me, "uid": str(os.getuid()), "sudo_user": "alice",
        "command": "members add", "argv": f"members add {LIST} bob@example.org", "status": "0"}
    # a refused change is logged with its status; read-only commands are not logged
    out = env.cli("members", "remove", LIST, "nobody@example.org")
    (line,) = audit_lines(env)
    assert line["level"] == "warning" and line["status"] == "1" and "sudo_user" not in line
    for args in (["members", "list", LIST], ["queue", "ls"], ["status"], ["check"]):
        env.cli(*args)
        assert audit_lines(env) == [], args
    # the queue commands are audited too; a password in a URL never is written
    env.cli("queue", "flush")
    assert audit_lines(env)[0]["command"] == "queue flush"
    out = env.cli("store", "copy", "--to", "postgresql://u:s3cret@127.0.0.1:1/db")
    (line,) = audit_lines(env)
    assert "s3cret" not in out.stderr and line["argv"] == "store copy --to 'postgresql://u:***@127.0.0.1:1/db'"


def test_every_command_is_audited_unless_listed_read_only():
    from listgate.cli import audit, build_parser
    parser = build_parser()
    assert audit.command_path(parser, ["-c", "x.yaml", "queue", "requeue", "--all"]) == "queue requeue"
    assert audit.audited("queue requeue") and audit.audited("held approve") and audit.audited("bounces strike")
    assert audit.audited("lists create")          # a future command: audited by default
    assert not audit.audited("queue ls") and not audit.audited("runner") and not audit.audited("init")
    assert not audit.audited("lists") and not audit.audited("members find") and audit.audited("lists remove")
    # every command path of the parser, decided: a new one fails here until it is put on a side
    def paths(p, prefix=""):
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if prefix and (not subs or p.get_default("func")):
            yield prefix
        for name, child in (subs[0].choices.items() if subs else ()):
            yield from paths(child, f"{prefix} {name}".strip())
    assert {path for path in paths(parser) if audit.audited(path)} == {
        "queue edit", "queue unshunt", "queue requeue", "queue flush", "lists create", "lists remove",
        "members add", "members remove", "members sync", "members enable", "members disable", "members set",
        "members import", "pending confirm", "pending discard", "bounces reset", "bounces strike", "bounces clear-incident",
        "held approve", "held reject", "held discard", "tasks run", "store init", "store copy",
        "import mailman21", "reload", "stop"}
    assert audit.redact(["--db-password", "x", "--secret=y", "--password-file", "/p"]) == \
        ["--db-password", "***", "--secret=***", "--password-file", "/p"]


def test_a_bounce_is_logged_once(tmp_path, corpus, caplog):
    """The milter's and Exim's end of message (inject) hands a bounce to the life cycle: one line, event=bounce."""
    from conftest import make_site
    from listgate import inject, verp
    from listgate.routing import decide_rcpt
    from listgate.store import open_store
    site = make_site(tmp_path / "inst")
    lc = site.lists[LIST]
    open_store(site, LIST).add_member("userx@example.com")
    rcpt = verp.member_bounce_address(site, lc, "userx@example.com")
    msg = (corpus / "flufl.bounce" / "dsn_13.txt").read_bytes()
    with caplog.at_level("INFO", logger="listgate"):
        out = inject.store_message(site, msg, "", [inject.Routed(f"<{rcpt}>", decide_rcpt(site, rcpt, sender=""))],
                                   mta_queue_id="BQ1")
    assert [s.outcome for s in out] == ["bounce"]
    lines = [r for r in caplog.records if r.name.startswith("listgate") and r.levelno >= logging.INFO]
    assert [(r.lg_event, r.lg_fields.get("queue_id")) for r in lines] == [("bounce", "BQ1")], caplog.text
    assert "userx@example.com" in lines[0].lg_fields["outcome"]
