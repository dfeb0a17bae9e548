"""Helpers for the web front end tests: ``listgate web`` as a child process, an HTTP client."""
from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """One HTTP/1.1 request to 127.0.0.1:``port`` (no redirect followed); ``(status, headers, text)``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read().decode("utf-8")
    finally:
        conn.close()


def one_click(port: int, path: str, body: bytes = b"List-Unsubscribe=One-Click"):
    """The POST a mail client sends (RFC 8058 section 3.1)."""
    return request(port, "POST", path, body, {"Content-Type": "application/x-www-form-urlencoded"})


class WebProcess:
    """``listgate -c SITE web`` in a child process; stopped with SIGTERM."""

    def __init__(self, site):
        self.site = site
        self.port = int(site.conf.web.listen.split(":")[1].split("@")[0])
        self.log = open(os.path.join(site.state_dir, "web.log"), "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "listgate", "-c", site.path, "web"],
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        end = time.monotonic() + 30
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"listgate web exited {self.proc.returncode}: {self.text()}")
            try:
                self.request("GET", "/")
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"listgate web not listening: {self.text()}")

    def text(self) -> str:
        with open(self.log.name, encoding="utf-8", errors="replace") as fh:
            return fh.read()

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        return request(self.port, method, path, body, headers)

    def one_click(self, token: str, body: bytes = b"List-Unsubscribe=One-Click"):
        return one_click(self.port, f"/u/{token}", body)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
        return self.proc.returncode
