"""The policy delegation server over real sockets (Postfix SMTPD_POLICY_README, Exim readsocket)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from listgate import verp
from listgate.policy import ProtocolError, RequestParser
from listgate.store import close_all, open_store, store_path

from conftest import free_port
from policy_helpers import (ServerThread, closed_site, connect, edit_site, rcpt_request,  # noqa: F401 - fixture
                            read_replies, wait_closed, write_list)

D = "lists.example.org"
UNKNOWN = "550 5.1.1 no such list address"
BAD_BOUNCE = "550 5.1.1 not a valid bounce address"


@pytest.fixture
def server(closed_site):
    with ServerThread(closed_site) as srv:
        yield srv


def ask(srv, *requests: bytes) -> list[str]:
    with connect(srv.address) as s:
        s.sendall(b"".join(requests))
        return read_replies(s, len(requests))


def test_single_request(server):
    assert ask(server, rcpt_request(f"nolist@{D}")) == [UNKNOWN]


def test_every_rule_over_the_wire(server, closed_site):
    lc = closed_site.get_list("demo")
    good_verp = verp.member_bounce_address(closed_site, lc, "member@example.com")
    forged = good_verp.rpartition(".")[0] + ".aaaaaaaa@" + D
    probe = open_store(closed_site, f"demo@{D}").add_pending("probe", {"member": "member@example.com"}, 3600)
    cases = [
        (rcpt_request("user@example.com"), "DUNNO"),                                  # not ours
        (rcpt_request(f"demo@{D}", sender="member@example.com"), "DUNNO"),            # member post
        (rcpt_request(f"demo@{D}", sender="stranger@example.net"), "550 5.7.1 only members may post to this list"),
        (rcpt_request(f"demo-request@{D}"), "DUNNO"),
        (rcpt_request(good_verp, sender=""), "DUNNO"),
        (rcpt_request(forged, sender=""), BAD_BOUNCE),
        (rcpt_request(f"demo-bounces+{probe.token}@{D}", sender=""), "DUNNO"),
        (rcpt_request(f"demo-bounces+{'a' * 26}@{D}", sender=""), BAD_BOUNCE),
        (rcpt_request(f"demo@{D}", sender=f"demo-bounces@{D}", client_address="127.0.0.1"), "DUNNO"),
    ]
    # several requests on one connection, one at a time
    with connect(server.address) as s:
        for request, expected in cases:
            s.sendall(request)
            assert read_replies(s, 1) == [expected], request


def _store_ops_elsewhere(site, *ops: str) -> list[str]:
    """Run store changes in another process (tests/store_helpers.py ``ops``); their results."""
    helper = os.path.join(os.path.dirname(os.path.abspath(__file__)), "store_helpers.py")
    out = subprocess.run([sys.executable, helper, "ops", site.path, f"demo@{D}", *ops],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return json.loads(out.splitlines()[-1])["done"]


def test_store_changes_by_another_process_decide_the_next_request(server, closed_site):
    # another process's commits decide the very next request
    post = rcpt_request(f"demo@{D}", sender="late@example.com")
    refused = "550 5.7.1 only members may post to this list"
    with connect(server.address) as s:
        def answer(request: bytes) -> str:
            s.sendall(request)
            return read_replies(s, 1)[0]

        assert answer(post) == answer(post) == refused
        _store_ops_elsewhere(closed_site, "add:late@example.com")
        assert answer(post) == answer(post) == "DUNNO"
        _store_ops_elsewhere(closed_site, "remove:late@example.com")
        assert answer(post) == refused
        [token] = _store_ops_elsewhere(closed_site, "probe:late@example.com")
        probe = rcpt_request(f"demo-bounces+{token}@{D}", sender="")
        assert answer(probe) == answer(probe) == "DUNNO"
        _store_ops_elsewhere(closed_site, f"confirm:{token}")
        assert answer(probe) == BAD_BOUNCE


def test_pipelined_answers_in_order(server):
    requests, expected = [], []
    for i in range(300):
        if i % 3 == 0:
            requests.append(rcpt_request(f"nolist{i}@{D}"))
            expected.append(UNKNOWN)
        elif i % 3 == 1:
            requests.append(rcpt_request(f"user{i}@example.com"))
            expected.append("DUNNO")
        else:
            requests.append(rcpt_request(f"demo@{D}", sender=f"stranger{i}@example.net"))
            expected.append("550 5.7.1 only members may post to this list")
    assert ask(server, *requests) == expected


def test_byte_at_a_time(server):
    with connect(server.address) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for b in rcpt_request(f"nolist@{D}"):
            s.send(bytes([b]))
        assert read_replies(s, 1) == [UNKNOWN]


def test_other_protocol_states_and_unknown_attributes(server):
    replies = ask(server,
                  rcpt_request(f"nolist@{D}", protocol_state="DATA"),
                  rcpt_request(f"nolist@{D}", protocol_state="END-OF-MESSAGE"),
                  rcpt_request(f"nolist@{D}", protocol_state="rcpt", x_future_attribute="1", ccert_subject="a=b=c"),
                  b"request=smtpd_access_policy\nprotocol_state=RCPT\n\n",             # no recipient at all
                  b"\n")                                                               # empty request
    assert replies == ["DUNNO", "DUNNO", UNKNOWN, "DUNNO", "DUNNO"]


def test_eight_bit_junk_and_crlf(server):
    junk = b"request=smtpd_access_policy\r\nprotocol_state=RCPT\r\nsender=\xff\xfe@\x80.example\r\n" \
           b"recipient=nolist\xe9\xff@" + D.encode() + b"\r\nclient_address=\xc3\x28\r\n\r\n"
    assert ask(server, junk, rcpt_request(f"nolist@{D}")) == ["550 5.1.1 no such list address"] * 2


@pytest.mark.parametrize("bad", [b"this line has no equals sign\n\n", b"=value-without-name\n\n",
                                 b"recipient=" + b"x" * 9000 + b"\n\n"])
def test_malformed_request_closes_without_answer(server, bad):
    with connect(server.address) as s:
        s.sendall(rcpt_request(f"nolist@{D}") + bad + rcpt_request(f"nolist@{D}"))
        data = wait_closed(s)
    # the request before the bad one is answered, nothing after it
    assert data == f"action={UNKNOWN}\n\n".encode()
    assert ask(server, rcpt_request(f"nolist@{D}")) == [UNKNOWN]       # server still serving


def test_overlong_line_without_newline_closes(server):
    with connect(server.address) as s:
        s.sendall(b"recipient=" + b"y" * 20000)
        assert wait_closed(s) == b""


def test_too_many_attributes_closes(server):
    with connect(server.address) as s:
        s.sendall(b"".join(b"x%d=1\n" % i for i in range(1000)) + b"\n")
        assert wait_closed(s) == b""


def test_huge_attribute_values_within_limit(server, closed_site):
    limit = closed_site.conf.policy.max_line
    value = "a" * (limit - len("recipient=") - len(f"@{D}"))
    assert len(f"recipient={value}@{D}") == limit
    big_other = "z" * (limit - len("ccert_subject="))
    bounce_ext = value[len("demo-bounces+"):]
    replies = ask(server, rcpt_request(f"{value}@{D}", ccert_subject=big_other),
                  rcpt_request(f"demo-bounces+{bounce_ext}@{D}"))
    assert replies == [UNKNOWN, BAD_BOUNCE]


def test_client_disconnects_mid_request(server):
    for _ in range(20):
        s = connect(server.address)
        s.sendall(rcpt_request(f"nolist@{D}")[:40])
        s.close()
    half = connect(server.address)
    half.sendall(rcpt_request(f"nolist@{D}") + b"request=smtpd_access_policy\nrecip")
    assert read_replies(half, 1) == [UNKNOWN]
    half.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
    half.close()
    assert ask(server, rcpt_request(f"nolist@{D}")) == [UNKNOWN]
    deadline = time.monotonic() + 5
    while server.connections() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.connections() == 0


def test_many_concurrent_clients(server):
    results: list[bool] = []
    errors: list[BaseException] = []
    start = threading.Barrier(64)

    def client(n):
        try:
            with connect(server.address, timeout=30) as s:
                start.wait(10)
                requests = [rcpt_request(f"nolist{n}-{i}@{D}") if i % 2 else rcpt_request(f"u{n}@example.com")
                            for i in range(10)]
                s.sendall(b"".join(requests))
                got = read_replies(s, 10, timeout=30)
                results.append(got == ["DUNNO", UNKNOWN] * 5)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and results == [True] * 64


def test_exim_half_close_without_final_empty_line(server):
    with connect(server.address) as s:
        s.sendall(rcpt_request(f"nolist@{D}")[:-1])      # attributes, no empty line
        s.shutdown(socket.SHUT_WR)
        assert wait_closed(s) == f"action={UNKNOWN}\n\n".encode()
    with connect(server.address) as s:
        s.sendall(b"request=smtpd_access_policy\nprotocol_state=RCPT\nrecipient=nolist@" + D.encode())  # no newline
        s.shutdown(socket.SHUT_WR)
        assert wait_closed(s) == f"action={UNKNOWN}\n\n".encode()


def test_exim_half_close_with_final_empty_line(server):
    with connect(server.address) as s:
        s.sendall(rcpt_request(f"user@example.com"))
        s.shutdown(socket.SHUT_WR)
        assert wait_closed(s) == b"action=DUNNO\n\n"
    with connect(server.address) as s:        # EOF with nothing sent: closed, no answer
        s.shutdown(socket.SHUT_WR)
        assert wait_closed(s) == b""


def test_idle_connection_closed(closed_site):
    site = edit_site(closed_site, policy={"socket": closed_site.conf.policy.socket, "idle_timeout": "1s"})
    with ServerThread(site) as srv:
        with connect(srv.address) as s:
            s.sendall(rcpt_request(f"nolist@{D}"))
            assert read_replies(s, 1) == [UNKNOWN]
            started = time.monotonic()
            assert wait_closed(s, timeout=10) == b""
            assert 0.5 <= time.monotonic() - started < 5


def test_idle_connections_are_closed_at_the_configured_limit(closed_site):
    # issue 20: connections that never send, or stop in the middle of a request, are closed too
    site = edit_site(closed_site, policy={"socket": closed_site.conf.policy.socket, "idle_timeout": "1s"})
    with ServerThread(site) as srv:
        clients = [connect(srv.address) for _ in range(50)]
        try:
            for i, s in enumerate(clients):
                if i % 2:
                    s.sendall(rcpt_request(f"nolist@{D}")[:60])      # half a request, then silence
            deadline = time.monotonic() + 5
            while srv.connections() < 50 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert srv.connections() == 50                          # all accepted and open
            started = time.monotonic()
            for s in clients:
                assert wait_closed(s, timeout=10) == b""
            assert time.monotonic() - started < 5
            deadline = time.monotonic() + 5
            while srv.connections() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert srv.connections() == 0
        finally:
            for s in clients:
                s.close()


def test_activity_keeps_a_connection_open_past_the_idle_limit(closed_site):
    # activity is any data read: whole requests and pieces of one
    site = edit_site(closed_site, policy={"socket": closed_site.conf.policy.socket, "idle_timeout": "1s"})
    request = rcpt_request(f"nolist@{D}")
    with ServerThread(site) as srv:
        with connect(srv.address) as s:
            for _ in range(4):                          # a whole request every 0.6 s
                s.sendall(request)
                assert read_replies(s, 1) == [UNKNOWN]
                time.sleep(0.6)
            lines = request.split(b"\n")
            for i, line in enumerate(lines[:-1]):       # one request trickled a line every 0.3 s
                s.sendall(line + b"\n")
                if i < len(lines) - 2:
                    time.sleep(0.3)
            assert read_replies(s, 1) == [UNKNOWN]


def test_request_read_in_the_turn_the_idle_limit_runs_out_is_answered(closed_site):
    # the request and the idle limit come due in the same loop turn (the loop was busy past the
    # limit): the request is activity, not silence, and is answered
    site = edit_site(closed_site, policy={"socket": closed_site.conf.policy.socket, "idle_timeout": "1s"})
    request = rcpt_request(f"nolist@{D}")
    with ServerThread(site) as srv:
        with connect(srv.address) as s:
            s.sendall(request)
            assert read_replies(s, 1) == [UNKNOWN]      # the connection is set up: its idle timer runs
            busy = threading.Event()

            def hold_the_loop():
                busy.set()
                time.sleep(1.5)                         # past the limit, with the request waiting
            srv.loop.call_soon_threadsafe(hold_the_loop)
            assert busy.wait(10)
            s.sendall(request)
            assert read_replies(s, 1) == [UNKNOWN]


def test_idle_timeout_zero_means_no_limit(closed_site):
    site = edit_site(closed_site, policy={"socket": closed_site.conf.policy.socket, "idle_timeout": 0})
    with ServerThread(site) as srv:
        with connect(srv.address) as s:
            s.sendall(rcpt_request(f"nolist@{D}"))
            assert read_replies(s, 1) == [UNKNOWN]
            time.sleep(1.5)
            s.sendall(rcpt_request(f"nolist@{D}"))
            assert read_replies(s, 1) == [UNKNOWN]


def test_store_unavailable_is_451(closed_site):
    close_all()
    with open(store_path(closed_site, f"demo@{D}"), "wb") as fh:
        fh.write(b"garbage, not SQLite" * 200)
    try:
        with ServerThread(closed_site) as srv:
            replies = ask(srv, rcpt_request(f"demo@{D}", sender="stranger@example.net"), rcpt_request(f"nolist@{D}"))
        assert replies[0].startswith("451 4.3.0 ") and replies[1] == UNKNOWN
    finally:
        close_all()


def test_config_change_applies_without_restart(closed_site):
    with ServerThread(closed_site, reload_interval=0.0) as srv:
        with connect(srv.address) as s:
            s.sendall(rcpt_request(f"news@{D}"))
            assert read_replies(s, 1) == [UNKNOWN]
            write_list(closed_site, "news", posting_policy="open")
            s.sendall(rcpt_request(f"news@{D}"))
            assert read_replies(s, 1) == ["DUNNO"]
            # an edit that does not validate keeps the previous config in force
            with open(os.path.join(closed_site.lists_dir, "news.yaml"), "a") as fh:
                fh.write("no_such_key: 1\n")
            s.sendall(rcpt_request(f"news@{D}"))
            assert read_replies(s, 1) == ["DUNNO"]


def test_unix_socket(closed_site, tmp_path):
    path = tmp_path / "policy.sock"
    with ServerThread(closed_site, f"unix:{path}") as srv:
        assert oct(os.stat(path).st_mode & 0o777) == oct(int(closed_site.conf.policy.socket_mode, 8))
        assert ask(srv, rcpt_request(f"nolist@{D}")) == [UNKNOWN]
    assert not path.exists()


def test_unix_socket_stale_replaced_live_refused(closed_site, tmp_path):
    path = tmp_path / "policy.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))           # bound, never listening: what a crashed daemon leaves
    stale.close()
    with ServerThread(closed_site, f"unix:{path}") as srv:
        assert ask(srv, rcpt_request(f"nolist@{D}")) == [UNKNOWN]
        with pytest.raises(OSError, match="already listening"):
            with ServerThread(closed_site, f"unix:{path}"):
                pass
        assert ask(srv, rcpt_request(f"nolist@{D}")) == [UNKNOWN]      # the first one keeps its socket
    regular = tmp_path / "not-a-socket"
    regular.write_text("data")
    with pytest.raises(FileExistsError, match="is not a socket"):
        with ServerThread(closed_site, f"unix:{regular}"):
            pass
    assert regular.read_text() == "data"


def test_reply_text_is_one_line():
    from listgate.policy import action_for
    from listgate.routing import RcptDecision
    assert action_for(RcptDecision("reject", 550, "5.1.1", "bad\r\naction=OK\x00")) == "550 5.1.1 bad  action=OK"
    assert action_for(RcptDecision("discard", text="why")) == "DISCARD why"
    assert action_for(RcptDecision("accept")) == action_for(RcptDecision("pass")) == "DUNNO"


def test_parser_unit_limits():
    p = RequestParser(256)
    assert p.feed(b"a=1\nb=") == []
    assert p.feed(b"2\n\nc=3\n") == [{"a": "1", "b": "2"}]
    assert p.finish() == {"c": "3"} and p.finish() is None
    with pytest.raises(ProtocolError):
        RequestParser(256).feed(b"x" * 300)
    with pytest.raises(ProtocolError):
        RequestParser(256).feed(b"novalue\n")


def test_parser_any_split_gives_same_requests():
    import random
    stream = b"".join([rcpt_request(f"a{i}@{D}", sender="" if i % 2 else "x@y.z") for i in range(30)])
    stream += b"\n" + b"a=1\r\nb=2\r\n\r\n" + "k=\u00e9\xff\n\n".encode("utf-8", "surrogateescape")
    expected = RequestParser(8192).feed(stream)
    assert len(expected) == 33 and expected[30] == {} and expected[31] == {"a": "1", "b": "2"}
    rng = random.Random(7)
    for _ in range(200):
        p, got, pos = RequestParser(8192), [], 0
        while pos < len(stream):
            step = rng.randint(1, 400)
            got.extend(p.feed(stream[pos:pos + step]))
            pos += step
        assert got == expected
    # a bad line after a partial request: the requests completed before it are kept
    p = RequestParser(8192)
    assert p.feed(b"a=1\n") == []
    with pytest.raises(ProtocolError) as info:
        p.feed(b"b=2\n\nc=3\nbroken\n\n")
    assert info.value.complete == [{"a": "1", "b": "2"}]


def test_inet_port_in_use_is_an_error(closed_site):
    port = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        with pytest.raises(OSError):
            with ServerThread(closed_site, f"inet:{port}@127.0.0.1"):
                pass


def test_listgate_policy_daemon(closed_site, tmp_path):
    """The real ``listgate policy`` process: sd_notify readiness, unix socket mode, reload, SIGTERM."""
    import signal
    import subprocess
    import sys

    notify_path = str(tmp_path / "notify.sock")
    sock_path = tmp_path / "p.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(notify_path)
        notify.settimeout(20)
        env = {**os.environ, "NOTIFY_SOCKET": notify_path}
        proc = subprocess.Popen([sys.executable, "-m", "listgate", "-c", closed_site.path, "policy",
                                 "--log-level", "debug", "--socket", f"unix:{sock_path}"], env=env, cwd=str(tmp_path),
                                stderr=subprocess.PIPE)
        try:
            assert b"READY=1" in notify.recv(1000).split(b"\n")
            assert os.stat(sock_path).st_mode & 0o777 == 0o666
            address = ("unix", str(sock_path))
            with connect(address) as s:
                s.sendall(rcpt_request(f"news@{D}"))
                assert read_replies(s, 1) == [UNKNOWN]
                write_list(closed_site, "news", posting_policy="open")
                deadline = time.monotonic() + 10          # the Watcher looks at most once a second
                while True:
                    s.sendall(rcpt_request(f"news@{D}"))
                    reply = read_replies(s, 1)
                    if reply == ["DUNNO"] or time.monotonic() > deadline:
                        break
                    time.sleep(0.2)
                assert reply == ["DUNNO"]
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
            assert b"STOPPING=1" in notify.recv(1000).split(b"\n")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            stderr = proc.stderr.read().decode()
            proc.stderr.close()
    assert not sock_path.exists()
    assert "no such list address" in stderr and "configuration reloaded" in stderr


def test_listgate_policy_bad_config_exits_1(tmp_path):
    import subprocess
    import sys
    bad = tmp_path / "bad.yaml"
    bad.write_text("state_dir: .\nno_such_key: 1\n")
    proc = subprocess.run([sys.executable, "-m", "listgate", "-c", str(bad), "policy"], capture_output=True,
                          timeout=30, text=True)
    assert proc.returncode == 1 and "no_such_key" in proc.stderr


def _exim_snippet():
    """The request template and the deny/defer regexes of conf/exim/acl_rcpt.conf."""
    import re
    from pathlib import Path
    text = (Path(__file__).resolve().parents[1] / "conf" / "exim" / "acl_rcpt.conf").read_text()
    live = "".join(ln.strip() if i else ln for i, ln in enumerate(
        ("\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#"))).split("\\\n")))
    template = re.search(r"\{(request=smtpd_access_policy.*?\\n\\n)\}", live).group(1)
    fail = re.search(r"\{5s\}\{ \}\{(.*?)\}\}", live).group(1)
    regexes = {verb: re.search(verb + r"\s+condition = .*?message\s+= \$\{sg\{\$acl_m_listgate\}\{\\N(.*?)\\N\}",
                               live, re.S).group(1)
               for verb in ("deny", "defer")}
    return template, fail, regexes


def exim_readsocket(address, template: str, variables: dict[str, str]) -> str:
    """What Exim's ${readsocket} does with the snippet: expand, send, shut down, read to EOF, fold newlines."""
    request = template
    for name in sorted(variables, key=len, reverse=True):
        request = request.replace("$" + name, variables[name])
    request = request.replace("\\n", "\n")
    with connect(address) as s:
        s.sendall(request.encode())
        s.shutdown(socket.SHUT_WR)
        return wait_closed(s).decode().replace("\n", " ")


def test_exim_acl_snippet_against_the_server(server, closed_site):
    import re
    template, fail, regexes = _exim_snippet()
    assert fail == "action=DUNNO"
    base = {"sender_host_address": "192.0.2.7", "sender_helo_name": "mx.example.net"}

    def verdict(local_part, sender):
        answer = exim_readsocket(server.address, template, {**base, "local_part": local_part,
                                                            "domain": D, "sender_address": sender})
        for verb, rx in regexes.items():
            m = re.match(rx, answer)
            if m:
                return verb, m.group(1)
        return "pass", answer

    assert verdict("nolist", "someone@example.net") == ("deny", "5.1.1 no such list address")
    assert verdict("demo", "stranger@example.net") == ("deny", "5.7.1 only members may post to this list")
    assert verdict("demo", "member@example.com") == ("pass", "action=DUNNO  ")
    assert verdict("demo-bounces+" + "a" * 26, "") == ("deny", "5.1.1 not a valid bounce address")
    close_all()
    with open(store_path(closed_site, f"demo@{D}"), "wb") as fh:
        fh.write(b"not a database" * 100)
    try:
        verb, text = verdict("demo", "stranger@example.net")
        assert verb == "defer" and text.startswith("4.3.0 ")
    finally:
        close_all()


def test_listgate_policy_socket_errors(closed_site, tmp_path):
    import subprocess
    import sys
    sock = tmp_path / "p.sock"
    with ServerThread(closed_site, f"unix:{sock}"):
        proc = subprocess.run([sys.executable, "-m", "listgate", "-c", closed_site.path, "policy",
                               "--socket", f"unix:{sock}"], capture_output=True, timeout=30, text=True)
    assert proc.returncode == 71 and "already listening" in proc.stderr
    site = edit_site(closed_site, policy={"socket": f"unix:{sock}", "socket_mode": "rw-rw----"})
    proc = subprocess.run([sys.executable, "-m", "listgate", "-c", site.path, "policy"],
                          capture_output=True, timeout=30, text=True)
    assert proc.returncode == 1 and "not an octal mode" in proc.stderr
