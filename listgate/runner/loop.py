"""The queue runner: takes qfiles, dispatches them, schedules periodic tasks, stops on SIGTERM.

Queues, in the order one pass serves them: ``in`` (list mail: posts,
commands, confirmations, owner mail; a retried SMTP transaction's second
copy is dropped first, :mod:`listgate.runner.duplicates`), ``bounces`` (only if a front end queues
bounces instead of handling them inline), ``virgin`` (generated mail),
``out`` (posts ready for fan-out), ``retry`` (deferred deliveries whose
backoff has passed).

Several runner processes may share the queues by hash slice
(``--slice i/n``, Mailman 3's scheme): each takes only the qfiles of its
slice and recovers only its own slice's files at start-up. Periodic tasks
run in slice 0 only. One live runner per slice: :meth:`Runner.recover` first
takes the slice's lock (:mod:`listgate.queue.lock`), held until the process
ends, so a second runner of the slice never reclaims the qfiles the first
one is delivering.

Failures: a store or queue that is unavailable (:class:`StoreUnavailable`,
:class:`QueueError`: full disk, locked database) puts the qfile back and the
runner waits a poll interval: nothing is lost, it is tried again. A request
that needs a DNS answer the resolver cannot get (:class:`~listgate.dns.DnsUnknown`:
a subscription whose domain cannot be checked) waits in ``retry``
(``requeue``: its queue, ``retry_at``: ``runner.retry_backoff`` later) and
then goes back to its queue, without holding up the mail behind it. Anything
else (a bug, mail nothing can handle) moves the qfile to ``shunt`` with the
reason, for ``listgate queue unshunt`` after a fix.

SIGTERM/SIGINT: the transaction in hand is finished, fan-out progress is
already durable in the qfile, the qfile goes back to its queue, and
:meth:`Runner.run_forever` returns.
"""
from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from .. import addresses, clock, routing
from ..app import commands, notices, posting
from ..config import Site, Watcher
from ..log import Backoff, events
from ..queue import QueueError, Switchboard, wake
from ..dns import DnsUnknown
from ..queue.lock import SliceLock
from ..store import StoreUnavailable
from . import delivery, duplicates, tasks

log = events("listgate.runner")

SERVED = ("in", "bounces", "virgin", "out", "retry")
# Delivery threads per runner, each with its own SMTP connection and its own qfile:
# progress is fsync'd after every hand-over, so one connection alone waits on the disk
# most of the time (bench/fanout.py).
DELIVERY_WORKERS = 4
# seconds between warnings about one lasting condition (stuck qfile, queues or tasks failing)
REPEAT_FIRST, REPEAT_MAX = 60.0, 3600.0


class Runner:
    """Processes the queues of one site (one hash slice of them).

    ``source`` is a :class:`Site` or a :class:`Watcher` (then configuration
    edits are picked up between qfiles). ``engine`` defaults to a
    ``BounceEngine`` made on first need.
    """

    def __init__(self, source: Site | Watcher, *, slice: int = 0, slices: int = 1, engine=None):
        self.watcher = source if isinstance(source, Watcher) else None
        self.site = source.current() if isinstance(source, Watcher) else source
        self.slice, self.slices = slice, slices
        self._engine = engine
        self.deliverer = delivery.Deliverer(self.site, engine)
        self._local = threading.local()
        self._deliverers = [self.deliverer]
        self._deliverers_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self.stopping = False
        self._next_retry = 0.0             # earliest retry_at among the retry qfiles last seen
        self._retry_seen: set[str] = set()
        self._flush_seen: str | None = None   # the last token of ``queue flush`` read (queue.wake)
        self.outcomes: Counter = Counter()    # recipients by outcome, deliveries of this process
        # A qfile put back because a store or queue is unavailable is retried every poll
        # interval; it is logged once, then at a backoff (REPEAT_FIRST doubling to
        # REPEAT_MAX seconds), not every 2 s for as long as the problem lasts.
        self.repeats = Backoff(REPEAT_FIRST, REPEAT_MAX)
        mx = self.site.conf.runner.max_attempts
        self.boards = {q: Switchboard(self.site.queue_dir, q, max_attempts=mx) for q in SERVED}
        self.lock = SliceLock(self.site.queue_dir, slice, slices)

    # -- life cycle --------------------------------------------------------------
    def stop(self, *_args) -> None:
        """Ask the runner to stop after the transaction in hand (signal handler)."""
        self.stopping = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def recover(self) -> int:
        """Take this slice's lock (if not held yet: :meth:`SliceLock.acquire`, raises
        ``SliceBusy`` when a live runner has it), then put back the slice's qfiles
        left in progress by a crash. Start-up only."""
        self.lock.acquire()
        return sum(b.recover(slice=self.slice, slices=self.slices) for b in self.boards.values())

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for d in self._deliverers:
            d.close()
        self.lock.release()

    def _thread_deliverer(self) -> delivery.Deliverer:
        """The calling thread's Deliverer (one SMTP connection per delivery thread)."""
        d = getattr(self._local, "deliverer", None)
        if d is None:
            d = delivery.Deliverer(self.site, self._engine)
            with self._deliverers_lock:
                self._deliverers.append(d)
            self._local.deliverer = d
        d.site, d._engine = self.site, self._engine
        return d

    @property
    def engine(self):
        if self._engine is None:
            from ..app.bounces import BounceEngine
            self._engine = BounceEngine(self.site)
            self.deliverer._engine = self._engine
        return self._engine

    def _refresh(self) -> None:
        if self.watcher is not None:
            site = self.watcher.current()
            if site is not self.site:
                self.site = self.deliverer.site = site
                self._engine = self.deliverer._engine = None

    # -- work --------------------------------------------------------------------
    def run_once(self, *, with_tasks: bool = True) -> int:
        """Process everything ready now (repeated passes until a pass finds nothing); returns the count."""
        total = 0
        while not self.stopping:
            n = self._pass()
            if with_tasks and self.slice == 0:
                n += self.maybe_run_tasks()
            total += n
            if n == 0:
                break
        return total

    def run_forever(self) -> None:
        """Serve the queues until :meth:`stop` (SIGTERM); sleeps ``runner.poll_interval`` when idle."""
        try:
            while not self.stopping:
                try:
                    busy = self.run_once()
                except (QueueError, StoreUnavailable) as exc:
                    # A read-only or full queue/store: nothing is lost (qfiles
                    # stay where they are); wait and try again rather than exit.
                    self._repeated("queues_unavailable", "queues unavailable, waiting", "queues", error=exc)
                    busy = 0
                else:
                    self._ended("queues_available", "queues", "queues usable again")
                if busy == 0:
                    self._sleep(self.site.conf.runner.poll_interval)
        finally:
            self.close()
            log.info("runner_stopped", slice=f"{self.slice}/{self.slices}")

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < end:
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))

    def maybe_run_tasks(self) -> int:
        """Run periodic tasks if ``runner.tasks_interval`` has passed since the last run (any process)."""
        if not tasks.due(self.site):
            return 0
        try:
            tasks.run(self.site, self.engine)
        except (StoreUnavailable, QueueError) as exc:
            self._repeated("tasks_postponed", "periodic tasks postponed", "tasks", error=exc)
        else:
            self._ended("tasks_resumed", "tasks", "periodic tasks ran again")
        return 0

    def _repeated(self, event: str, msg: str, key: str, **fields) -> None:
        """Warn about a condition that may last (``key``): at once, then at a backoff; debug in between."""
        n = self.repeats.hit(key)
        if n is None:
            log.debug(event, msg, attempts="repeat", **fields)
        else:
            log.warning(event, msg + ("" if n == 1 else f" (still, {n} attempts; repeated at a backoff)"),
                        attempts=n, **fields)

    def _ended(self, event: str, key: str, msg: str, **fields) -> None:
        """The condition ``key`` warned about by :meth:`_repeated` is over: one line, if there was one."""
        n = self.repeats.clear(key)
        if n:
            log.info(event, msg, attempts=n, **fields)

    def _pass(self) -> int:
        count = 0
        for name in SERVED:
            board = self.boards[name]
            if name == "retry":
                count += self._pass_retry(board)
                continue
            if name in ("out", "virgin"):
                count += self._pass_parallel(board)
                continue
            while not self.stopping:
                self._refresh()
                qf = board.dequeue(slice=self.slice, slices=self.slices)
                if qf is None:
                    break
                if not self.process(board, qf):   # put back: no progress (run_once must end)
                    self._sleep(self.site.conf.runner.poll_interval)
                    break
                count += 1
        return count

    def _pass_parallel(self, board) -> int:
        """Deliver ``board``'s qfiles, up to DELIVERY_WORKERS at once."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(DELIVERY_WORKERS, thread_name_prefix="delivery")
        count = 0
        while not self.stopping:
            self._refresh()
            self.engine  # made once here, shared by the delivery threads
            batch = []
            for _ in range(DELIVERY_WORKERS):
                qf = board.dequeue(slice=self.slice, slices=self.slices)
                if qf is None:
                    break
                batch.append(qf)
            if not batch:
                break
            done = list(self._pool.map(lambda qf: self.process(board, qf), batch))
            count += sum(done)
            if not all(done):
                self._sleep(self.site.conf.runner.poll_interval)
                break
        return count

    def run_retries(self) -> tuple[int, Counter]:
        """Deliver the ``retry`` qfiles whose backoff has passed: ``(qfiles tried, recipients
        by outcome)``, the outcomes ``delivered``, ``failed``, ``deferred``, ``gave_up``
        (:class:`listgate.runner.delivery.Result`)."""
        before = Counter(self.outcomes)
        n = self._pass_retry(self.boards["retry"])
        return n, self.outcomes - before

    def _pass_retry(self, board) -> int:
        # Taking a qfile means a rename and a directory fsync: when nothing can be due
        # (the earliest retry_at seen is still ahead, no new qfile arrived and no
        # ``queue flush`` since the last look: queue.wake), skip.
        flushed = wake.token(board.dir)   # read before listing: a later flush changes it again
        ids = board.ids()
        if not ids or (clock.now() < self._next_retry and set(ids) <= self._retry_seen
                       and flushed == self._flush_seen):
            return 0
        self._flush_seen = flushed
        count, waiting = 0, []
        try:
            for _ in range(len(ids)):
                if self.stopping:
                    break
                qf = board.dequeue(slice=self.slice, slices=self.slices)
                if qf is None:
                    break
                if not delivery.due(qf):
                    waiting.append(qf)
                    continue
                if not self.process(board, qf):
                    break
                count += 1
        finally:
            for qf in waiting:
                board.release(qf)
            self._retry_seen = {qf.id for qf in waiting}
            self._next_retry = min((delivery.retry_at(qf) for qf in waiting), default=0.0)
        return count

    def process(self, board, qf) -> bool:
        """Handle one qfile; False if it was put back because a store or queue is unavailable."""
        try:
            if board.name == "retry" and qf.meta.get("requeue"):
                board.move(qf, qf.meta["requeue"])      # a request that waited for DNS: its turn again
            elif board.name in ("out", "virgin", "retry"):
                deliverer = (self._thread_deliverer() if threading.current_thread() is not threading.main_thread()
                             else self.deliverer)
                res = deliverer.deliver(board, qf, should_stop=lambda: self.stopping)
                with self._deliverers_lock:
                    self.outcomes.update(delivered=res.delivered, failed=res.failed, deferred=res.deferred,
                                         gave_up=res.gave_up)
                if res.disposition == "stopped":
                    board.release(qf)
            else:
                outcome = self.dispatch(qf)
                board.finish(qf)
                # a bounce has its one info line from the bounce life cycle (event=bounce)
                (log.debug if qf.meta.get("role") == "bounces" else log.info)(
                    "qfile_processed", queue=board.name, qfile=qf.id, list=qf.meta.get("list"),
                    role=qf.meta.get("role"), queue_id=qf.meta.get("mta_queue_id"), outcome=outcome)
            self._ended("qfile_unstuck", f"qfile:{qf.id}", "processed after being put back", queue=board.name,
                        qfile=qf.id)
            return True
        except (StoreUnavailable, QueueError) as exc:
            self._repeated("qfile_stuck", "put back, will retry", f"qfile:{qf.id}", queue=board.name, qfile=qf.id,
                           list=qf.meta.get("list"), error=exc)
            board.release(qf)
            return False
        except DnsUnknown as exc:
            # waits in retry, not at the head of its queue: other mail goes on meanwhile
            retry_at = clock.now() + self.site.conf.runner.retry_backoff
            log.info("waiting_for_dns", queue=board.name, qfile=qf.id, error=exc, retry_at=int(retry_at))
            try:
                board.move(qf, "retry", meta={**qf.meta, "requeue": board.name, "retry_at": retry_at})
            except QueueError:
                board.release(qf)
                return False
            return True
        except Exception as exc:  # noqa: BLE001 - one bad qfile must not stop the runner
            self.repeats.clear(f"qfile:{qf.id}")
            log.exception("qfile_shunted", queue=board.name, qfile=qf.id)
            try:
                board.move(qf, "shunt", reason=f"{type(exc).__name__}: {exc}"[:500])
            except QueueError:
                board.release(qf)
                return False
            return True

    def dispatch(self, qf) -> str:
        """Route an ``in``/``bounces`` qfile by its ``role``; returns what was done."""
        lc = self.site.get_list(qf.meta.get("list") or "")
        if lc is None and self.watcher is not None and self.watcher.maybe_reload():
            # a list file written a moment ago (``listgate import``, an admin) with its
            # mail right behind it: read the configuration now, not at the next interval
            self._refresh()
            lc = self.site.get_list(qf.meta.get("list") or "")
        site = self.site
        if lc is None:
            raise LookupError(f"no such list {qf.meta.get('list')!r} (removed from the configuration?)")
        role = qf.meta.get("role")
        if qf.queue == "in" and role != "bounces" and not duplicates.first_acceptance(site, lc, qf):
            return "duplicate: a retried transaction of a message already accepted"
        if role == "post":
            return posting.handle_post(site, lc, qf)
        if role in ("request", "join", "leave"):
            return commands.handle_request(site, lc, qf)
        if role == "confirm":
            return commands.handle_confirm(site, lc, qf)
        if role == "owner":
            return notices.forward_to_owners(site, lc, qf.msg, qf.meta.get("envelope_sender"))
        if role == "bounces":
            return self._bounce(lc, qf)
        raise ValueError(f"unknown role {role!r}")

    def _bounce(self, lc, qf) -> str:
        """A bounce a front end queued instead of handing it over inline: routing decides what
        its recipient is now (no front end decided it for this qfile), then the bounce life cycle."""
        rcpt = notices.address(lc, "bounces", qf.meta.get("extension"))
        decision = routing.decide_rcpt(self.site, rcpt)
        if decision.action == "tempfail":
            raise StoreUnavailable(decision.text)
        address = decision.address or addresses.ListAddress(lc.name, lc.domain, "bounces", None)
        outcome = self.engine.handle_bounce(lc, qf.msg, address, verp_result=decision.verp,
                                            envelope_sender=qf.meta.get("envelope_sender"),
                                            mta_queue_id=qf.meta.get("mta_queue_id"))
        return f"bounce: {getattr(outcome, 'actions', outcome)}"
