"""The web front end (``listgate web``): one-click unsubscribe (RFC 8058).

:mod:`.tokens` signs and verifies the per-member tokens (no aiohttp: the
runner imports it at hand-over); :mod:`.server` is the aiohttp application
that serves ``/u/TOKEN`` behind the site's HTTPS reverse proxy.
"""
