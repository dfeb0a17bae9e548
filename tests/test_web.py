"""``listgate web`` as a real process on loopback: one-click unsubscribe over HTTP (RFC 8058)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import free_port
from listgate.config import schema
from listgate.queue import Switchboard
from listgate.store import open_store
from listgate.web import tokens

from policy_helpers import edit_site, write_list
from web_helpers import WebProcess

DOMAIN = "lists.example.org"


@pytest.fixture
def web_site(site):
    port = free_port()
    site = edit_site(site, web={"base_url": f"http://127.0.0.1:{port}", "listen": f"inet:{port}@127.0.0.1"})
    site = write_list(site, "other")
    for name in ("demo", "other"):
        store = open_store(site, f"{name}@{DOMAIN}")
        store.add_member("alice@example.com")
        store.add_member("bob@example.net")
    return site


@pytest.fixture
def web(web_site):
    proc = WebProcess(web_site)
    yield proc
    assert proc.stop() == 0, proc.text()


def members(site, name: str = "demo") -> set[str]:
    return {m.address for m in open_store(site, f"{name}@{DOMAIN}").members()}


def virgin(site) -> list:
    sb = Switchboard.for_site(site, "virgin")
    return [sb.peek(qid) for qid in sb.ids()]


def token(site, member: str, name: str = "demo") -> str:
    return tokens.sign(site, site.get_list(name), member)


def _plain_response(headers: dict) -> None:
    """RFC 8058 section 3.2: no redirect, no cookie; never cached."""
    lower = {k.lower(): v for k, v in headers.items()}
    assert "set-cookie" not in lower and "location" not in lower
    assert lower["cache-control"] == "no-store"
    assert lower["referrer-policy"] == "no-referrer"


def test_post_one_click_unsubscribes_and_tells_the_owners(web, web_site):
    status, headers, page = web.one_click(token(web_site, "alice@example.com"))
    assert status == 200, page
    _plain_response(headers)
    assert "alice@example.com will get no more posts from demo@lists.example.org" in page
    assert members(web_site) == {"bob@example.net"}
    assert members(web_site, "other") == {"alice@example.com", "bob@example.net"}
    sent = {(qf.meta.get("kind"), tuple(d["rcpt"] for d in qf.meta["deliveries"])) for qf in virgin(web_site)}
    assert ("goodbye", ("alice@example.com",)) in sent
    owner = [qf for qf in virgin(web_site) if qf.meta.get("kind") == "owner_notice"]
    assert len(owner) == 1 and b"alice@example.com left demo@lists.example.org" in owner[0].msg


def test_replay_is_idempotent(web, web_site):
    t = token(web_site, "alice@example.com")
    assert web.one_click(t)[0] == 200
    before = len(virgin(web_site))
    status, headers, page = web.one_click(t)
    assert status == 200
    _plain_response(headers)
    assert "is not subscribed to demo@lists.example.org (any more)" in page
    assert len(virgin(web_site)) == before          # no second goodbye, no second owner notice


def test_multipart_form_data_is_accepted(web, web_site):
    boundary = "xYzZY"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\n"
            f"One-Click\r\n--{boundary}--\r\n").encode()
    status, _, page = web.request("POST", f"/u/{token(web_site, 'bob@example.net')}", body,
                                  {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 200, page
    assert members(web_site) == {"alice@example.com"}


def test_get_shows_a_page_and_changes_nothing(web, web_site):
    t = token(web_site, "alice@example.com")
    status, headers, page = web.request("GET", f"/u/{t}")
    assert status == 200
    _plain_response(headers)
    assert headers["Content-Type"].startswith("text/html")
    assert '<form method="post">' in page and 'name="List-Unsubscribe" value="One-Click"' in page
    assert "alice@example.com" in page and "<button" in page
    assert web.request("HEAD", f"/u/{t}")[0] == 200
    assert members(web_site) == {"alice@example.com", "bob@example.net"}
    assert virgin(web_site) == []


def test_post_without_the_one_click_field_changes_nothing(web, web_site):
    t = token(web_site, "alice@example.com")
    for body in (b"", b"List-Unsubscribe=Yes", b"other=1"):
        status, _, page = web.one_click(t, body)
        assert status == 400 and "Nothing was changed" in page
    assert members(web_site) == {"alice@example.com", "bob@example.net"}


def test_forged_tokens_get_a_clear_page(web, web_site):
    good = token(web_site, "alice@example.com")
    payload, key_id, mac = good.split(".")
    bob_payload = tokens.sign(web_site, web_site.get_list("demo"), "bob@example.net").split(".")[0]
    for bad in (f"{payload}.{key_id}.{'A' * len(mac)}",          # wrong MAC
                f"{bob_payload}.{key_id}.{mac}",                   # alice's MAC on bob's payload
                f"{payload}.nokey.{mac}", "garbage", "a.b.c", "%00%ff.x.y", "A" * 3000):
        for method in ("GET", "POST"):
            status, headers, page = (web.one_click(bad) if method == "POST" else web.request("GET", f"/u/{bad}"))
            assert status == 400, (bad, method, page)
            assert "This unsubscribe link is not valid" in page and "Nothing was changed" in page
            _plain_response(headers)
    assert members(web_site) == {"alice@example.com", "bob@example.net"}
    assert virgin(web_site) == []


def test_token_for_another_list(web, web_site):
    """A token for list other removes the member from other only; moved to demo it is forged."""
    t = token(web_site, "alice@example.com", "other")
    payload, key_id, mac = t.split(".")
    demo_payload = token(web_site, "alice@example.com").split(".")[0]
    status, _, page = web.one_click(f"{demo_payload}.{key_id}.{mac}")
    assert status == 400
    assert members(web_site) == {"alice@example.com", "bob@example.net"}
    status, _, page = web.one_click(t)
    assert status == 200 and "no more posts from other@lists.example.org" in page
    assert members(web_site, "other") == {"bob@example.net"}
    assert members(web_site) == {"alice@example.com", "bob@example.net"}


def test_member_already_removed(web, web_site):
    open_store(web_site, f"demo@{DOMAIN}").remove_member("alice@example.com")
    t = token(web_site, "alice@example.com")
    status, _, page = web.request("GET", f"/u/{t}")
    assert status == 200 and "is not subscribed" in page and "<button" not in page
    status, _, page = web.one_click(t)
    assert status == 200 and "is not subscribed" in page
    assert virgin(web_site) == []


def test_other_paths_and_methods(web, web_site):
    assert web.request("GET", "/")[0] == 404
    assert web.request("GET", "/u/")[0] == 404
    assert web.request("PUT", f"/u/{token(web_site, 'alice@example.com')}")[0] == 405
    assert members(web_site) == {"alice@example.com", "bob@example.net"}


def test_web_without_base_url_exits_1(site):
    proc = subprocess.run([sys.executable, "-m", "listgate", "-c", site.path, "web"], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1
    assert "web.base_url is not set" in proc.stderr



def test_install_quotes_the_nginx_snippet():
    root = Path(__file__).resolve().parents[1]
    snippet = (root / "conf" / "nginx" / "listgate-web.conf").read_text(encoding="utf-8")
    assert snippet in (root / "INSTALL").read_text(encoding="utf-8")
    # the snippet's upstream is the default web.listen
    assert "proxy_pass http://127.0.0.1:8025/u/;" in snippet
    assert schema.WEB.fields["listen"].default == "inet:8025@127.0.0.1"
