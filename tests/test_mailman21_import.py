"""``listgate import mailman21``: a whole fake Mailman 2.1 tree (three lists, every kind of record,
a few corrupt files) written in the exact Python 2 formats, imported into a real instance."""
from __future__ import annotations

import base64
import io
import json
import os
import socket
from contextlib import redirect_stdout

import pytest

from listgate import clock, config
from listgate.app import moderation
from listgate.cli import main
from listgate.migrate.queues import read_marshal
from listgate.migrate.unpickle import UnsafePickle, loads
from listgate.queue import Switchboard
from listgate.routing import decide_rcpt
from listgate.store import open_store

from conftest import BOTH_BACKENDS
from mailman21_helpers import bounce_info, dumps, message, py2_marshal, user_desc, write

NOW = 1_800_000_000.0
DOMAIN = "lists.example.org"
C_BOB = "b0b" + "0" * 37               # Mailman cookies: SHA-1 hexdigests
C_SUB, C_UNSUB, C_MOVE, C_PROBE, C_HELD, C_OLD = ("1" * 40, "2" * 40, "3" * 40, "4" * 40, "5" * 40, "6" * 40)
C_SITE_E, C_SITE_S, C_SITE_U, C_SITE_S2, C_SITE_H = ("a" * 40, "c" * 40, "d" * 40, "e" * 40, "f" * 40)
EVIL = b"cos\nsystem\n(S'touch /tmp/listgate-mailman21-pwned'\ntR."


def config_pck(real_name, members, *, digest=None, protocol=2, **extra) -> bytes:
    """A list's ``config.pck``: ``members`` address -> dict(status, name, options, lang, bounce)."""
    conf = {"real_name": real_name, "host_name": DOMAIN, "description": f"{real_name} list",
            "owner": ["owner@example.com"], "moderator": ["mod@example.com"], "subject_prefix": f"[{real_name}] ",
            "max_message_size": 40, "generic_nonmember_action": 1, "default_member_moderation": 0,
            "member_moderation_action": 0, "accept_these_nonmembers": ["friend@example.net"],
            "reply_goes_to_list": 1, "bounce_processing": 1, "bounce_score_threshold": 4.0,
            "bounce_info_stale_after": 7 * 86400, "bounce_you_are_disabled_warnings": 2,
            "bounce_you_are_disabled_warnings_interval": 5 * 86400, "bounce_notify_owner_on_disable": 1,
            "bounce_notify_owner_on_removal": 0, "bounce_unrecognized_goes_to_list_owner": 1,
            "admin_notify_mchanges": 0, "preferred_language": "en", "password": "0beec7b5ea3f",
            "members": {}, "digest_members": {}, "usernames": {}, "user_options": {}, "language": {},
            "delivery_status": {}, "bounce_info": {}, "passwords": {}, **extra}
    for table, group in (("members", members), ("digest_members", digest or {})):
        for address, m in group.items():
            conf[table][address.lower()] = 0 if address == address.lower() else address
            conf["usernames"][address.lower()] = m.get("name", "")
            conf["user_options"][address.lower()] = m.get("options", 0)
            conf["language"][address.lower()] = m.get("lang", "en")
            if "status" in m:
                conf["delivery_status"][address.lower()] = m["status"]
            if "bounce" in m:
                conf["bounce_info"][address.lower()] = m["bounce"]
    return dumps(conf, protocol)


def pending_pck(records: dict, evictions: dict, protocol=1) -> bytes:
    return dumps({**records, "evictions": evictions, "version": 2}, protocol)


def post(subject, sender="ann@example.com", body="Hello\n"):
    return message([("From", sender), ("To", f"alpha@{DOMAIN}"), ("Subject", subject),
                    ("Message-ID", f"<{subject.replace(' ', '.')}@example.com>")], body)


def build_tree(root) -> str:
    """The fake Mailman 2.1 tree; returns PREFIX."""
    p = str(root)
    later = NOW + 86400
    # alpha: 2.1.5+ layout, every member kind, a per-list pending.pck and a held post (pickled)
    alpha = {
        "ann@example.com": {"name": "\u00c5nn".encode("utf-8").decode("latin-1")},
        "Bob@Example.com": {"status": (4, NOW - 3000), "bounce": bounce_info(2.5, (2027, 1, 14), 2, (2027, 1, 10), C_BOB)},
        "eve@example.com": {"options": 128, "lang": "de"},
        "frank@example.com": {"status": (2, NOW - 5000), "options": 1},
    }
    digest = {"carl@example.com": {"name": "Carl"}, "dora@example.com": {"options": 8}}
    write(f"{p}/lists/alpha/config.pck", config_pck("Alpha", alpha, digest=digest, protocol=2))
    held_post = post("held one", sender="stranger@example.net")
    write(f"{p}/data/heldmsg-alpha-1.pck", dumps(held_post, 1))
    write(f"{p}/lists/alpha/request.pck", dumps({
        1: (1, (NOW - 600, "stranger@example.net", "held one", "Post by non-member", "heldmsg-alpha-1.pck",
                {"listname": "alpha"})),
        2: (2, (NOW - 500, "wants@example.com", "Wanda", "pw", 0, "en")),
        "version": 1}, 1))
    probe = message([("From", f"alpha-bounces@{DOMAIN}"), ("Message-ID", "<probe.1@lists.example.org>")], "probe\n")
    write(f"{p}/lists/alpha/pending.pck", pending_pck({
        C_SUB: ("S", user_desc("new@example.com", "New Person", 1, "en")),
        C_UNSUB: ("U", "ann@example.com"),
        C_MOVE: ("C", "ann@example.com", "ann@new.example.com", 0),
        C_BOB: ("E", "alpha", "bob@example.com"),
        C_PROBE: ("P", "carl@example.com", probe),
        C_HELD: ("H", 1),
        C_OLD: ("U", "frank@example.com"),
    }, {C_SUB: later, C_UNSUB: later, C_MOVE: later, C_BOB: later, C_PROBE: later, C_HELD: later,
        C_OLD: NOW - 10}))
    # beta: config.pck damaged, config.pck.last good (protocol 0); a held post kept as text
    write(f"{p}/lists/beta/config.pck", b"\x80\x02}q\x00(damaged")
    write(f"{p}/lists/beta/config.pck.last", config_pck("Beta", {"gina@example.org": {},
                                                                 "ann@example.com": {}}, protocol=0))
    write(f"{p}/data/heldmsg-beta-1.txt", b"From: x@example.net\nSubject: held two\nMessage-ID: <h2@x>\n\nbody\n")
    write(f"{p}/lists/beta/request.pck", dumps({1: (1, (NOW - 300, "x@example.net", "held two", "Too big",
                                                           "heldmsg-beta-1.txt", {}))}, 1))
    # gamma: protocol 1
    write(f"{p}/lists/gamma/config.pck", config_pck("Gamma", {"hal@example.net": {
        "status": (4, NOW - 100), "bounce": bounce_info(5.0, (2027, 1, 15), 3, (1970, 1, 2), C_SITE_E)}},
        protocol=1))
    # the site-wide pending.pck of Mailman before 2.1.5
    write(f"{p}/data/pending.pck", pending_pck({
        C_SITE_E: ("E", "gamma", "hal@example.net"),           # names its list
        C_SITE_S: ("S", user_desc("ann@example.com", "Ann", 0, "en")),   # ann is on alpha and beta: gamma
        C_SITE_U: ("U", "zed@nowhere.example"),                 # on no list: unplaced
        C_SITE_S2: ("S", user_desc("newbie@example.com", "", 0, "en")),  # on none: any of three: unplaced
        C_SITE_H: ("H", 1),                                     # alpha and beta both hold id 1: unplaced
    }, {c: later for c in (C_SITE_E, C_SITE_S, C_SITE_U, C_SITE_S2, C_SITE_H)}, protocol=0))
    # queue entries: 2.1.5+ single files (binary and text pickles), .bak, older pairs, corrupt ones
    q = f"{p}/qfiles"
    write(f"{q}/in/{NOW - 50!r}+aa.pck", dumps(post("queued in"), 1) + dumps(
        {"listname": "alpha", "tolist": 1, "received_time": NOW - 50, "version": 3, "_parsemsg": False}, 1))
    text = b"From: ann@example.com\nTo: alpha@lists.example.org\nSubject: queued out\nMessage-ID: <qo@x>\n\nbody\n"
    write(f"{q}/out/{NOW - 40!r}+bb.pck", dumps(text.decode("latin-1"), 0) + dumps(
        {"listname": "alpha", "recips": ["ann@example.com", "eve@example.com"], "received_time": NOW - 40,
         "_parsemsg": True, "version": 3}, 0))
    write(f"{q}/virgin/{NOW - 45!r}+cc.bak", dumps(post("virgin note"), 1) + dumps(
        {"listname": "gamma", "recips": ["hal@example.net"], "received_time": NOW - 45}, 1))
    write(f"{q}/shunt/{NOW - 60!r}+dd.msg", b"From: a@example.com\nSubject: shunted\n\nold\n")
    write(f"{q}/shunt/{NOW - 60!r}+dd.db", py2_marshal({"listname": "beta", "tolist": 1, "received_time": NOW - 60}))
    write(f"{q}/in/{NOW - 30!r}+ee.pck", b"this is not a pickle at all")
    write(f"{q}/in/{NOW - 20!r}+ff.pck", EVIL + dumps({"listname": "alpha"}, 0))
    write(f"{q}/archive/{NOW - 10!r}+gg.pck", dumps(post("archived"), 1) + dumps({"listname": "alpha"}, 1))
    os.makedirs(f"{p}/locks", exist_ok=True)
    return p


def run_cli(site, *args) -> tuple[int, dict]:
    out = io.StringIO()
    with redirect_stdout(out):
        status = main(["-c", site.path, "import", "mailman21", *args, "--json"])
    return status, json.loads(out.getvalue())


@pytest.fixture
def tree(tmp_path):
    clock.freeze(NOW)
    return build_tree(tmp_path / "mailman")


def test_os_system_is_refused_and_nothing_runs(tmp_path):
    marker = "/tmp/listgate-mailman21-pwned"
    if os.path.exists(marker):
        os.unlink(marker)
    for data in (EVIL, b"\x80\x02cposix\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03.",
                 b"csubprocess\nPopen\n(S'true'\ntR."):
        with pytest.raises(UnsafePickle, match="refusing to load"):
            loads(data)
    assert not os.path.exists(marker)


def test_python2_formats_read_back(tmp_path):
    for protocol in (0, 1, 2):
        msg = loads(dumps(post("p"), protocol))
        assert msg.mm_class == "Mailman.Message.Message" and msg.get("_payload") == "Hello\n"
        info = loads(dumps(bounce_info(1.0, (2027, 1, 1), 3, (1970, 1, 2), C_BOB), protocol))
        assert info.mm_class == "Mailman.Bouncer._BounceInfo" and info.get("cookie") == C_BOB
    assert read_marshal(py2_marshal({"a": [1, 2.5, None, True], "b": ("x",)})) == {"a": [1, 2.5, None, True],
                                                                                  "b": ("x",)}
    with pytest.raises(ValueError):
        read_marshal(b"c\x00\x00")        # a code object is not plain data


def test_whole_tree(site, tree):
    status, s = run_cli(site, tree)
    assert status == 1 and not s["complete"]           # some records cannot be placed: reported
    site = config.load(site.path)
    assert main(["-c", site.path, "check"]) == 0
    assert s["lists"]["beta"]["source"] == "config.pck.last" and "config.pck.last" in s["lists"]["beta"]["fallback"]
    assert {n: s["lists"][n]["yaml"] for n in ("alpha", "beta", "gamma")} == dict.fromkeys(
        ("alpha", "beta", "gamma"), "written")
    alpha = site.get_list("alpha")
    assert (alpha.owners, alpha.moderators, alpha.subject_prefix, alpha.max_message_size) == (
        ("owner@example.com",), ("mod@example.com",), "[Alpha] ", 40 * 1024)
    assert (alpha.posting_policy, alpha.non_member_action, alpha.bounce_score_threshold,
            alpha.bounce_you_are_disabled_warnings_interval, alpha.bounce_notify_owner_on_removal) == (
        "members_only", "hold", 4.0, 5 * 86400, False)
    unmapped = "\n".join(s["lists"]["alpha"]["unmapped"])
    assert "reply_goes_to_list = 1" in unmapped and "accept_these_nonmembers = ['friend@example.net']" in unmapped
    assert "password = (secret, not shown)" in unmapped
    # members, by status, with digest mode, moderation, language and bounce info
    assert s["members"] == {"enabled": 6, "by_bounce": 2, "by_user": 1}
    assert (s["digest_members"], s["moderated_members"]) == (2, 1)
    store = open_store(site, f"alpha@{DOMAIN}")
    bob, carl, dora, eve, frank = (store.get_member(f"{n}@example.com") for n in ("Bob", "carl", "dora", "eve", "frank"))
    assert store.get_member("ann@example.com").display_name == "\u00c5nn"
    assert bob.address == "Bob@Example.com" and bob.delivery_status == "by_bounce"
    assert (bob.bounce_score, bob.last_bounce_day, bob.notices_left, bob.status_changed_at) == (
        2.5, "2027-01-14", 2, NOW - 3000)
    assert bob.re_enable_token == C_BOB
    assert (carl.delivery_mode, dora.delivery_mode, eve.moderated, eve.language) == (
        "mime_digest", "plain_digest", True, "de")
    assert frank.delivery_status == "by_user" and frank.status_changed_at == NOW - 5000
    # pending records keep Mailman's tokens; the expired one is reported, not moved
    assert store.peek_pending(C_SUB).payload["address"] == "new@example.com"
    assert store.peek_pending(C_UNSUB).type == "unsubscription"
    assert store.peek_pending(C_MOVE).payload == {"old": "ann@example.com", "new": "ann@new.example.com"}
    assert store.peek_pending(C_PROBE).payload["message_id"] == "<probe.1@lists.example.org>"
    assert store.peek_pending(C_OLD) is None and s["pending_expired"] == 1
    gamma = open_store(site, f"gamma@{DOMAIN}")
    assert gamma.peek_pending(C_SITE_E).type == "re_enable"            # site-wide: names its list
    assert gamma.peek_pending(C_SITE_S).payload["address"] == "ann@example.com"   # the one list ann is not on
    assert s["pending_placed"] == 8        # 6 of alpha (the held one with its hold) + 2 site-wide
    # unplaced: zed (no list), newbie (three lists), H 1 (two lists), wanda's subscription waiting for the admin
    unplaced = [p for p in s["problems"] if p["what"] != "queue entry (moved to bad)"]
    assert s["pending_unplaced"] == 4 == len(unplaced)
    report = json.load(open(s["report_file"]))
    assert {C_SITE_U, C_SITE_S2, C_SITE_H} <= {p["content"]["token"] for p in report["problems"]
                                               if isinstance(p.get("content"), dict) and "token" in p["content"]}
    # held messages: approvable as before; Mailman's H cookie is the hold's token
    assert s["held_messages"] == 2
    held = store.peek_pending(C_HELD)
    assert held.type == "held_message" and b"Subject: held one" in base64.b64decode(held.payload["message"])
    assert "approved" in moderation.moderate(site, alpha, C_HELD, "approve")
    beta_holds = open_store(site, f"beta@{DOMAIN}").pending("held_message")
    assert len(beta_holds) == 1 and beta_holds[0].payload["subject"] == "held two"
    # a Mailman token routes at RCPT as L-confirm+TOKEN
    assert decide_rcpt(site, f"alpha-confirm+{C_SUB}@{DOMAIN}").action == "accept"
    assert decide_rcpt(site, f"alpha-confirm+{'9' * 40}@{DOMAIN}").action == "accept"   # shape ok; token checked later
    probe = decide_rcpt(site, f"alpha-bounces+{C_PROBE}@{DOMAIN}")          # Mailman's probe address
    assert probe.action == "accept" and probe.verp.kind == "probe" and probe.verp.token == C_PROBE
    # queue entries: one qfile each, arrival kept; unreadable ones in bad with the reason
    assert (s["queue_moved"], s["queue_refused"]) == (4, 3)
    boards = {n: Switchboard.for_site(site, n) for n in ("in", "out", "virgin", "shunt", "bad")}
    inq = boards["in"].peek(boards["in"].ids()[0])
    assert inq.meta["list"] == f"alpha@{DOMAIN}" and inq.meta["role"] == "post" and inq.meta["arrival"] == NOW - 50
    assert b"Subject: queued in" in inq.msg
    outs = [boards["out"].peek(i) for i in boards["out"].ids()]
    mm_out = [q for q in outs if b"queued out" in q.msg]
    assert len(mm_out) == 1 and [d["rcpt"] for d in mm_out[0].meta["deliveries"]] == [
        "ann@example.com", "eve@example.com"]
    assert mm_out[0].meta["deliveries"][0]["sender"].startswith("alpha-bounces+ann=example.com.")
    assert len(boards["virgin"].ids()) >= 1 and len(boards["shunt"].ids()) == 1
    bad = [boards["bad"].peek(i) for i in boards["bad"].ids()]
    reasons = " | ".join(q.meta["reason"] for q in bad)
    assert len(bad) == 3 and "refusing to load os.system" in reasons and "archive" in reasons


def test_second_run_changes_nothing(site, tree):
    run_cli(site, tree)
    site = config.load(site.path)
    before = _state(site)
    status, s = run_cli(site, tree)
    assert status == 0 or s["pending_unplaced"]            # what was unplaced is still reported
    assert s["members"] == {} and s["pending_placed"] == 0 and s["held_messages"] == 0 and s["queue_moved"] == 0
    assert s["already_done"] > 0
    assert {n: s["lists"][n]["yaml"] for n in ("alpha", "beta", "gamma")} == dict.fromkeys(
        ("alpha", "beta", "gamma"), "unchanged")
    assert _state(config.load(site.path)) == before


def test_a_member_who_left_after_the_move_is_not_brought_back(site, tree):
    run_cli(site, tree)
    site = config.load(site.path)
    open_store(site, f"alpha@{DOMAIN}").remove_member("eve@example.com")
    run_cli(site, tree)
    assert open_store(site, f"alpha@{DOMAIN}").get_member("eve@example.com") is None


def test_dry_run_writes_nothing(site, tree):
    status, s = run_cli(site, tree, "--dry-run")
    assert status == 1 and s["dry_run"] and s["members"]["enabled"] == 6 and s["queue_moved"] == 4
    assert sorted(os.listdir(site.lists_dir)) == ["demo.yaml"]
    assert not os.path.exists(os.path.join(site.state_dir, "import"))
    assert all(not Switchboard.for_site(site, n).ids() for n in ("in", "out", "bad"))


def test_existing_list_file_is_kept_without_force(site, tree):
    path = os.path.join(site.lists_dir, "gamma.yaml")
    with open(path, "w") as fp:
        fp.write(f"name: gamma\ndomain: {DOMAIN}\nowners: [me@example.com]\n")
    status, s = run_cli(site, tree, "--list", "gamma")
    assert s["lists"]["gamma"]["yaml"].startswith("kept") and "me@example.com" in open(path).read()
    assert set(s["lists"]) == {"gamma"}
    status, s = run_cli(site, tree, "--list", "gamma", "--force")
    assert s["lists"]["gamma"]["yaml"] == "written" and "owner@example.com" in open(path).read()


def test_live_mailman_lock_refuses(site, tree, capsys):
    lock = os.path.join(tree, "locks", "alpha.lock")
    with open(lock, "w") as fp:
        fp.write(f"{lock}.{socket.gethostname()}.{os.getpid()}.0")
    assert main(["-c", site.path, "import", "mailman21", tree]) == 2
    assert "Mailman is running" in capsys.readouterr().err
    with open(lock, "w") as fp:                  # a dead holder on this host: stale, ignored
        fp.write(f"{lock}.{socket.gethostname()}.{_dead_pid()}.0")
    assert main(["-c", site.path, "import", "mailman21", tree, "--dry-run"]) == 1


@BOTH_BACKENDS
def test_members_and_tokens_on_both_backends(site, tree):
    status, s = run_cli(site, tree, "--list", "alpha")
    site = config.load(site.path)
    store = open_store(site, f"alpha@{DOMAIN}")
    assert store.get_member("carl@example.com").delivery_mode == "mime_digest"
    assert store.peek_pending(C_BOB).payload == {"member": "Bob@example.com"}


def _dead_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def _state(site) -> dict:
    out = {}
    for name in ("alpha", "beta", "gamma"):
        store = open_store(site, f"{name}@{DOMAIN}")
        out[name] = ([vars(m) for m in store.members()], [(r.token, r.type) for r in store.pending()])
    out["queues"] = {n: sorted(Switchboard.for_site(site, n).ids()) for n in ("in", "out", "virgin", "shunt", "bad")}
    return out



def test_real_mailman_databases_and_a_hostile_one(site, tmp_path):
    from conftest import SHARED
    corpus = SHARED / "corpus" / "mailman21"
    if not corpus.exists():
        pytest.skip("../shared/corpus/mailman21 not present")
    prefix = tmp_path / "mm"
    for name, source in (("plain", "config.pck"), ("greek", "config-greek.pck"),
                         ("bouncy", "config-with-instances.pck")):
        write(f"{prefix}/lists/{name}/config.pck", (corpus / source).read_bytes())
    write(f"{prefix}/lists/evil/config.pck", EVIL)
    status, s = run_cli(site, str(prefix))
    assert status == 1 and set(s["lists"]) == {"plain", "greek", "bouncy"}
    assert any("refusing to load os.system" in p["reason"] for p in s["problems"] if p["what"] == "list")
    assert main(["-c", site.path, "check"]) == 0
    assert sum(s["members"].values()) > 0
