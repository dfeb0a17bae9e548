"""Prometheus metrics (optional): what the daemons count, and the endpoint that serves it.

Off unless the site sets ``metrics.listen`` (``HOST:PORT``); then it needs
``prometheus_client`` (the ``[metrics]`` extra). Every function here is a
no-op until :func:`enable` succeeded, so the counting calls cost nothing
(one global test) on sites without metrics and in tests.

Several processes count (``serve`` forks milter, policy, runner...), so
listgate uses prometheus_client's documented multiprocess mode
(https://prometheus.github.io/client_python/multiprocess/): each process
writes its values to memory-mapped files in one directory,
``STATE_DIR/run/metrics`` (``PROMETHEUS_MULTIPROC_DIR``, set by
:func:`enable` before the first metric exists and inherited by serve's
children), and one exporter process (``listgate metrics``, a child of
``serve`` when ``metrics.listen`` is set) adds them up per scrape with
``MultiProcessCollector``. Counters of exited processes stay in the sums (a
restarted child does not reset them); ``serve`` empties the directory when
it starts, as the documentation asks, so counters start at 0 with serve
(Prometheus's ``rate()`` handles that reset).

Metrics (counted once each, in the shared core, never in a front end):

========================================  =================================  ================================
name                                      labels                             counted in
========================================  =================================  ================================
``listgate_posts_accepted_total``         -                                  ``app.posting.queue_post``
``listgate_deliveries_total``             ``reply`` (2xx, 4xx, 5xx)          ``runner.delivery`` (per recipient)
``listgate_bounces_total``                ``bounce_class``, ``source``       ``app.bounces`` (``mail``: a bounce
                                          (``mail``, ``handover``)           message; ``handover``: a 5xx at hand-over)
``listgate_probes_sent_total``            -                                  ``app.probes.send_probe``
``listgate_members_disabled_total``       -                                  ``app.probes.disable``
``listgate_members_removed_total``        -                                  ``app.probes.remove``
``listgate_holds_total``                  -                                  ``app.moderation.hold``
``listgate_queue_depth``                  ``queue``                          read from the queue directory per scrape
``listgate_milter_eom_seconds``           - (histogram)                      ``milter.app`` end of message
``listgate_policy_decision_seconds``      - (histogram)                      ``policy.server`` one request
========================================  =================================  ================================
"""
from __future__ import annotations

import glob
import os

from .daemons import run_dir
from .log import events

log = events("listgate.metrics")

ENV_VAR = "PROMETHEUS_MULTIPROC_DIR"
_m: dict | None = None            # the metric objects, once enabled

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def directory(site) -> str:
    """``STATE_DIR/run/metrics``: prometheus_client's multiprocess files."""
    return os.path.join(run_dir(site), "metrics")


def available() -> bool:
    """Whether prometheus_client can be imported."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


def enable(site, *, fresh: bool = False) -> bool:
    """Start counting in this process when ``metrics.listen`` is set; returns whether it does.

    ``fresh`` (``serve`` before it starts its children): empty the directory
    first. Without prometheus_client, logs an error and returns False (the
    daemon runs, uncounted). Raises OSError when the directory cannot be made.
    """
    global _m
    if not site.conf.metrics.listen:
        return False
    path = directory(site)
    os.makedirs(path, mode=0o750, exist_ok=True)
    if fresh:
        for name in glob.glob(os.path.join(path, "*.db")):
            os.unlink(name)
    os.environ[ENV_VAR] = path
    try:
        from prometheus_client import Counter, Histogram, values
    except ImportError:
        log.error("metrics_unavailable", "metrics.listen is set but prometheus_client is not installed (pip install 'listgate[metrics]')")
        return False
    # The value class is chosen when prometheus_client is first imported; if that was before
    # the variable was set, choose again so values go to the shared files.
    values.ValueClass = values.get_value_class()
    if _m is None:
        _m = {
            "posts": Counter("listgate_posts_accepted", "Posts accepted for distribution (fanned out)"),
            "deliveries": Counter("listgate_deliveries", "Recipients handed to the MTA, by reply class",
                                  ["reply"]),
            "bounces": Counter("listgate_bounces", "Bounces handled, by class and source", ["bounce_class", "source"]),
            "probes": Counter("listgate_probes_sent", "Probe messages sent (bounce life cycle)"),
            "disabled": Counter("listgate_members_disabled", "Members disabled because their probe bounced"),
            "removed": Counter("listgate_members_removed", "Members removed for bouncing"),
            "holds": Counter("listgate_holds", "Posts held for moderation"),
            "eom": Histogram("listgate_milter_eom_seconds", "Milter end-of-message handling time",
                             buckets=LATENCY_BUCKETS),
            "policy": Histogram("listgate_policy_decision_seconds", "Policy server decision time per request",
                                buckets=LATENCY_BUCKETS),
        }
    return True


def enabled() -> bool:
    return _m is not None


def inc(what: str, **labels: str) -> None:
    """Count one ``what`` (a key of the table above: ``posts``, ``bounces``, ``probes``,
    ``disabled``, ``removed``, ``holds``) with its labels."""
    if _m is not None:
        metric = _m[what]
        (metric.labels(**labels) if labels else metric).inc()


def delivery(code: int) -> None:
    """One recipient's reply to a hand-over (``250`` → ``reply="2xx"``)."""
    inc("deliveries", reply=f"{code // 100}xx")


def observe(what: str, seconds: float) -> None:
    """One duration for histogram ``what`` (``eom``, ``policy``)."""
    if _m is not None:
        _m[what].observe(seconds)


class QueueDepth:
    """A collector: ``listgate_queue_depth{queue}``, qfiles waiting and in progress, read at each scrape."""

    def __init__(self, site):
        self.site = site

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        from .queue import QUEUES, QueueError, Switchboard
        family = GaugeMetricFamily("listgate_queue_depth", "Queue files waiting or in progress, per queue",
                                   labels=["queue"])
        for name in QUEUES:
            depth = 0
            if os.path.isdir(os.path.join(self.site.queue_dir, name)):   # a scrape makes no folder
                sb = Switchboard.for_site(self.site, name)
                try:
                    depth = len(sb.ids()) + len(sb.held_ids())
                except QueueError:
                    continue
            family.add_metric([name], depth)
        yield family


def serve_forever(site, should_stop, ready=None) -> None:
    """The exporter (``listgate metrics``): answer ``GET /metrics`` on ``metrics.listen`` until
    ``should_stop()``; the sums of every process's files plus the queue depths.

    Raises OSError when the address cannot be bound, RuntimeError without prometheus_client.
    """
    import time

    if not enable(site):
        raise RuntimeError("metrics are off (metrics.listen) or prometheus_client is missing")
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    from .config import parse_socket
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    registry.register(QueueDepth(site))
    _, (host, port) = parse_socket("inet:" + site.conf.metrics.listen)
    server, thread = start_http_server(port, addr=host, registry=registry)
    log.info("metrics_listening", url=f"http://{host}:{port}/metrics")
    if ready is not None:
        ready()
    try:
        while not should_stop():
            time.sleep(0.2)
    finally:
        server.shutdown()
        server.server_close()
