"""The built wheel, installed into a fresh venv outside the checkout, carries what INSTALL uses (issue 21, problem 3).

``init`` finds its templates, ``check`` passes, ``conf-path`` names the
installed conf/ (the reference YAML, Postfix and Exim snippets, units),
INSTALL, LICENSE and docs, and listgate(1) is the CLI's own help.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from wheel_helpers import CHECKOUT


def run(venv, *args, cwd):
    return subprocess.run([str(venv / "bin" / "listgate"), *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd, env={k: v for k, v in os.environ.items() if k != "LISTGATE_CONFIG"})


def test_init_check_and_first_steps_from_the_installed_wheel(installed_wheel, tmp_path):
    out = run(installed_wheel, "init", str(tmp_path / "inst"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    site = str(tmp_path / "inst" / "listgate.yaml")
    out = run(installed_wheel, "-c", site, "check", cwd=tmp_path)
    assert out.returncode == 0 and "demo@lists.example.org: members_only" in out.stdout, out.stderr
    # --force: no DNS here to say example.org takes mail (the check has its own tests, test_dns_subscriptions)
    out = run(installed_wheel, "-c", site, "members", "add", "--force", "demo", "alice@example.org", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    out = run(installed_wheel, "-c", site, "members", "list", "demo", cwd=tmp_path)
    assert "alice@example.org" in out.stdout, out.stderr
    out = run(installed_wheel, "-c", site, "queue", "ls", cwd=tmp_path)
    assert out.returncode == 0 and "all queues are empty" in out.stdout, out.stderr
    # the installed package is the wheel's, not this checkout's
    out = subprocess.run([str(installed_wheel / "bin" / "python"), "-c", "import listgate; print(listgate.__file__)"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=60)
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
