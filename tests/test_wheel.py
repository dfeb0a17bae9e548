"""The built wheel, installed into a fresh venv outside the checkout, carries what INSTALL uses (issue 21, problem 3).

``init`` finds its templates, ``check`` passes, ``members add`` run as root
writes as the instance's user, ``status`` reads, ``conf-path`` names the
installed conf/ (the reference YAML, Postfix and Exim snippets, units),
INSTALL, LICENSE and docs, and listgate(1) is the CLI's own help.
"""
from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from dns_helpers import TEST_DNS
from wheel_helpers import CHECKOUT


def run(venv, *args, cwd):
    return subprocess.run([str(venv / "bin" / "listgate"), *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd, env={k: v for k, v in os.environ.items() if k != "LISTGATE_CONFIG"})


@pytest.fixture
def instance_dir():
    """A directory any user can reach (pytest's own tmp dirs are 0700, root's): the instance goes in it."""
    top = Path(tempfile.mkdtemp(prefix="lg-wheel-inst-"))
    os.chmod(top, 0o711)
    yield top
    shutil.rmtree(top, ignore_errors=True)


def owned_by_others(top: Path, uid: int) -> list[str]:
    return [str(p) for p in [top, *top.rglob("*")] if p.lstat().st_uid != uid]


def test_init_check_members_add_as_root_and_status_from_the_installed_wheel(installed_wheel, instance_dir):
    """Issue 21's "done when": init, check, members add as root (files stay the instance user's), status."""
    out = run(installed_wheel, "init", str(instance_dir / "inst"), cwd=instance_dir)
    assert out.returncode == 0, out.stderr
    inst = instance_dir / "inst"
    site = str(inst / "listgate.yaml")
    with open(site, "a", encoding="utf-8") as fh:
        fh.write(TEST_DNS)               # no DNS on a test machine: as in every test
    # the instance belongs to its own user, as INSTALL section 2 makes it (root when not run as root)
    user = pwd.getpwnam("nobody") if os.geteuid() == 0 else pwd.getpwuid(os.geteuid())
    for path in [inst, *inst.rglob("*")]:
        os.lchown(path, user.pw_uid, user.pw_gid)
    out = run(installed_wheel, "-c", site, "check", cwd=instance_dir)
    assert out.returncode == 0 and "demo@lists.example.org: members_only" in out.stdout, out.stderr
    out = run(installed_wheel, "-c", site, "members", "add", "demo", "alice@example.org", cwd=instance_dir)
    assert out.returncode == 0, out.stderr
    assert list((inst / "lists").iterdir()), "members add made the list's store"
    assert owned_by_others(inst, user.pw_uid) == []   # run as root, it wrote as the instance's user
    out = run(installed_wheel, "-c", site, "members", "list", "demo", cwd=instance_dir)
    assert "alice@example.org" in out.stdout, out.stderr
    out = run(installed_wheel, "-c", site, "status", "--json", cwd=instance_dir)
    assert out.returncode in (0, 1, 2) and "Traceback" not in out.stderr, out.stderr   # 1: no runner runs
    assert json.loads(out.stdout)["queues"]["in"]["waiting"] == 0
    out = run(installed_wheel, "-c", site, "queue", "ls", cwd=instance_dir)
    assert out.returncode == 0 and "all queues are empty" in out.stdout, out.stderr
    assert owned_by_others(inst, user.pw_uid) == []
    out = run(installed_wheel, "-c", site, "notices", "show", "welcome", cwd=instance_dir)   # package data
    assert out.returncode == 0 and out.stdout.startswith("Subject: Welcome to $list"), out.stderr
    # the installed package is the wheel's, not this checkout's
    out = subprocess.run([str(installed_wheel / "bin" / "python"), "-c", "import listgate; print(listgate.__file__)"],
                         capture_output=True, text=True, cwd=instance_dir, timeout=60)
    assert str(installed_wheel) in out.stdout and str(CHECKOUT) not in out.stdout


def test_conf_path_holds_what_install_uses(installed_wheel, tmp_path):
    out = run(installed_wheel, "conf-path", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    share = Path(out.stdout.strip())
    assert share.is_relative_to(installed_wheel)
    repo_conf = sorted(p.relative_to(CHECKOUT) for p in (CHECKOUT / "conf").rglob("*") if p.is_file())
    assert repo_conf and sorted(p.relative_to(share) for p in (share / "conf").rglob("*") if p.is_file()) == repo_conf
    for name in ("INSTALL", "LICENSE", "README.md", "docs/DESIGN.md", "docs/ARCHITECTURE.md"):
        assert (share / name).read_bytes() == (CHECKOUT / name).read_bytes(), name


def test_man_page_is_the_cli_help(installed_wheel):
    page = (installed_wheel / "share" / "man" / "man1" / "listgate.1").read_text(encoding="utf-8")
    assert page.startswith(".TH LISTGATE")
    for words in (r"\-\-as\-root", r"\-\-site\-only", r"conf\-path", "members", "held"):
        assert words in page, words
    # man(1) renders it without complaint when man is installed
    if os.path.exists("/usr/bin/man"):
        out = subprocess.run(["man", "-l", "-Tutf8", str(installed_wheel / "share" / "man" / "man1" / "listgate.1")],
                             capture_output=True, timeout=60)
        assert out.returncode == 0 and b"listgate" in out.stdout


def test_the_man_page_in_the_repository_is_what_the_cli_says():
    """docs/listgate.1 is scripts/make-man's output for this CLI: run it after changing an option."""
    import importlib.machinery
    import importlib.util
    loader = importlib.machinery.SourceFileLoader("make_man", str(CHECKOUT / "scripts" / "make-man"))
    spec = importlib.util.spec_from_loader("make_man", loader)
    make_man = importlib.util.module_from_spec(spec)
    loader.exec_module(make_man)
    assert (CHECKOUT / "docs" / "listgate.1").read_text(encoding="utf-8") == make_man.render(), \
        "docs/listgate.1 is stale: run scripts/make-man"
