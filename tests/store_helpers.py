"""Helpers for the multi-process store tests: a two-list instance and worker processes.

Run as a script, this file is the worker: ``python store_helpers.py MODE SITE LIST [ARGS...]``.
Each worker opens the store through ``open_store`` (as milter, policy and
runner do), prints one line per milestone and a JSON result as its last line.
"""
from __future__ import annotations

import json
import os
import selectors
import subprocess
import sqlite3
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
OTHER_LIST = """name: other
domain: lists.example.org
owners:
  - owner@lists.example.org
"""


def add_second_list(site_path: str, busy_timeout: str = "2s") -> None:
    """Add list ``other@lists.example.org`` and a short store busy timeout to an ``init`` instance."""
    base = os.path.dirname(site_path)
    with open(os.path.join(base, "lists.d", "other.yaml"), "w", encoding="utf-8") as fh:
        fh.write(OTHER_LIST)
    with open(site_path, "a", encoding="utf-8") as fh:
        fh.write(f"store:\n  busy_timeout: {busy_timeout}\n")


class Worker:
    """A worker subprocess whose output lines can be awaited with a deadline."""

    def __init__(self, mode: str, site_path: str, list_key: str, *args: str):
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "store_helpers.py"), mode, site_path,
                                      list_key, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self._buf = b""
        self.lines: list[str] = []

    def expect(self, prefix: str, timeout: float = 20.0) -> str:
        """Wait for a line starting with ``prefix``; AssertionError on timeout or exit."""
        deadline = time.monotonic() + timeout
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        try:
            while True:
                for line in self.lines:
                    if line.startswith(prefix):
                        self.lines.remove(line)
                        return line
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"worker did not say {prefix!r} in {timeout}s: {self.lines}")
                if not sel.select(left):
                    continue
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    err = self.proc.stderr.read().decode(errors="replace")
                    raise AssertionError(f"worker exited before {prefix!r}: {self.lines} {err}")
                self._buf += chunk
                *done, self._buf = self._buf.split(b"\n")
                self.lines.extend(d.decode() for d in done)
        finally:
            sel.close()

    def result(self, timeout: float = 30.0) -> dict:
        """The worker's final JSON line (closes its stdin first, which releases a holder)."""
        self.release()
        return json.loads(self.expect("{", timeout))

    def release(self) -> None:
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()

    def stop(self) -> None:
        """Kill if still running and reap (bounded)."""
        self.release()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        for f in (self.proc.stdout, self.proc.stderr):
            f.close()


def start_all(workers: list[Worker], go_file: str) -> None:
    """Wait until every worker has its store open, then let them all go at once."""
    for w in workers:
        w.expect("ready")
    with open(go_file, "w"):
        pass


# -- the worker side ----------------------------------------------------------------

def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _wait_for(path: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise SystemExit(f"no {path} after {timeout}s")
        time.sleep(0.001)


def _main(argv: list[str]) -> None:
    from listgate import config
    from listgate.store import BounceEvent, StoreUnavailable, UnknownToken, open_store

    mode, site_path, list_key, *args = argv
    store = open_store(config.load(site_path), list_key)

    if mode == "hold":  # hold the write lock until stdin is closed
        with store.transaction():
            store.add_member("holder@example.com")
            _say("locked")
            sys.stdin.read()
        _say(json.dumps({"held": True}))

    elif mode == "write":  # N committed writes; how long they took or that the store was unavailable
        count = int(args[0])
        start = time.monotonic()
        try:
            for i in range(count):
                store.add_member(f"w{i}@example.com")
                store.add_event(BounceEvent(at=i, address=f"w{i}@example.com", bounce_class="soft"))
        except StoreUnavailable as exc:
            _say(json.dumps({"unavailable": str(exc), "seconds": time.monotonic() - start}))
            return
        _say(json.dumps({"written": count, "seconds": time.monotonic() - start}))

    elif mode == "bump":  # read-modify-write of one member's score plus an event, N times
        go, count, tag = args[0], int(args[1]), args[2]
        _say("ready")
        _wait_for(go)
        for i in range(count):
            with store.transaction():
                m = store.get_member("target@example.com")
                m.bounce_score += 1
                m.last_bounce_at = float(m.bounce_score)
                store.save_member(m)
                store.add_event(BounceEvent(at=float(i), address=m.key, bounce_class="hard", action="scored",
                                            detail=f"{tag}:{i}"))
        _say(json.dumps({"done": count}))

    elif mode == "confirm":  # race for each token
        go, tokens = args[0], args[1:]
        _say("ready")
        _wait_for(go)
        outcome = {}
        for token in tokens:
            try:
                store.confirm_pending(token)
                outcome[token] = "won"
            except UnknownToken:
                outcome[token] = "unknown"
        _say(json.dumps(outcome))

    elif mode == "crash_mid":  # die (by the parent's SIGKILL) inside an open transaction
        with store.transaction():
            for i in range(200):
                store.add_member(f"doomed{i}@example.com")
                store.add_evidence(f"doomed{i}@example.com", b"x" * 4096, float(i))
            _say("mid")
            time.sleep(60)

    elif mode == "crash_loop":  # commit member+event pairs until killed
        i = 0
        while True:
            with store.transaction():
                store.add_member(f"m{i}@example.com")
                store.add_event(BounceEvent(at=float(i), address=f"m{i}@example.com", bounce_class="hard"))
                store.add_evidence(f"m{i}@example.com", os.urandom(8192), float(i))
            i += 1
            if i == 20:
                _say("running")
    elif mode == "ops":  # one committed change per argument: add:ADDR, remove:ADDR, probe:ADDR, confirm:TOKEN,
        #                    remember:KEY:OWNER (an empty OWNER is None; says fresh or duplicate);
        #                    checkpoint (a TRUNCATE checkpoint: the next commit restarts the WAL)
        done = []
        for op in args:
            verb, _, arg = op.partition(":")
            if verb == "add":
                done.append(store.add_member(arg).key)
            elif verb == "remove":
                done.append(store.remove_member(arg).key)
            elif verb == "probe":
                done.append(store.add_pending("probe", {"member": arg}, 3600).token)
            elif verb == "confirm":
                done.append(store.confirm_pending(arg).token)
            elif verb == "remember":
                key, _, owner = arg.partition(":")
                fresh = store.remember("accepted", key, 3600, owner=owner or None)
                done.append("fresh" if fresh else "duplicate")
            elif verb == "checkpoint" and not hasattr(store, "path"):
                done.append("no file")                  # PostgreSQL: the server's WAL is not ours
            elif verb == "checkpoint":
                raw = sqlite3.connect(store.path, timeout=10)
                try:
                    busy, _, _ = raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                finally:
                    raw.close()
                done.append("busy" if busy else "checkpointed")
            else:
                raise SystemExit(f"unknown op {op}")
        _say(json.dumps({"done": done}))

    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    _main(sys.argv[1:])
