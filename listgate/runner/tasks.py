"""Periodic tasks: bounce-engine follow-ups, eviction of expired pending records.

Per list: :meth:`BounceEngine.run_periodic` (disabled-member notices and
removals, expired probes) and :meth:`ListStore.evict_expired` (confirmations,
held posts and re-enable tokens past their lifetime; an expired held post is
reported to the moderators), the list's digest when it is due
(:func:`listgate.app.digests.run`) and the DNS check of members with a recent
hard bounce (:func:`listgate.app.dead_domains.run`: a null MX or NXDOMAIN
gets them probed at once). Retries are served by the runner's ``retry``
pass; ``listgate tasks run`` does both for sites that use cron.

The runner runs the tasks every ``runner.tasks_interval`` seconds of
:mod:`listgate.clock` time; the time of the last run is kept in
``STATE_DIR/runner-tasks.stamp`` so a cron job and a runner, or a restarted
runner, do not repeat them early.

Mail waiting in ``bad`` (qfiles a crash loop or a bug set aside: members
may not have had it) is never left there silently: once a day
(``STATE_DIR/bad-report.stamp``) while ``bad`` is not empty, the owners of
each list concerned and the site's postmaster get a notice listing those
qfiles and how to put them back (``listgate queue requeue``).

Several runners (several MX hosts sharing one PostgreSQL store, or a cron job
beside a runner) run each list's tasks once per period: before a list's
tasks, the runner takes that list's ``tasks`` lease for ``tasks_interval``
(:meth:`ListStore.try_lock`, one atomic step in the store), and a list whose
lease another process holds is skipped.
"""
from __future__ import annotations

import os
import socket

from .. import clock, messages
from ..app import dead_domains, digests, moderation, notices, texts
from ..bounce.reports import postmaster_address
from ..log import events
from ..queue import QueueError, Switchboard
from ..store import StoreUnavailable, open_store

log = events("listgate.runner.tasks")

STAMP = "runner-tasks.stamp"
BAD_STAMP = "bad-report.stamp"
BAD_REPORT_EVERY = 86400.0


def last_run(site, name: str = STAMP) -> float | None:
    """Clock time of the last completed run (of the stamp ``name``), or None."""
    try:
        with open(os.path.join(site.state_dir, name), encoding="ascii") as fh:
            return float(fh.read().strip())
    except (OSError, ValueError):
        return None


def due(site) -> bool:
    last = last_run(site)
    return last is None or clock.now() - last >= site.conf.runner.tasks_interval


def _write_stamp(site, when: float, name: str = STAMP) -> None:
    """Record the last run; on a full or read-only disk the tasks simply run again next time."""
    path = os.path.join(site.state_dir, name)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="ascii") as fh:
            fh.write(repr(when))
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("tasks_stamp_failed", "cannot record the periodic tasks' last run", path=path, error=exc.strerror)
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
                log.info("tasks_run_elsewhere", "periodic tasks run elsewhere this period", list=key)
                continue
            done += [f"{key}: {line}" for line in engine.run_periodic(lc) or ()]
            for rec in store.evict_expired():
                done.append(f"{key}: expired {rec.type} {rec.token}")
                if rec.type == "held_message":
                    moderation.expired(site, lc, rec)
            done += [f"{key}: {line}" for line in digests.run(site, lc)]
            done += [f"{key}: {line}" for line in dead_domains.run(site, lc, engine)]
        except (StoreUnavailable, QueueError) as exc:
            log.warning("tasks_skipped", "periodic tasks skipped", list=key, error=exc)
    try:
        done += report_bad(site)
    except QueueError as exc:
        log.warning("bad_report_postponed", "report of the bad queue postponed", error=exc)
    _write_stamp(site, started)
    for line in done:
        log.info("task_done", "periodic task", result=line)
    return done


def bad_entries(site) -> list[tuple[str, dict | None]]:
    """``(id, metadata or None if unreadable)`` of every qfile in ``bad``, oldest first."""
    bad = Switchboard.for_site(site, "bad")
    found = []
    for qid in bad.ids():
        try:
            qf = bad.peek(qid)
        except (OSError, ValueError):   # QFileFormatError is a ValueError
            qf = None
        found.append((qid, qf.meta if qf is not None else None))
    return found


def _bad_lines(entries) -> str:
    lines = []
    for qid, meta in entries:
        meta = meta or {}
        lines.append(f"  {qid}  from {meta.get('from_queue') or '?'}  list {meta.get('list') or '-'}\n"
                     f"      {str(meta.get('reason') or 'unreadable')[:200]}")
    return "\n".join(lines)


def report_bad(site) -> list[str]:
    """Once a day while ``bad`` is not empty: a notice to the owners of each list with
    qfiles there and one to the postmaster listing them all. Returns what was queued."""
    entries = bad_entries(site)
    last = last_run(site, BAD_STAMP)
    if not entries or (last is not None and clock.now() - last < BAD_REPORT_EVERY):
        return []
    done = []
    by_list: dict[str, list] = {}
    for qid, meta in entries:
        by_list.setdefault((meta or {}).get("list") or "", []).append((qid, meta))
    for key, items in by_list.items():
        lc = site.get_list(key) if key else None
        if lc is None:
            continue
        qid = notices.tell_owners(site, lc, "bad_queue", kind="bad_report", count=len(items),
                                  entries=_bad_lines(items))
        done.append(f"{key}: bad queue reported to the owners ({len(items)} qfile(s)) as {qid}")
    pm = postmaster_address(site)
    text = texts.render("bad_queue_site", site=site, count=len(entries), entries=_bad_lines(entries))
    msg = messages.make_notice(sender=pm, to=pm, subject=text.subject, body=text.body, domain=site.conf.hostname)
    data, utf8 = messages.serialize(msg)
    qid = Switchboard.for_site(site, "virgin").enqueue(data, {
        "kind": "bad_report", "deliveries": [{"rcpt": pm, "sender": ""}], "done": [], "recipients": [pm],
        "envelope_sender": "", "smtputf8": utf8})
    done.append(f"bad queue reported to the postmaster {pm} ({len(entries)} qfile(s)) as {qid}")
    _write_stamp(site, clock.now(), BAD_STAMP)
    return done
