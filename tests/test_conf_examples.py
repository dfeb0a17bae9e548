"""The reference configs in conf/ load, document every key with its default,
and the Postfix snippets pass ``postfix check``; INSTALL quotes them verbatim."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness import PostfixInstance, available
from harness.postfix import LMTP_SNIPPET, MAIN_SNIPPET, MASTER_SNIPPET, PostfixError, render_snippet
from listgate import config, instance
from listgate.config import schema

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


@pytest.fixture
def reference(tmp_path) -> Path:
    """conf/listgate.yaml + lists.d/example.yaml copied beside a real key file."""
    shutil.copy(CONF / "listgate.yaml", tmp_path / "listgate.yaml")
    (tmp_path / "lists.d").mkdir()
    shutil.copy(CONF / "lists.d" / "example.yaml", tmp_path / "lists.d" / "example.yaml")
    instance.write_key(str(tmp_path / "keys" / "k1.key"))
    text = (tmp_path / "listgate.yaml").read_text()
    # the reference points at /var/lib/listgate; keep the test inside tmp_path
    (tmp_path / "listgate.yaml").write_text(text.replace("state_dir: /var/lib/listgate",
                                                         f"state_dir: {tmp_path / 'state'}"))
    return tmp_path


def _walk(section: schema.Section, raw: dict, loaded, where: str, missing: list, differs: list) -> None:
    for key, spec in section.fields.items():
        path = f"{where}{key}"
        if spec.deprecated:
            continue  # ignored when set: the reference leaves it out
        if key not in raw:
            missing.append(path)
            continue
        value = loaded[key]
        if spec.kind in ("section", "store"):
            _walk(spec.section, raw[key] or {}, value, path + ".", missing, differs)
        elif spec.kind == "keys":
            for i, item in enumerate(raw[key]):
                missing.extend(f"{path}[{i}].{k}" for k in schema.VERP_KEY.fields if k not in item)
        elif not spec.required and value != spec.default:
            differs.append(f"{path}: {value!r} != default {spec.default!r}")


def test_reference_site_and_list_load(reference):
    site = config.load(str(reference / "listgate.yaml"))
    assert list(site.lists) == ["example@lists.example.org"]
    assert site.conf.verp.keys[0].id == "k1"
    assert site.state_dir == str(reference / "state")


@pytest.mark.parametrize("filename,section", [("listgate.yaml", schema.SITE),
                                              ("lists.d/example.yaml", schema.LIST)])
def test_reference_lists_every_key_with_its_default(reference, filename, section):
    site = config.load(str(reference / "listgate.yaml"))
    raw = yaml.safe_load((reference / filename).read_text())
    loaded = site.conf if filename == "listgate.yaml" else site.lists["example@lists.example.org"]
    missing: list[str] = []
    differs: list[str] = []
    _walk(section, raw, loaded, "", missing, differs)
    assert not missing, f"{filename} does not document: {missing}"
    allowed = {"subject_prefix: '[example] ' != default None"}   # null means "[NAME] "
    # the list's templates_dir is loaded resolved (null means NAME.templates beside the file)
    differs = [d for d in differs if not d.startswith(f"templates_dir: '{reference}/lists.d/example.templates'")]
    assert set(differs) <= allowed, f"{filename} shows a value other than the default: {differs}"


def test_listgate_check_accepts_the_reference(reference):
    proc = subprocess.run([sys.executable, "-m", "listgate", "-c", str(reference / "listgate.yaml"), "check"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "example@lists.example.org" in proc.stdout


def test_snippet_placeholders_must_all_be_filled():
    with pytest.raises(PostfixError, match="MILTER_SOCKET"):
        render_snippet(MAIN_SNIPPET, {"LIST_DOMAIN": "lists.example.org", "POLICY_SERVICE": "inet:127.0.0.1:1"})
    assert "@REINJECT_PORT@" not in render_snippet(MASTER_SNIPPET, {"REINJECT_PORT": 10026})


@pytest.mark.skipif(not available(), reason="needs Postfix and root")
@pytest.mark.parametrize("milter", ["unix:listgate/milter.sock", "inet:8891@127.0.0.1"])
def test_postfix_check_passes_on_the_snippets(milter):
    pf = PostfixInstance(milter=milter, policy="inet:10040@127.0.0.1", reinject_port=10026)
    try:
        pf.write_config()
        out = pf.check()
        assert "warning" not in out.lower() and "fatal" not in out.lower(), out
        proc = subprocess.run(["postconf", "-c", str(pf.config_dir), "-n"], capture_output=True, text=True,
                              timeout=30, check=True)
        assert "warning" not in proc.stderr.lower(), proc.stderr
        want_milter = milter if milter.startswith("unix:") else "inet:127.0.0.1:8891"
        assert pf.postconf("-h", "smtpd_milters").startswith("{ " + want_milter + ",")
        assert "default_action=tempfail" in pf.postconf("-h", "smtpd_milters")
        assert "inet:127.0.0.1:10040, timeout=10s, default_action=DUNNO" in pf.postconf(
            "-h", "smtpd_recipient_restrictions")
        assert pf.postconf("-h", "non_smtpd_milters") == "$smtpd_milters"
        assert pf.postconf("-h", "recipient_delimiter") == "+"
        services = pf.postconf("-M")
        assert "127.0.0.1:10026 inet n - n - - smtpd" in " ".join(services.split())
        assert "-o smtpd_milters=" in pf.postconf("-M", "-f", "127.0.0.1:10026/inet")
    finally:
        pf.close()


def test_install_quotes_the_snippets_verbatim():
    install = (ROOT / "INSTALL").read_text(encoding="utf-8")
    for path in [MAIN_SNIPPET, MASTER_SNIPPET, LMTP_SNIPPET, CONF / "exim" / "router_transport.conf",
                 CONF / "exim" / "lmtp_transport.conf"]:
        assert path.read_text(encoding="utf-8") in install, f"INSTALL does not quote {path.name} verbatim"
    for unit in sorted((CONF / "systemd").glob("*.service")):
        assert unit.read_text(encoding="utf-8") in install or unit.name in install, unit.name


# the listgate script of the Python running the tests (a venv's bin/), else PATH's
LISTGATE_BIN = next((p for p in (os.path.join(os.path.dirname(sys.executable), "listgate"), shutil.which("listgate"))
                     if p and os.access(p, os.X_OK)), None)


@pytest.mark.skipif(not shutil.which("systemd-analyze") or not LISTGATE_BIN,
                    reason="needs systemd-analyze and an installed listgate")
def test_systemd_units_verify(tmp_path):
    units = sorted((CONF / "systemd").glob("*.service"))
    assert {u.name for u in units} == {"listgate.service", "listgate-milter.service",
                                       "listgate-policy.service", "listgate-runner.service"}
    for unit in units:
        text = unit.read_text(encoding="utf-8")
        assert "Type=notify" in text and "User=listgate" in text
        # the units name /usr/local/bin/listgate (pip's place); verify against this install
        (tmp_path / unit.name).write_text(text.replace("/usr/local/bin/listgate", LISTGATE_BIN))
        proc = subprocess.run(["systemd-analyze", "verify", str(tmp_path / unit.name)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and unit.name not in proc.stderr, proc.stderr
