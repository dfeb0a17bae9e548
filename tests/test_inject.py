"""The end-of-message core (``listgate.inject``) and ``listgate inject`` (Exim's hand-off).

Real routing, real SQLite stores, real qfiles; failing disks are real tmpfs
mounts (skipped where mounting is not possible).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from listgate import inject, verp
from listgate.addresses import ListAddress
from listgate.queue import Switchboard
from listgate.routing import RcptDecision, decide_rcpt
from listgate.store import open_store

from conftest import make_site
from milter_helpers import REPO, fill, remount, tmpfs

LIST = "demo@lists.example.org"
MSG = (b"From: Alice <alice@example.net>\r\nSubject: hi\r\nMessage-ID: <i1@example.net>\r\n\r\n"
       b"body \xff\x00 bytes\r\n")


@pytest.fixture
def site(tmp_path):
    return make_site(tmp_path / "inst", owner="owner@lists.example.org")


def routed(site, *rcpts, sender="alice@example.net"):
    return [inject.Routed(f"<{r}>", decide_rcpt(site, r, sender=sender)) for r in rcpts]


def queued(site):
    sb = Switchboard.for_site(site, "in")
    return [sb.peek(q) for q in sb.ids()]


def leftovers(qdir: Path) -> list[str]:
    """Message files in a queue directory: stored, held or being written."""
    return [p.name for p in qdir.rglob("*") if p.is_file() and p.name.endswith((".qf", ".held", ".tmp"))]


def run_inject(site, stdin: bytes, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "listgate", "-c", site.path, "inject", *args],
                          input=stdin, capture_output=True, timeout=60, cwd=str(REPO),
                          env={**os.environ, "PYTHONPATH": str(REPO)})


# -- the core ---------------------------------------------------------------------

def test_one_qfile_per_list_role_with_metadata(site):
    out = inject.store_message(site, MSG, "alice@example.net",
                               routed(site, LIST, "DEMO@lists.example.org", "demo-owner@lists.example.org"),
                               mta_queue_id="QID1", client_address="192.0.2.1", client_name="c.example")
    assert [(s.role, s.outcome, s.recipients) for s in out] == [
        ("post", "queued", [LIST, "DEMO@lists.example.org"]),
        ("owner", "queued", ["demo-owner@lists.example.org"])]
    post, owner = queued(site)
    assert post.msg == MSG and owner.msg == MSG
    assert post.meta["list"] == LIST and post.meta["role"] == "post" and post.meta["extension"] is None
    assert post.meta["envelope_sender"] == "alice@example.net"
    assert post.meta["mta_queue_id"] == "QID1" and post.meta["client_address"] == "192.0.2.1"
    assert post.meta["client_name"] == "c.example"
    assert post.meta["arrival"] == owner.meta["arrival"]


def test_retry_is_stored_again(site):
    """No duplicate look at SMTP time: the runner drops the second copy (test_duplicates)."""
    r = routed(site, LIST)
    outcomes = [inject.store_message(site, MSG, "a@example.net", r)[0].outcome for _ in range(2)]
    assert outcomes == ["queued", "queued"] and len(queued(site)) == 2


def test_discard_decision_stores_nothing(site):
    d = RcptDecision("discard", address=ListAddress("demo", "lists.example.org", "post"))
    out = inject.store_message(site, MSG, "a@example.net", [inject.Routed("<demo@lists.example.org>", d)])
    assert out[0].outcome == "discarded" and queued(site) == []


def test_refuses_unrouted_recipients(site):
    with pytest.raises(ValueError):
        inject.store_message(site, MSG, "a@example.net", routed(site, "bob@example.com"))


def test_full_queue_disk_raises_not_stored_and_commits_nothing(site):
    qdir = Path(site.queue_dir)
    with tmpfs(qdir, size="256k"):
        (qdir / "in").mkdir()
        fill(qdir)
        with pytest.raises(inject.NotStored):
            inject.store_message(site, MSG + b"x" * 300_000, "a@example.net", routed(site, LIST))
        assert leftovers(qdir / "in") == []      # no qfile, no partial or temporary file
        (qdir / "filler").unlink()
        # space again: the retry is stored
        assert inject.store_message(site, MSG, "a@example.net", routed(site, LIST))[0].outcome == "queued"


def test_check_message():
    inject.check_message(MSG)
    inject.check_message(b"From alice@example.net Sun Nov 29 09:00:00 2026\nSubject: x\n\nb\n")
    for bad in (b"", b"\r\n\r\n", b"no header here\n\nbody", b"\x00\x01binary"):
        with pytest.raises(inject.Unusable):
            inject.check_message(bad)
    assert inject.strip_envelope_line(b"From a@b Sun\nX: y\n") == b"X: y\n"


# -- bounces: the engine, fed a real bounce ---------------------------------------

def corpus_bounce(corpus, name: str) -> bytes:
    return (corpus / name).read_bytes()


@pytest.mark.parametrize("via_verp", [False, True])
def test_corpus_bounce_scores_as_classify_predicts(site, corpus, via_verp):
    from listgate.bounce.classify import classify
    lc = site.lists[LIST]
    member = "userx@example.com"
    open_store(site, LIST).add_member(member)
    msg = corpus_bounce(corpus, "flufl.bounce/dsn_13.txt")
    rcpt = verp.member_bounce_address(site, lc, member) if via_verp else "demo-bounces@lists.example.org"
    # what `listgate classify` reports for this message
    predicted = classify(msg, envelope_recipient=rcpt, verp_address=member if via_verp else None)
    [failure] = [f for f in predicted.failures if f.address is None or f.address.lower() == member]
    weight = lc.bounce_weights[failure.bounce_class]
    out = inject.store_message(site, msg, "", routed(site, rcpt, sender=""), mta_queue_id="BQ1")
    assert [s.outcome for s in out] == ["bounce"]
    got = open_store(site, LIST).get_member(member)
    # a plain-address DSN naming a member who gets VERP is evidence, never a score (issue 20)
    assert got.bounce_score == pytest.approx(weight if via_verp else 0.0)
    assert open_store(site, LIST).events(member)[0].action == ("scored" if via_verp else "unverified")
    assert weight > 0 and failure.bounce_class == "hard"
    assert queued(site) == []          # bounces never go to the in queue


def test_bounce_with_read_only_store_is_not_stored(site, corpus):
    lists = Path(site.state_dir) / "lists"
    open_store(site, LIST).add_member("userx@example.com")
    open_store(site, LIST).close()
    msg = corpus_bounce(corpus, "flufl.bounce/dsn_13.txt")
    r = routed(site, verp.member_bounce_address(site, site.lists[LIST], "userx@example.com"), sender="")
    # the same database, on a mount that turns read-only
    mnt = lists
    data = {p.name: p.read_bytes() for p in lists.iterdir()}
    with tmpfs(mnt):
        for name, blob in data.items():
            (mnt / name).write_bytes(blob)
        remount(mnt, "ro")
        with pytest.raises(inject.NotStored):
            inject.store_message(site, msg, "", r)
        remount(mnt, "rw")
        open_store(site, LIST).close()    # a connection opened while read-only stays read-only
        assert open_store(site, LIST).get_member("userx@example.com").bounce_score == 0
        inject.store_message(site, msg, "", r)
        assert open_store(site, LIST).get_member("userx@example.com").bounce_score == 1.0
        open_store(site, LIST).close()


# -- listgate inject ----------------------------------------------------------------

def test_cli_stores_and_exits_0(site):
    mbox = b"From alice@example.net Sun Nov 29 09:00:00 2026\n" + MSG.replace(b"\r\n", b"\n")
    p = run_inject(site, mbox, "--recipient", LIST, "--sender", "alice@example.net",
                   "--client-address", "192.0.2.5", "--queue-id", "1abcDE-000001-XY")
    assert p.returncode == 0, p.stderr
    [qf] = queued(site)
    assert qf.msg == MSG.replace(b"\r\n", b"\n")          # the mbox From line is not part of the message
    assert qf.meta["mta_queue_id"] == "1abcDE-000001-XY" and qf.meta["client_address"] == "192.0.2.5"
    # Exim retrying the same delivery: stored again, for the runner to drop (test_duplicates)
    assert run_inject(site, mbox, "--recipient", LIST, "--sender", "alice@example.net").returncode == 0
    assert len(queued(site)) == 2


def test_cli_exit_codes(site):
    assert run_inject(site, b"", "-r", LIST).returncode == 65
    assert run_inject(site, b"garbage without headers\n", "-r", LIST).returncode == 65
    p = run_inject(site, MSG, "-r", "nosuch@lists.example.org")
    assert p.returncode == 67 and "no such list address" in p.stderr.decode()
    assert run_inject(site, MSG, "-r", "bob@example.com").returncode == 67
    assert run_inject(site, MSG, "-r", LIST, "-r", "nosuch@lists.example.org").returncode == 67
    assert queued(site) == []     # nothing stored unless every recipient routes


def test_cli_non_member_reject_exits_77(site):
    path = Path(site.list_files[LIST])
    path.write_text(path.read_text().replace("non_member_action: hold", "non_member_action: reject"))
    p = run_inject(site, MSG, "-r", LIST, "-f", "stranger@example.net")
    assert p.returncode == 77 and "5.7.1" in p.stderr.decode()
    # the null sender is nobody's: no member may be impersonated by leaving it out
    assert run_inject(site, MSG, "-r", LIST, "-f", "").returncode == 77
    assert run_inject(site, MSG, "-r", LIST, "-f", "<>").returncode == 77
    assert queued(site) == []


def test_cli_full_disk_exits_75_and_retry_succeeds(site):
    qdir = Path(site.queue_dir)
    with tmpfs(qdir, size="256k"):
        (qdir / "in").mkdir()
        fill(qdir)
        p = run_inject(site, MSG + b"y" * 300_000, "-r", LIST, "-f", "alice@example.net")
        assert p.returncode == 75, p.stderr
        assert leftovers(qdir / "in") == []
        (qdir / "filler").unlink()
        p = run_inject(site, MSG, "-r", LIST, "-f", "alice@example.net")
        assert p.returncode == 0, p.stderr
        assert len(queued(site)) == 1


def test_cli_store_unavailable_exits_75(site, corpus):
    db = Path(site.state_dir) / "lists" / f"{LIST}.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    for p in db.parent.glob(f"{LIST}.db*"):
        p.unlink()
    db.mkdir()
    # a non-member post needs the members table: routing answers tempfail
    assert run_inject(site, MSG, "-r", LIST, "-f", "stranger@example.net").returncode == 75
    # a bounce is registered inline, in the store: not now
    dsn = corpus_bounce(corpus, "flufl.bounce/dsn_13.txt")
    assert run_inject(site, dsn, "-r", "demo-bounces@lists.example.org", "-f", "").returncode == 75
    # owner mail needs no store until the runner takes it
    assert run_inject(site, MSG, "-r", "demo-owner@lists.example.org").returncode == 0
    assert [q.meta["role"] for q in queued(site)] == ["owner"]
