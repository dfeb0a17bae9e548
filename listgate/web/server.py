"""``listgate web``: the one-click unsubscribe pages (RFC 8058) as an aiohttp application.

Served on ``web.listen`` (``inet:PORT@HOST`` or ``unix:PATH``) behind the
site's HTTPS reverse proxy (INSTALL, "Web front end"); the links in posts are
``web.base_url/u/TOKEN`` (:mod:`listgate.web.tokens`).

* ``POST /u/TOKEN`` with the form field ``List-Unsubscribe=One-Click``
  (``application/x-www-form-urlencoded`` or ``multipart/form-data``, RFC 8058
  section 3.1): the member leaves at once (:func:`listgate.app.subscriptions.unsubscribe_now`:
  goodbye mail, owners told as for any leave). Idempotent: 200 also when the
  address is no member any more. No redirect, no cookie (RFC 8058 section 3.2).
  Without that field: 400, nothing changes.
* ``GET /u/TOKEN`` (also ``HEAD``): a page with one button, a form that POSTs
  the same field: a person who follows the link, or a mail scanner that fetches
  it, changes nothing.
* A token that does not verify: 400 and a page that says so; nothing changes.
  The store or the queue unavailable: 503 with ``Retry-After``.

Store and queue work runs in worker threads (the store is synchronous); the
site configuration is taken per request (hot reload). No access log: the
token is a credential; the log gets the list and the member instead.
"""
from __future__ import annotations

import asyncio
import html
from typing import Callable
from urllib.parse import urlsplit

from aiohttp import web

from .. import sockets
from ..app import posting
from ..app.notices import address as list_address
from ..app.subscriptions import unsubscribe_now
from ..config import Site, parse_socket
from ..log import events
from ..queue import QueueError
from ..store import StoreUnavailable, open_store
from ..verp import VerpKeyError
from .tokens import TokenError, verify

log = events("listgate.web")

MAX_BODY = 64 * 1024     # a one-click POST body is 26 octets; a form with a file is not ours
RETRY_AFTER = "60"
# Every response: never cached or framed, no referrer (the URL holds the token), nothing loaded
# from elsewhere, no script (CSP, W3C CSP Level 3).
_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                               "frame-ancestors 'none'",
}
_FIELD, _VALUE = posting.ONE_CLICK.split("=")


def check_base_url(url: str | None) -> None:
    """ValueError unless ``url`` is an ASCII ``https://`` (or ``http://``) URL with a host."""
    if not url:
        raise ValueError("web.base_url is not set in the site config: no web front end to run")
    parts = urlsplit(url)
    if not url.isascii() or parts.scheme not in ("https", "http") or not parts.hostname or parts.query:
        raise ValueError(f"web.base_url {url!r}: expected https://HOST[/PATH] (ASCII, no query)")
    if parts.scheme == "http":
        log.warning("base_url_not_https", "web.base_url is not https: receivers ignore one-click links that "
                    "are not (RFC 8058 section 3.1)", base_url=url)


def _page(status: int, title: str, text: str, *, button: str | None = None) -> web.Response:
    """A small HTML page; ``text`` is plain text (escaped here). ``button``: the one-click form."""
    form = ""
    if button:
        # no action attribute: the form posts to this page's own URL, whatever prefix the proxy adds
        form = (f'<form method="post"><input type="hidden" name="{_FIELD}" value="{_VALUE}">'
                f'<button type="submit" id="unsubscribe">{html.escape(button)}</button></form>')
    body = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;max-width:36em;'
            f'margin:3em auto;padding:0 1em}}button{{font-size:1.1em;padding:.5em 1.5em}}</style></head>'
            f'<body><h1>{html.escape(title)}</h1><p>{html.escape(text)}</p>{form}</body></html>\n')
    return web.Response(status=status, text=body, content_type="text/html", charset="utf-8")


def _bad_token(exc: TokenError) -> web.Response:
    log.info("unsubscribe_refused", "unsubscribe link refused", reason=exc.reason)
    return _page(400, "Invalid unsubscribe link",
                 "This unsubscribe link is not valid: it is incomplete, altered, expired or for a list "
                 "that no longer exists. Nothing was changed. Use the newest message from the list, or "
                 "write to the list's -leave address.")


def _unavailable(exc: Exception) -> web.Response:
    log.error("unsubscribe_unavailable", "unsubscribe not possible now", error=exc)
    resp = _page(503, "Try again later", "The list cannot be changed right now. Nothing was changed; "
                 "please try again in a few minutes.")
    resp.headers["Retry-After"] = RETRY_AFTER
    return resp


class WebServer:
    """The aiohttp application on ``socket_spec`` (default ``web.listen``).

    ``await start()`` raises OSError when the socket cannot be bound, ValueError
    when ``web.base_url`` is unset or unfit or ``web.socket_mode`` is not octal;
    then ``await close()``. ``address`` is what was bound (port 0 resolved).
    """

    def __init__(self, get_site: Callable[[], Site], socket_spec: str | None = None):
        self.get_site = get_site
        site = get_site()
        check_base_url(site.conf.web.base_url)
        self.socket_spec = socket_spec or site.conf.web.listen
        self.kind, where = parse_socket(self.socket_spec)
        self.where = site.resolve(where) if self.kind == "unix" else where
        self.app = web.Application(client_max_size=MAX_BODY)
        self.app.router.add_get("/u/{token}", self.show)
        self.app.router.add_post("/u/{token}", self.one_click)
        self.app.on_response_prepare.append(self._headers)
        self._runner: web.AppRunner | None = None
        self._site: web.BaseSite | None = None

    @property
    def address(self):
        if self.kind == "inet" and self._runner is not None:
            return "inet", self._runner.addresses[0][:2]
        return self.kind, self.where

    async def start(self) -> None:
        site = self.get_site()
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        if self.kind == "unix":
            mode = sockets.parse_mode(site.conf.web.socket_mode, "web.socket_mode")
            sock = sockets.bound_unix(self.where, mode)
            try:
                self._site = web.SockSite(self._runner, sock)
                await self._site.start()
            except BaseException:
                sock.close()
                raise
        else:
            host, port = self.where
            self._site = web.TCPSite(self._runner, host, port, reuse_address=True)
            await self._site.start()
        log.info("web_listening", "web front end listening", socket=self.socket_spec, base_url=site.conf.web.base_url)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self.kind == "unix":
            sockets.remove(self.where)

    @staticmethod
    async def _headers(_request, response) -> None:
        response.headers.update(_HEADERS)

    def _verify(self, request):
        return verify(self.get_site(), request.match_info["token"])

    async def show(self, request: web.Request) -> web.Response:
        """GET: the confirmation page (one button), or what is wrong with the link."""
        try:
            unsub = self._verify(request)
            site = self.get_site()
            member = await asyncio.to_thread(
                lambda: open_store(site, list_address(unsub.lc)).get_member(unsub.member))
        except TokenError as exc:
            return _bad_token(exc)
        except (StoreUnavailable, VerpKeyError) as exc:
            return _unavailable(exc)
        name = list_address(unsub.lc)
        if member is None:
            return _page(200, f"Not subscribed to {name}",
                         f"{unsub.member} is not subscribed to {name} (any more). Nothing to do.")
        return _page(200, f"Unsubscribe from {name}?",
                     f"Stop sending the posts of {name} to {unsub.member}?", button="Unsubscribe")

    async def one_click(self, request: web.Request) -> web.Response:
        """POST ``List-Unsubscribe=One-Click``: unsubscribe now (idempotent)."""
        try:
            unsub = self._verify(request)
        except TokenError as exc:
            return _bad_token(exc)
        except VerpKeyError as exc:
            return _unavailable(exc)
        try:
            form = await request.post()
        except (ValueError, web.HTTPException):   # malformed multipart, body over MAX_BODY
            form = {}
        name = list_address(unsub.lc)
        if form.get(_FIELD) != _VALUE:
            return _page(400, "Not a one-click request",
                         f"This address takes the one-click request {posting.ONE_CLICK} only. Nothing was changed.")
        try:
            removed = await asyncio.to_thread(unsubscribe_now, self.get_site(), unsub.lc, unsub.member)
        except (StoreUnavailable, QueueError) as exc:
            return _unavailable(exc)
        log.info("unsubscribe", "one-click unsubscribe", list=name, member=unsub.member, key=unsub.key_id,
                 result="removed" if removed else "not-a-member")
        if removed:
            return _page(200, f"Unsubscribed from {name}",
                         f"{unsub.member} will get no more posts from {name}.")
        return _page(200, f"Not subscribed to {name}",
                     f"{unsub.member} is not subscribed to {name} (any more). Nothing to do.")
