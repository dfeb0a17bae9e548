"""One list's broken YAML takes down that list only (issue 21, problem 2).

Daemons started with the broken file load every valid list and answer
451 4.3.0 for the broken list's addresses (running ones keep its previous
configuration); ``listgate check`` tells site errors (exit 1, also with
``--site-only``, what the units run) from list errors (exit 1, but 0 with
``--site-only``).
"""
from __future__ import annotations

import json
import os
import re
import smtplib
import subprocess
import sys
import time

import pytest

from listgate import config, routing

from harness import available

OWNER = "owner@owners.test"
ALICE = "alice@members.test"
OTHER = f"name: other\ndomain: lists.example.org\nowners: [{OWNER}]\n"
# a typo in a key: strict validation refuses the file
BROKEN = f"name: broken\ndomain: lists.example.org\nowners: [{OWNER}]\nbounce_score_treshold: 3\n"


def write(site, name, text):
    with open(os.path.join(site.lists_dir, f"{name}.yaml"), "w", encoding="utf-8") as fh:
        fh.write(text)


def check(site, *args):
    return subprocess.run([sys.executable, "-m", "listgate", "-c", site.path, "check", *args],
                          capture_output=True, text=True, timeout=60)


def test_tolerant_load_serves_the_valid_lists_and_names_the_broken_one(site):
    write(site, "other", OTHER)
    write(site, "broken", BROKEN)
    with pytest.raises(config.ConfigError):
        config.load(site.path)                          # strict, as before
    loaded = config.load(site.path, strict=False)
    assert sorted(loaded.lists) == ["demo@lists.example.org", "other@lists.example.org"]
    fpath = os.path.join(site.lists_dir, "broken.yaml")
    assert loaded.broken_lists == {"broken@lists.example.org": fpath}
    assert "bounce_score_treshold: unknown key" in loaded.list_errors[fpath][0]
    for rcpt in ("broken@lists.example.org", "broken-request@lists.example.org", "Broken-bounces@lists.example.org"):
        d = routing.decide_rcpt(loaded, rcpt, "someone@outside.test")
        assert (d.action, d.code, d.dsn) == ("tempfail", 451, "4.3.0"), rcpt
    assert routing.decide_rcpt(loaded, "other@lists.example.org", None).action == "accept"
    assert routing.decide_rcpt(loaded, "nosuch@lists.example.org", None).code == 550


def test_a_syntax_error_still_names_the_list_and_a_nameless_file_is_only_reported(site):
    write(site, "broken", "name: broken\ndomain: lists.example.org\nowners: [oops\n")
    write(site, "junk", "{{{\n")
    loaded = config.load(site.path, strict=False)
    assert list(loaded.broken_lists) == ["broken@lists.example.org"]
    assert len(loaded.list_errors) == 2 and "demo@lists.example.org" in loaded.lists


def test_a_list_only_in_a_broken_file_makes_its_domain_managed(site):
    write(site, "solo", "name: solo\ndomain: other.example\nowners: [x@y.test]\nbogus: 1\n")
    loaded = config.load(site.path, strict=False)
    assert routing.decide_rcpt(loaded, "solo@other.example", None).code == 451
    assert routing.decide_rcpt(loaded, "postmaster@other.example", None).action == "pass"


def test_watcher_starts_with_a_broken_list_and_serves_it_once_fixed(site):
    write(site, "broken", BROKEN)
    w = config.Watcher(site.path, interval=0)
    assert "broken@lists.example.org" in w.current().broken_lists
    time.sleep(0.01)
    write(site, "broken", BROKEN.replace("bounce_score_treshold", "bounce_score_threshold") + "\n")
    assert w.current().get_list("broken").bounce_score_threshold == 3.0
    assert not w.current().list_errors


def test_check_tells_site_errors_from_list_errors(site):
    write(site, "broken", BROKEN)
    out = check(site)
    assert out.returncode == 1
    assert "demo@lists.example.org: members_only" in out.stdout          # the good list is still shown
    assert "site ok, 1 list(s) valid, 1 list file(s) with errors (on stderr)" in out.stdout  # never a bare "ok"
    assert "broken.yaml:4: bounce_score_treshold: unknown key" in out.stderr
    assert ("list broken@lists.example.org has errors: no daemon runs; a daemon started now would answer "
            "451 4.3.0 for its addresses until it is fixed") in out.stderr
    out = check(site, "--site-only")
    assert out.returncode == 0 and "unknown key" in out.stderr, out.stderr
    with open(site.path, "a", encoding="utf-8") as fh:
        fh.write("no_such_site_key: 1\n")
    for args in ((), ("--site-only",)):
        out = check(site, *args)
        assert out.returncode == 1 and "no_such_site_key: unknown key" in out.stderr, out.stderr


def _daemon(site, name, started):
    """A live process whose command line names listgate, recorded as daemon ``name`` started at ``started``."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys, time; time.sleep(120)", "listgate"])
    os.makedirs(os.path.join(site.state_dir, "run"), exist_ok=True)
    with open(os.path.join(site.state_dir, "run", f"{name}.json"), "w", encoding="utf-8") as fh:
        json.dump({"daemon": name, "pid": proc.pid, "started": started}, fh)
    return proc


def test_check_and_status_tell_a_live_edit_from_a_start_with_the_broken_file(site):
    """A daemon running when the file broke keeps the list (config.Watcher); one started after answers 451."""
    write(site, "broken", BROKEN)
    mtime = os.stat(os.path.join(site.lists_dir, "broken.yaml")).st_mtime
    old = _daemon(site, "policy", mtime - 100)
    try:
        out = check(site)
        assert out.returncode == 1
        assert ("list broken@lists.example.org has errors: the running daemons (started before the file changed) "
                "keep its previous configuration") in out.stderr, out.stderr
        assert "a daemon started now would answer 451 4.3.0 for its addresses" in out.stderr
        status = subprocess.run([sys.executable, "-m", "listgate", "-c", site.path, "status", "--json"],
                                capture_output=True, text=True, timeout=60)
        problems = json.loads(status.stdout)["problems"]
        assert any("keep its previous configuration" in p for p in problems), problems
        new = _daemon(site, "milter", mtime + 100)
        try:
            out = check(site)
            assert (f"daemons started before the file changed (pid {old.pid}) keep its previous configuration "
                    f"if they had loaded a valid one, the others (pid {new.pid}) answer 451 4.3.0") in out.stderr
            old.kill()
            old.wait()
            out = check(site)
            assert ("list broken@lists.example.org not served: the running daemons started with the file's "
                    "errors and answer 451 4.3.0") in out.stderr, out.stderr
        finally:
            new.kill()
            new.wait()
    finally:
        old.kill()
        old.wait()


def test_other_commands_work_and_name_the_broken_list(site):
    write(site, "broken", BROKEN)
    run = lambda *a: subprocess.run([sys.executable, "-m", "listgate", "-c", site.path, *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=60)
    assert run("members", "add", "demo", ALICE).returncode == 0
    out = run("members", "list", "broken")
    assert out.returncode == 1 and "list broken@lists.example.org is not loaded" in out.stderr
    assert "unknown key" in out.stderr


@pytest.mark.skipif(not available(), reason="needs Postfix and root")
def test_real_postfix_serves_the_good_lists_and_defers_the_broken_one():
    from harness.stack import Stack
    with Stack(owner=OWNER, extra_lists={"other": OTHER, "broken": BROKEN}) as st:
        st.listgate("members", "add", "demo", ALICE)
        st.listgate("members", "add", "other", ALICE)
        for n, rcpt in enumerate(("demo@lists.example.org", "other@lists.example.org")):
            msg = (f"From: {ALICE}\r\nTo: {rcpt}\r\nSubject: post {n}\r\n"
                   f"Message-ID: <broken-test-{n}@members.test>\r\n\r\nhello\r\n").encode()
            assert st.send(ALICE, [rcpt], msg) == {}
        for n in range(2):
            st.wait_until(lambda: [d for d in st.sink.messages_for(ALICE)
                                   if f"<broken-test-{n}@members.test>".encode() in d.data], 60,
                          what=f"post {n} delivered")
        msg = (f"From: {ALICE}\r\nTo: broken@lists.example.org\r\nSubject: to the broken list\r\n"
               f"Message-ID: <broken-test-x@members.test>\r\n\r\nhello\r\n").encode()
        res = st.send(ALICE, ["broken@lists.example.org"], msg)
        assert isinstance(res, smtplib.SMTPRecipientsRefused), res
        code, text = res.recipients["broken@lists.example.org"]
        assert code == 451 and b"4.3.0" in text, (code, text)
        log = st.serve_text()
        assert re.search(r'event=list_refused msg="list not served \(451 4\.3\.0 at RCPT\) until its file is '
                         r'fixed" list=broken@lists\.example\.org file=\S+broken\.yaml', log), log[-3000:]
