"""Strict configuration: every kind of error, with file and line, all at once."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
import sys

import pytest

from listgate import config
from listgate.config import ConfigError, parse_duration

from conftest import make_site


def write_list(site, name, text):
    path = os.path.join(site.lists_dir, f"{name}.yaml")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return path


def errors_for(site):
    with pytest.raises(ConfigError) as info:
        config.load(site.path)
    return info.value.errors


def test_init_instance_loads_with_defaults(site):
    lc = site.get_list("demo")
    assert lc.bounce_processing is True
    assert lc.bounce_score_threshold == 5.0
    assert lc.bounce_info_stale_after == 7 * 86400
    assert lc.bounce_you_are_disabled_warnings == 3
    assert lc.bounce_you_are_disabled_warnings_interval == 7 * 86400
    assert lc.bounce_notify_owner_on_disable and lc.bounce_notify_owner_on_removal
    assert lc.bounce_unrecognized_goes_to_list_owner is True
    assert (lc.bounce_weights.hard, lc.bounce_weights.soft, lc.bounce_weights.policy) == (1.0, 0.5, 0.0)
    assert lc.subject_prefix == "[demo] "
    key = site.conf.verp.keys[0]
    assert os.stat(key.file).st_mode & 0o777 == 0o600
    assert site.domains == {"lists.example.org"}
    # the site's notice overrides have their (empty) directory: `notices show NAME > templates/NAME.txt` works
    assert os.listdir(os.path.join(os.path.dirname(site.path), "templates")) == []


@pytest.mark.parametrize("text", ["7d", "12h", "30m", "45s", "2w", "1d12h"])
def test_durations(text):
    expected = {"7d": 604800, "12h": 43200, "30m": 1800, "45s": 45, "2w": 1209600, "1d12h": 129600}[text]
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["7", "7 days", "d", "-1d", "1x", ""])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_every_error_reported_with_file_and_line(site):
    path = write_list(site, "bad", "\n".join([
        "name: bad",                         # 1
        "domain: lists.example.org",         # 2
        "owners: [owner@x.org, nope]",       # 3 malformed address
        "subject_prefix: [bad]",             # 4 wrong type (a YAML list)
        "bounce_score_threshold: five",      # 5 wrong type
        "bounce_info_stale_after: 7 days",   # 6 bad duration
        "posting_policy: closed",            # 7 bad enum
        "bounce_weights:",                   # 8
        "  sofft: 0.5",                      # 9 unknown nested key
        "colour: red",                       # 10 unknown key
        "colour: blue",                      # 11 duplicate key
    ]) + "\n")
    errs = errors_for(site)
    expect = {
        3: "owners", 4: "subject_prefix", 5: "bounce_score_threshold", 6: "bounce_info_stale_after",
        7: "posting_policy", 9: "bounce_weights.sofft", 10: "colour", 11: "colour",
    }
    for line, keypath in expect.items():
        assert any(e.startswith(f"{path}:{line}: {keypath}: ") for e in errs), (line, keypath, errs)
    assert len(errs) == len(expect)


@pytest.mark.parametrize("name", ["../evil", "a/b", "x..y", "Demo", "lists-request", "demo-bounces", "-x"])
def test_unsafe_list_names_refused(site, name):
    safe = "evil"
    path = write_list(site, safe, f"name: {name!r}\ndomain: lists.example.org\nowners: [a@b.org]\n")
    errs = errors_for(site)
    assert any(e.startswith(f"{path}:1: name: ") for e in errs), errs


def test_file_name_must_match_list_name(site):
    path = write_list(site, "other", "name: another\ndomain: lists.example.org\nowners: [a@b.org]\n")
    assert errors_for(site) == [f"{path}:1: name: list 'another' must live in another.yaml"]


def test_missing_required_keys(site):
    path = write_list(site, "empty", "name: empty\n")
    errs = errors_for(site)
    assert f"{path}:1: domain: required key is missing" in errs
    assert f"{path}:1: owners: required key is missing" in errs


def test_yaml_syntax_error_has_line(site):
    path = write_list(site, "broken", "name: broken\nowners: [a@b.org\ndomain: x.org\n")
    errs = errors_for(site)
    assert len(errs) == 1 and errs[0].startswith(f"{path}:") and "(syntax)" in errs[0]


def test_site_errors(tmp_path):
    site = make_site(tmp_path / "i")
    with open(site.path, "a", encoding="utf-8") as fh:
        fh.write("runner:\n  max_attempts: zero\ntrusted_networks: [300.1.1.1/8]\nmilter:\n  socket: tcp:1\n")
    errs = errors_for(site)
    assert any(": runner.max_attempts: expected an integer" in e for e in errs), errs
    assert any(": trusted_networks: item 0: '300.1.1.1/8' is not a network" in e for e in errs), errs
    # the template already has a 'milter' section: a second one is a duplicate key
    assert any(": milter: duplicate key (first at line " in e for e in errs), errs


def test_non_utf8_file(site):
    path = os.path.join(site.lists_dir, "junk.yaml")
    with open(path, "wb") as fh:
        fh.write(b"name: junk\ndescription: \xff\xfe\n")
    errs = errors_for(site)
    assert errs[0].startswith(f"{path}:1: (file): not UTF-8")


def test_config_is_read_only(site):
    lc = site.get_list("demo")
    with pytest.raises(AttributeError):
        lc.name = "x"
    with pytest.raises(AttributeError):
        del lc.name
    with pytest.raises(TypeError):
        vars(lc)["name"] = "x"          # no instance dict to write behind the view
    assert lc.name == lc["name"] == "demo"


def test_frozen_values_are_attributes_and_method_names_stay_methods():
    from listgate.config.loader import Frozen
    conf = Frozen({"get": "a value", "as_dict": 1, "plain": 2, "inner": Frozen({"x": 3})})
    assert conf.plain == 2 and conf.inner.x == 3
    assert conf.get("get") == conf["get"] == "a value" and conf.get("missing", 4) == 4
    assert conf.as_dict() == {"get": "a value", "as_dict": 1, "plain": 2, "inner": {"x": 3}}
    with pytest.raises(AttributeError):
        conf.missing


def test_check_cli(site):
    env = dict(os.environ)
    out = subprocess.run([sys.executable, "-m", "listgate.cli", "-c", site.path, "check"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "demo@lists.example.org: members_only" in out.stdout
    write_list(site, "bad", "name: bad\n")
    out = subprocess.run([sys.executable, "-m", "listgate.cli", "-c", site.path, "check"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 1
    assert "bad.yaml:1: domain: required key is missing" in out.stderr


def test_watcher_reloads_and_keeps_old_config_on_error(site):
    w = config.Watcher(site.path, interval=0)
    assert w.current().get_list("demo").bounce_score_threshold == 5.0
    path = os.path.join(site.lists_dir, "demo.yaml")
    text = open(path, encoding="utf-8").read().replace("bounce_score_threshold: 5.0", "bounce_score_threshold: 3.0")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    assert w.current().get_list("demo").bounce_score_threshold == 3.0
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text + "bogus: 1\n")
    assert w.current().get_list("demo").bounce_score_threshold == 3.0


def test_check_cli_refuses_a_weak_or_unreadable_verp_key(site):
    key = site.conf.verp.keys[0].file
    with open(key, "w", encoding="ascii") as fh:
        fh.write("abcd\n")                      # 16 bits: far too short to sign with
    out = subprocess.run([sys.executable, "-m", "listgate.cli", "-c", site.path, "check"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and ": verp.keys: " in out.stderr, out.stderr
    os.unlink(key)
    out = subprocess.run([sys.executable, "-m", "listgate.cli", "-c", site.path, "check"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and ": verp.keys: " in out.stderr, out.stderr


@pytest.mark.parametrize("content, expect", [
    ("description: " + "[" * 50000 + "]" * 50000 + "\n", "(syntax): nested too deeply"),
    ("a: &b {x: 1}\n<<: *b\n", "(syntax): "),
    ("description: !!python/object/apply:os.system ['true']\n", "(syntax): "),
])
def test_hostile_yaml_is_a_clean_error(site, content, expect):
    path = write_list(site, "hostile", "name: hostile\ndomain: lists.example.org\nowners: [a@b.org]\n" + content)
    errs = errors_for(site)
    assert len(errs) == 1 and errs[0].startswith(f"{path}:") and expect in errs[0], errs


def test_non_regular_list_files_are_refused_not_read(site):
    fifo = os.path.join(site.lists_dir, "fifo.yaml")
    os.mkfifo(fifo)                                   # reading it would block for ever
    os.symlink("/dev/zero", os.path.join(site.lists_dir, "zero.yaml"))   # and this never ends
    errs = errors_for(site)
    assert sorted(errs) == sorted([f"{fifo}:1: (file): not a regular file",
                                   f"{os.path.join(site.lists_dir, 'zero.yaml')}:1: (file): not a regular file"])


def test_check_refuses_a_state_dir_that_is_not_a_directory(site, tmp_path):
    with open(site.path, encoding="utf-8") as fh:
        text = fh.read()
    with open(site.path, "w", encoding="utf-8") as fh:
        fh.write(text.replace("state_dir: .", "state_dir: /etc/passwd"))
    out = subprocess.run([sys.executable, "-m", "listgate.cli", "-c", site.path, "check"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and ": state_dir: state_dir /etc/passwd is not a directory" in out.stderr, out.stderr


def test_preallocate_qfiles_is_accepted_ignored_and_warned_about(site):
    """An upgraded site file may still set the removed milter.preallocate_qfiles: it
    loads (the loader is strict about unknown keys), and ``check`` says to delete it."""
    check = [sys.executable, "-m", "listgate.cli", "-c", site.path, "check"]
    quiet = subprocess.run(check, capture_output=True, text=True, timeout=60)
    assert quiet.returncode == 0 and "preallocate_qfiles" not in quiet.stderr, quiet.stderr
    path = Path(site.path)
    path.write_text(path.read_text().replace("milter:\n", "milter:\n  preallocate_qfiles: 512\n", 1))
    assert config.load(site.path).conf.milter.preallocate_qfiles == 512
    out = subprocess.run(check, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"{site.path}: milter.preallocate_qfiles: deprecated and ignored" in out.stderr
    assert "delete it" in out.stderr


def _with_store(site, text: str) -> None:
    path = Path(site.path)
    path.write_text(path.read_text() + text)


def test_store_is_sqlite_by_default_or_by_name(site):
    assert site.conf.store.url is None and site.conf.store.busy_timeout == 10
    _with_store(site, "store: sqlite\n")
    store = config.load(site.path).conf.store
    assert store.url is None and store.busy_timeout == 10 and store.pool.max == 8


def test_store_postgresql_mapping_loads_with_its_defaults(site):
    _with_store(site, "store:\n  url: postgresql://lg@db.example.org/lists?sslmode=verify-full\n"
                      "  password_file: keys/db.pw\n  pool: {min: 2, max: 4}\n  statement_timeout: 3s\n")
    store = config.load(site.path).conf.store
    assert store.url == "postgresql://lg@db.example.org/lists?sslmode=verify-full"
    assert store.password_file == os.path.join(os.path.dirname(site.path), "keys", "db.pw")
    assert (store.pool.min, store.pool.max, store.connect_timeout, store.statement_timeout) == (2, 4, 5, 3)


@pytest.mark.parametrize("text, expect", [
    ("store: mysql\n", "store: expected sqlite or a mapping"),
    ("store: 3\n", "store: expected sqlite or a mapping"),
    ("store:\n  url: mysql://u@h/db\n", "store.url: 'mysql://u@h/db': only postgresql://"),
    ("store:\n  url: postgresql://u@h\n", "store.url: 'postgresql://u@h': name the database"),
    ("store:\n  url: postgresql://u@h:99999/db\n", "store.url: not a URL"),
    ("store:\n  url: postgresql://u@h/db\n  pool: {min: 5, max: 2}\n", "store.pool: min (5) is more than max (2)"),
    ("store:\n  url: postgresql://u@h/db\n  pool: {max: 0}\n", "store.pool.max: must be at least 1"),
    ("store:\n  url: postgresql://u@h/db\n  sslmode: require\n", "store.sslmode: unknown key"),
    ("store:\n  url: postgresql://u@h/db\n  statement_timeout: 10\n", "store.statement_timeout: expected a duration"),
])
def test_store_errors_have_line_and_key(site, text, expect):
    _with_store(site, text)
    errs = errors_for(site)
    assert any(expect in e for e in errs), errs


def test_a_password_in_the_url_is_never_shown(site):
    _with_store(site, "store:\n  url: postgresql://lg:s3cret@db.example.org/nodb#x\n")
    errs = errors_for(site)
    assert any("store.url:" in e for e in errs) and not any("s3cret" in e for e in errs), errs
    _with_store(site, "")
    Path(site.path).write_text(Path(site.path).read_text().replace("/nodb#x", "/lists"))
    out = subprocess.run([sys.executable, "-m", "listgate.cli", "-c", site.path, "check"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "store: PostgreSQL postgresql://lg:***@db.example.org/lists" in out.stdout
    assert "s3cret" not in out.stdout + out.stderr
    assert config.mask_url("postgresql://u@h/db") == "postgresql://u@h/db"
