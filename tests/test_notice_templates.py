"""Notice templates (listgate.app.texts): overrides per list and per site, languages, checks, INSTALL's table."""
from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
from runner_helpers import Env, message, text_of

from listgate import config
from listgate.app import texts
from listgate.cli.notices import table

ROOT = Path(__file__).resolve().parent.parent
LIST = "demo@lists.example.org"


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


def dirs(site) -> tuple[Path, Path]:
    """(site templates_dir, the demo list's templates_dir): their defaults beside the config files."""
    lc = site.get_list(LIST)
    return Path(site.templates_dir), Path(lc.templates_dir)


def set_language(site, language: str) -> config.Site:
    path = Path(site.lists_dir) / "demo.yaml"
    text = re.sub(r"(?m)^language: .*\n", "", path.read_text())
    path.write_text(text + f"language: {language}\n")
    return config.load(site.path)


def test_defaults_sit_beside_the_config_files(site):
    site_dir, list_dir = dirs(site)
    assert site_dir == Path(site.path).parent / "templates"
    assert list_dir == Path(site.lists_dir) / "demo.templates"


def test_list_beats_site_beats_builtin(site):
    lc = site.get_list(LIST)
    site_dir, list_dir = dirs(site)
    built = texts.render("goodbye", lc)
    assert built.source == "built-in goodbye.txt" and built.subject == f"You left {LIST}"
    write(site_dir / "goodbye.txt", "Subject: site says bye to $list_name\n\nSite text for $list.\n")
    text = texts.render("goodbye", lc)
    assert (text.subject, text.body) == ("site says bye to demo", f"Site text for {LIST}.\n")
    write(list_dir / "goodbye.txt", "Subject: list bye\n\nList text, $$5 a month.\n")
    text = texts.render("goodbye", lc)
    assert (text.subject, text.body) == ("list bye", "List text, $5 a month.\n")
    assert text.source == str(list_dir / "goodbye.txt")


def test_language_is_picked_before_the_plain_text(site):
    site_dir, list_dir = dirs(site)
    write(site_dir / "goodbye.txt", "Subject: site plain\n\nsite plain\n")
    write(site_dir / "de" / "goodbye.txt", "Subject: Abschied von $list\n\nSie sind nicht mehr auf $list.\n")
    lc = set_language(site, "de").get_list(LIST)
    assert texts.render("goodbye", lc).subject == f"Abschied von {LIST}"
    write(list_dir / "goodbye.txt", "Subject: list plain\n\nlist plain\n")
    assert texts.render("goodbye", lc).subject == "list plain"      # the list's directory comes first
    write(list_dir / "de" / "goodbye.txt", "Tschüss.\n")                # no Subject: the next one's is kept
    text = texts.render("goodbye", lc)
    assert (text.subject, text.body) == ("list plain", "Tschüss.\n")
    # a language nobody translated falls back to the plain texts, built-in at the end
    lc = set_language(site, "fr").get_list(LIST)
    assert texts.render("welcome", lc, leave="x").subject == f"Welcome to {LIST}"


def test_a_language_that_is_a_path_is_refused(site):
    path = Path(site.lists_dir) / "demo.yaml"
    path.write_text(path.read_text() + "language: ../../etc\n")
    loaded = config.load(site.path, strict=False)
    assert LIST not in loaded.lists
    [err] = loaded.list_errors[str(path)]
    assert "language" in err and "not a language tag" in err


def test_a_broken_override_is_skipped_and_logged(site, caplog):
    _, list_dir = dirs(site)
    write(list_dir / "welcome.txt", "Subject: hi\n\nWelcome, $nobody_knows_me.\n")
    with caplog.at_level(logging.ERROR, logger="listgate.app.texts"):
        text = texts.render("welcome", site.get_list(LIST), leave="x@y")
    assert text.source == "built-in welcome.txt"
    assert "welcome.txt" in caplog.text and "$nobody_knows_me" in caplog.text


def test_render_refuses_wrong_fields(site):
    with pytest.raises(ValueError):
        texts.render("welcome", site.get_list(LIST), leave="x", extra="y")
    with pytest.raises(KeyError):
        texts.render("no_such_notice", site.get_list(LIST))


def test_every_notice_has_a_valid_builtin_and_nothing_else_is_there():
    root = resources.files("listgate.templates").joinpath("notices")
    files = sorted(p.name[:-4] for p in root.iterdir() if p.name.endswith(".txt"))
    assert files == sorted(texts.NOTICES)
    for name, notice in texts.NOTICES.items():
        subject, body = texts.parse(name, texts.builtin(name))
        assert (subject is not None) == notice.subject, name
        used = {m.group("named") or m.group("braced") for m in re.finditer(r"\$(?:(?P<named>\w+)|\{(?P<braced>\w+)\})",
                                                                          (subject or "") + "\n" + body)}
        assert set(notice.fields) <= used, f"{name} does not use {set(notice.fields) - used}"


def test_install_lists_every_notice_with_its_placeholders():
    install = (ROOT / "INSTALL").read_text(encoding="utf-8")
    assert table() in install, "INSTALL's notice table is stale: paste `listgate notices list --table`"


def check(site) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "listgate", "-c", site.path, "check"], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)


def test_check_reports_bad_overrides_with_file_and_line(site):
    site_dir, list_dir = dirs(site)
    assert check(site).returncode == 0
    write(site_dir / "welcome.txt", "Subject: Welcome to $list\n\nHello.\nYou are $member.\n")
    write(site_dir / "welcom.txt", "typo in the name\n")
    write(site_dir / "de" / "goodbye.txt", b"Subject: Tsch\xfcss\n\nbye\n")
    write(list_dir / "help.txt", "Subject: help\n\nno subject here\n")
    write(list_dir / "held.txt", "Subject: confirm $token\n\nline\ncosts 5$ only\n")
    write(list_dir / "bad_queue_site.txt", "x\n")
    out = check(site)
    assert out.returncode == 1
    err = out.stderr
    assert f"{site_dir / 'welcome.txt'}:4: unknown placeholder $member" in err
    assert f"{site_dir / 'welcom.txt'}:1: unknown notice name 'welcom'" in err
    assert f"{site_dir / 'de' / 'goodbye.txt'}:1: not UTF-8 text" in err
    assert f"{list_dir / 'help.txt'}:1: help is a part of a reply" in err
    assert f"{list_dir / 'held.txt'}:4: a $ that starts no placeholder" in err
    assert f"{list_dir / 'bad_queue_site.txt'}:1: bad_queue_site is a site notice" in err
    # the daemons still start: a broken override only falls back to the next text
    out = subprocess.run([sys.executable, "-m", "listgate", "-c", site.path, "check", "--site-only"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr


def test_check_warns_about_readable_secrets(site):
    key = site.conf.verp.keys[0].file
    assert check(site).returncode == 0
    os.chmod(key, 0o640)
    out = check(site)
    assert out.returncode == 1 and f"{key}: mode 0640 lets its group read a secret: chmod 600 {key}" in out.stderr
    os.chmod(key, 0o600)
    password = Path(site.path).parent / "db.password"
    write(password, "secret\n").chmod(0o644)
    text = Path(site.path).read_text()
    Path(site.path).write_text(text + "store:\n  password_file: db.password\n")
    out = check(site)
    assert out.returncode == 1 and f"{password}: mode 0644 lets others read a secret" in out.stderr, out.stderr


def test_notices_show_prints_the_template_in_use(site):
    _, list_dir = dirs(site)
    lg = [sys.executable, "-m", "listgate", "-c", site.path, "notices"]
    out = subprocess.run(lg + ["show", "probe"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.encode() == texts.builtin("probe")
    write(list_dir / "probe.txt", "Subject: ours\n\nour probe $member\n")
    out = subprocess.run(lg + ["show", "probe", "--list", "demo"], capture_output=True, text=True, timeout=60)
    assert out.stdout == "Subject: ours\n\nour probe $member\n" and str(list_dir / "probe.txt") in out.stderr
    out = subprocess.run(lg + ["show", "nope"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "unknown notice" in out.stderr


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    yield e
    e.close()


def test_the_runner_uses_an_override_and_a_changed_one_without_reload(env):
    """Templates are read at each notice: the daemons need no reload (INSTALL says so)."""
    lc = env.lc
    path = write(Path(lc.templates_dir) / "confirm.txt",
                 "Subject: Bitte bestätigen: confirm $token\n\nUm $action zu bestätigen: $confirm\n")
    env.inject(message("new@one.test", "subscribe"), role="request", sender="new@one.test")
    env.run()
    [first] = env.sink.messages_for("new@one.test")
    token = env.confirm_token("new@one.test")
    assert first.message()["Subject"] == f"Bitte bestätigen: confirm {token}"
    assert f"Um subscribe new@one.test to {LIST} zu bestätigen" in text_of(first)
    path.write_text("Subject: second version, confirm $token\n\n$action?\n")
    env.inject(message("other@one.test", "subscribe"), role="request", sender="other@one.test")
    env.run()
    [second] = env.sink.messages_for("other@one.test")
    assert second.message()["Subject"].startswith("second version, confirm")
    assert text_of(second).strip() == f"subscribe other@one.test to {LIST}?"
    # a reply to L-confirm@D with the token only in the (overridden) subject still confirms
    token = env.confirm_token("other@one.test")
    env.inject(message("other@one.test", f"Re: second version, confirm {token}"), role="confirm",
               sender="other@one.test")
    env.run()
    assert env.store.get_member("other@one.test") is not None


def test_the_lines_of_a_command_reply_are_overridable_too(env):
    env.members("old@one.test")
    write(Path(env.site.templates_dir) / "de" / "cmd_already_member.txt", "$command: $address ist schon Mitglied\n")
    env.edit_list("language: de\n")
    env.inject(message("old@one.test", "subscribe"), role="request", sender="old@one.test")
    env.run()
    [reply] = env.sink.messages_for("old@one.test")
    assert "subscribe: old@one.test ist schon Mitglied" in text_of(reply)
    assert reply.message()["Subject"] == f"Re: your commands to {LIST}"     # the built-in "results"
