"""``listgate metrics``: the Prometheus endpoint on ``metrics.listen`` (:mod:`listgate.metrics`).

Runs in the foreground until SIGTERM/SIGINT (exit 0); ``listgate serve``
runs it as a child when ``metrics.listen`` is set. Exit 1 when metrics are
off (no ``metrics.listen``) or prometheus_client is missing, 71 (EX_OSERR)
when the address cannot be bound.
"""
from __future__ import annotations

import signal
import sys

from .. import log as lg_log, metrics, sdnotify
from .common import EX_OSERR, load_site, start_daemon


def register(sub) -> None:
    p = sub.add_parser("metrics", help="serve Prometheus metrics on metrics.listen (run by serve when it is set)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="override logging.level")
    p.set_defaults(func=cmd_metrics)


def cmd_metrics(args) -> int:
    site = load_site(args)
    lg_log.setup(site.conf.logging, program="listgate-metrics", level=args.log_level)
    if not site.conf.metrics.listen:
        print("listgate: metrics are off: set metrics.listen in the site file", file=sys.stderr)
        return 1
    if not metrics.available():
        print("listgate: metrics need prometheus_client: pip install 'listgate[metrics]'", file=sys.stderr)
        return 1
    stopping = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.append(1))
    start_daemon(site, "metrics")
    try:
        metrics.serve_forever(site, lambda: bool(stopping), ready=lambda: sdnotify.ready(
            f"metrics on {site.conf.metrics.listen}"))
    except OSError as exc:
        print(f"listgate: cannot listen on {site.conf.metrics.listen}: {exc}", file=sys.stderr)
        return EX_OSERR
    return 0
