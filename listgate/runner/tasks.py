"""Periodic tasks: bounce-engine follow-ups, eviction of expired pending records.

Per list: :meth:`BounceEngine.run_periodic` (disabled-member notices and
removals, expired probes) and :meth:`ListStore.evict_expired` (confirmations,
held posts and re-enable tokens past their lifetime; an expired held post is
reported to the moderators) and the list's digest when it is due
(:func:`listgate.app.digests.run`). Retries are served by the runner's ``retry``
pass; ``listgate tasks run`` does both for sites that use cron.

The runner runs the tasks every ``runner.tasks_interval`` seconds of
:mod:`listgate.clock` time; the time of the last run is kept in
``STATE_DIR/runner-tasks.stamp`` so a cron job and a runner, or a restarted
runner, do not repeat them early.

Several runners (several MX hosts sharing one PostgreSQL store, or a cron job
beside a runner) run each list's tasks once per period: before a list's
tasks, the runner takes that list's ``tasks`` lease for ``tasks_interval``
(:meth:`ListStore.try_lock`, one atomic step in the store), and a list whose
lease another process holds is skipped.
"""
from __future__ import annotations

import logging
import os
import socket

from .. import clock, messages
from ..app import digests, moderation
from ..log import kv
from ..queue import QueueError
from ..store import StoreUnavailable, open_store

log = logging.getLogger("listgate.runner.tasks")

STAMP = "runner-tasks.stamp"


def _stamp_path(site) -> str:
    return os.path.join(site.state_dir, STAMP)


def last_run(site) -> float | None:
    """Clock time of the last completed run, or None."""
    try:
        with open(_stamp_path(site), encoding="ascii") as fh:
            return float(fh.read().strip())
    except (OSError, ValueError):
        return None


def due(site) -> bool:
    last = last_run(site)
    return last is None or clock.now() - last >= site.conf.runner.tasks_interval


def _write_stamp(site, when: float) -> None:
    """Record the last run; on a full or read-only disk the tasks simply run again next time."""
    path = _stamp_path(site)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="ascii") as fh:
            fh.write(repr(when))
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot record the periodic tasks' last run %s", kv(path=path, error=exc.strerror))
        try:
            os.unlink(tmp)
        except OSError:
            pass


def run(site, engine=None) -> list[str]:
    """Run every list's periodic tasks now; returns one line per thing done.

    A list whose store is unavailable is skipped (logged) and the others go on.
    """
    if engine is None:
        from ..app.bounces import BounceEngine
        engine = BounceEngine(site)
    started = clock.now()
    done: list[str] = []
    holder = f"{socket.gethostname()}:{os.getpid()}"
    for lc in site.iter_lists():
        key = messages.list_key(lc)
        try:
            store = open_store(site, key)
            if not store.try_lock("tasks", site.conf.runner.tasks_interval, holder):
                log.info("periodic tasks run elsewhere this period %s", kv(list=key))
                continue
            done += [f"{key}: {line}" for line in engine.run_periodic(lc) or ()]
            for rec in store.evict_expired():
                done.append(f"{key}: expired {rec.type} {rec.token}")
                if rec.type == "held_message":
                    moderation.expired(site, lc, rec)
            done += [f"{key}: {line}" for line in digests.run(site, lc)]
        except (StoreUnavailable, QueueError) as exc:
            log.warning("periodic tasks skipped %s", kv(list=key, error=exc))
    _write_stamp(site, started)
    for line in done:
        log.info("task %s", line)
    return done
