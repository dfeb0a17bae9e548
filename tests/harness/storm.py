"""Runner crash storms: real ``listgate runner`` processes SIGKILLed during a fan-out.

Used by ``tests/test_crash_storm.py`` (small, in CI) and ``bench/kill_storm.py``
(the full size of issue 20: 30 kills, 25 posts, 300 members)::

    with Storm(workdir, members=100) as storm:
        storm.queue_posts(3)
        figures = storm.kill_storm(kills=10)
    assert figures.missing == 0 and figures.duplicates <= figures.kills

An instance (``listgate init``) whose re-injection target is an
:class:`harness.SmtpSink`: the sink stands for the MTA and commits a delivery
when it answers the final dot, as Postfix's smtpd does. Posts are queued in
``in`` with the metadata the milter writes; the runners are real processes
(``python -m listgate runner``), killed with SIGKILL and started again at
once, as ``listgate serve`` would. The figures count, per member and post
(by Message-ID), how many copies reached the sink.
"""
from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

from listgate import config, instance
from listgate.queue import Switchboard
from listgate.store import close_all, open_store

from .postfix import free_port
from .sink import SmtpSink

LIST = "demo@lists.example.org"
MID_RE = re.compile(rb"(?im)^Message-ID:\s*<(storm-[^>]+)>")
BUSY = ("in", "out", "virgin", "retry")


@dataclass
class Figures:
    kills: int = 0
    posts: int = 0
    members: int = 0
    expected: int = 0          # member x post pairs
    received: int = 0          # copies the sink got
    missing: int = 0           # pairs with no copy
    duplicates: int = 0        # copies beyond the first, over all pairs
    bad: int = 0               # qfiles in bad at the end
    seconds: float = 0.0
    stopped: list[str] = field(default_factory=list)   # stderr of runners that exited by themselves

    def line(self) -> str:
        return (f"{self.kills} kills, {self.posts} posts x {self.members} members: {self.expected} expected, "
                f"{self.received} received, {self.missing} missing, {self.duplicates} duplicates, "
                f"{self.bad} in bad, {self.seconds:.1f} s")


class Storm:
    """An instance with ``members`` members and a sink; runners as child processes."""

    def __init__(self, workdir: str, *, members: int, seed: int = 20, max_attempts: int | None = None):
        self.workdir = workdir
        self.rng = random.Random(seed)
        self.sink = SmtpSink()
        self.sink.start()
        path = instance.init(os.path.join(workdir, "instance"), reinject_port=self.sink.port,
                             policy_socket=f"inet:{free_port()}@127.0.0.1")
        with open(path, "a", encoding="utf-8") as fh:
            fh.write("runner:\n  poll_interval: 0.1s\n"
                     + (f"  max_attempts: {max_attempts}\n" if max_attempts else ""))
        self.site = config.load(path)
        self.members = [f"m{i:04d}@members.test" for i in range(members)]
        store = open_store(self.site, LIST)
        with store.transaction():
            for address in self.members:
                store.add_member(address)
        self.mids: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self.log = open(os.path.join(workdir, "runners.log"), "ab")

    # -- mail ----------------------------------------------------------------
    def queue_posts(self, n: int) -> None:
        """Queue ``n`` posts from the first member in ``in``, as the milter would."""
        board = Switchboard.for_site(self.site, "in")
        poster = self.members[0]
        for _ in range(n):
            mid = f"storm-{len(self.mids)}-{time.monotonic_ns()}@members.test"
            msg = (f"From: {poster}\r\nTo: {LIST}\r\nSubject: storm {len(self.mids)}\r\n"
                   f"Message-ID: <{mid}>\r\n\r\n" + "a line of the body of a post\r\n" * 20).encode()
            board.enqueue(msg, {"list": LIST, "role": "post", "extension": None, "envelope_sender": poster,
                                "recipients": [LIST], "mta_queue_id": f"STORM{len(self.mids)}"})
            self.mids.append(mid)

    # -- runners -------------------------------------------------------------
    def spawn(self, *args: str) -> subprocess.Popen:
        """Start ``listgate runner ARGS``; its stderr goes to ``runner-N.err`` (:meth:`stderr_of`)."""
        err = open(os.path.join(self.workdir, f"runner-{len(self.procs)}.err"), "w+b")
        proc = subprocess.Popen([sys.executable, "-m", "listgate", "-c", self.site.path, "runner",
                                 "--log-level", "warning", *args],
                                stdin=subprocess.DEVNULL, stdout=self.log, stderr=err)
        proc.err_file = err
        self.procs.append(proc)
        return proc

    def kill_storm(self, kills: int, *, timeout: float = 600.0) -> Figures:
        """Run one runner; SIGKILL it ``kills`` times while the fan-out goes on (each kill
        after a random share of the expected deliveries), restarting it at once; then let
        the last one finish and count."""
        t0 = time.monotonic()
        expected = len(self.mids) * len(self.members)
        step = max(1, expected // (kills + 1))
        proc = self.spawn()
        done = 0
        while done < kills:
            start = len(self.sink.deliveries)
            goal = start + self.rng.randint(step // 2, step + step // 2)
            while len(self.sink.deliveries) < goal and time.monotonic() - t0 < timeout:
                if self._idle():
                    break
                time.sleep(0.005)
            if self._idle():
                break  # everything was delivered before the storm ended: fewer kills
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            done += 1
            proc = self.spawn()
        figures = self.finish(timeout=max(60.0, timeout - (time.monotonic() - t0)))
        figures.kills = done
        figures.seconds = time.monotonic() - t0
        return figures

    def _idle(self) -> bool:
        boards = [Switchboard.for_site(self.site, q) for q in BUSY]
        return all(not b.ids() and not b.held_ids() for b in boards)

    def finish(self, *, timeout: float = 120.0) -> Figures:
        """Wait until the queues are drained, stop the runners (SIGTERM), count."""
        end = time.monotonic() + timeout
        while not self._idle() and time.monotonic() < end:
            time.sleep(0.05)
        self.stop()
        return self.figures()

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stderr_of(self, proc: subprocess.Popen) -> str:
        proc.err_file.seek(0)
        return proc.err_file.read().decode("utf-8", "replace")

    def figures(self) -> Figures:
        counts: Counter = Counter()
        received = 0
        for d in self.sink.messages():
            m = MID_RE.search(d.data)
            if m is None:
                continue
            received += 1
            counts[(d.rcpt.lower(), m.group(1).decode())] += 1
        pairs = [(a, mid) for mid in self.mids for a in self.members]
        return Figures(posts=len(self.mids), members=len(self.members), expected=len(pairs), received=received,
                       missing=sum(1 for p in pairs if counts[p] == 0),
                       duplicates=sum(max(0, counts[p] - 1) for p in pairs),
                       bad=len(Switchboard.for_site(self.site, "bad").ids()))

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.err_file.close()
        self.sink.stop()
        self.log.close()
        close_all()

    def __enter__(self) -> "Storm":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
