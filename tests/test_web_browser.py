"""The unsubscribe page in a real browser: headless Chromium (Debian's ``chromium``) loads the
GET page of a one-click link, a mouse click on its button submits the form, and the member is gone.

Chromium is driven over its DevTools protocol (a websocket, aiohttp's client): ``Page.navigate``,
``Input.dispatchMouseEvent`` at the button's position (a real click, not a script's
``click()``), ``Page.captureScreenshot``. The two screenshots (the page, the page after the click)
are kept as artefacts, passed or failed, in ``$LISTGATE_ARTEFACTS`` or else
``$TMPDIR/listgate-artefacts/web-browser-TIME/`` (pytest removes a passed test's tmp_path;
the path is printed).
"""
from __future__ import annotations

import asyncio
import base64
import itertools
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import aiohttp
import pytest

from conftest import free_port
from listgate.store import open_store
from listgate.web import tokens

from policy_helpers import edit_site
from web_helpers import WebProcess

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (scripts/install-deps)")

MEMBER = "alice@example.com"


class DevTools:
    """One page target of a headless Chromium, over the DevTools protocol."""

    def __init__(self, ws):
        self.ws = ws
        self.ids = itertools.count(1)
        self.events: list[dict] = []

    async def call(self, method: str, **params) -> dict:
        msg_id = next(self.ids)
        await self.ws.send_json({"id": msg_id, "method": method, "params": params})
        while True:
            msg = await asyncio.wait_for(self.ws.receive_json(), 30)
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    async def wait_event(self, method: str, timeout: float = 30) -> dict:
        end = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self.events):
                if ev.get("method") == method:
                    return self.events.pop(i)
            msg = await asyncio.wait_for(self.ws.receive_json(), max(0.1, end - time.monotonic()))
            self.events.append(msg)

    async def evaluate(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    async def screenshot(self, path) -> None:
        data = await self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(data["data"]))
        print(f"screenshot: {path}")


def _start_chromium(profile) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             "--disable-extensions", "--disable-background-networking", "--disable-sync",
                             "--window-size=900,600", f"--user-data-dir={profile}",
                             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "about:blank"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    port_file = profile / "DevToolsActivePort"
    end = time.monotonic() + 60
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited {proc.returncode}")
        if port_file.exists() and port_file.read_text().strip():
            return proc, int(port_file.read_text().split()[0])
        time.sleep(0.1)
    raise TimeoutError("chromium did not open its DevTools port")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(10)


async def _unsubscribe_in_browser(devtools_port: int, url: str, shots) -> str:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{devtools_port}/json/list") as resp:
            pages = [t for t in await resp.json() if t["type"] == "page"]
        async with http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            dt = DevTools(ws)
            await dt.call("Page.enable")
            await dt.call("Page.navigate", url=url)
            await dt.wait_event("Page.loadEventFired")
            assert "Unsubscribe from demo@lists.example.org?" in await dt.evaluate("document.body.innerText")
            await dt.screenshot(shots / "unsubscribe-page.png")
            box = await dt.evaluate("(() => { const r = document.getElementById('unsubscribe')"
                                    ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
            x, y = box
            for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
                await dt.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)
            await dt.wait_event("Page.loadEventFired")
            text = await dt.evaluate("document.body.innerText")
            await dt.screenshot(shots / "unsubscribed.png")
            return text


def artefact_dir() -> Path:
    base = os.environ.get("LISTGATE_ARTEFACTS") or os.path.join(tempfile.gettempdir(), "listgate-artefacts")
    path = Path(base) / f"web-browser-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_click_the_button_in_chromium(site, tmp_path):
    port = free_port()
    site = edit_site(site, web={"base_url": f"http://127.0.0.1:{port}", "listen": f"inet:{port}@127.0.0.1"})
    open_store(site, "demo@lists.example.org").add_member(MEMBER)
    url = f"http://127.0.0.1:{port}/u/{tokens.sign(site, site.get_list('demo'), MEMBER)}"
    web = WebProcess(site)
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    shots = artefact_dir()
    browser = None
    try:
        browser, devtools_port = _start_chromium(profile)
        text = asyncio.run(_unsubscribe_in_browser(devtools_port, url, shots))
    finally:
        if browser is not None:
            _stop(browser)
        assert web.stop() == 0, web.text()
    assert f"{MEMBER} will get no more posts from demo@lists.example.org" in text
    assert open_store(site, "demo@lists.example.org").get_member(MEMBER) is None
    assert (shots / "unsubscribed.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
