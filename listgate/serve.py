"""``listgate serve``: milter, policy server, runner (LMTP server, web front end, metrics) as supervised child processes.

The embedded default for small sites: one command (one systemd unit) runs
``listgate milter``, ``listgate policy`` and ``listgate runner``, and
``listgate lmtp`` when the site config sets ``lmtp.socket``, ``listgate web``
when it sets ``web.base_url``, ``listgate metrics`` when it sets
``metrics.listen``, each its own
process with its own job (Postfix's shape). serve and each child keep a
record in ``STATE_DIR/run`` (:mod:`listgate.daemons`; serve also writes
``run/serve.pid``), removed when they stop: ``listgate status``, ``reload``,
``stop`` and ``check`` read them. A child that exits is restarted
after a pause that doubles on each quick failure (1 s up to 60 s), so a broken
configuration does not spin. SIGTERM/SIGINT: every child gets SIGTERM (the
runner finishes the transaction in hand), then, after ``STOP_TIMEOUT``
seconds, SIGKILL; serve returns once all are gone.

SIGHUP (``listgate reload``, the unit's ``ExecReload``) applies the settings
the daemons read only at start (:data:`listgate.daemons.RESTART_ONLY`:
sockets, logging, re-injection, metrics): serve reads the site file again and
restarts each child whose restart-only settings changed, starts the children
the file now asks for (``lmtp.socket``, ``web.base_url``, ``metrics.listen``
set) and stops those it no longer does; the other children are left alone.
Everything else needs no signal: every daemon re-reads the site and list
files on its own when they change (:class:`listgate.config.Watcher`). A site
file with errors changes nothing (logged). serve counts reloads in its record
(``reloads``, ``reload_result``), which ``listgate reload`` waits for. The
children start with SIGHUP ignored too, so a closing terminal does not stop the
runner or the policy server (libmilter waits for SIGHUP itself and stops the
milter on it; serve restarts it). Children die with serve: each asks the kernel
for SIGTERM when its parent dies (Linux ``PR_SET_PDEATHSIG``, prctl(2)), so a
SIGKILLed serve leaves no orphans to fight the next serve for sockets and queues.
The runner child is started
with ``--wait``: it takes its slice lock (``listgate.queue.lock``) and, if a
runner of an earlier serve still lives, waits for it rather than sharing the
slice.

Readiness (``Type=notify``): ``READY=1`` goes to ``$NOTIFY_SOCKET`` once the
milter, policy (and web) sockets accept connections (bounded wait); children do not
see ``$NOTIFY_SOCKET`` (only the main process may talk to systemd).
"""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time

from . import clock, config, daemons, log as lg_log, metrics, sdnotify
from .config import parse_socket
from .log import events

log = events("listgate.serve")

CHILDREN = ("milter", "policy", "runner")
STOP_TIMEOUT = 30.0
READY_TIMEOUT = 15.0
MAX_PAUSE = 60.0


PR_SET_PDEATHSIG = 1   # <linux/prctl.h>


def _child_setup(parent: int) -> None:
    """In the child between fork and exec (``preexec_fn``): SIGHUP ignored, and SIGTERM
    when ``parent`` dies (PR_SET_PDEATHSIG, prctl(2); kept across exec). Linux only:
    elsewhere the children outlive a killed serve as before."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return
    prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # serve died before the request took effect
        os._exit(1)


def children_for(site) -> tuple[str, ...]:
    """The children serve runs for ``site`` (no metrics child without prometheus_client: it could only
    fail again and again; :func:`listgate.metrics.enable` logged why, ``listgate status`` shows it down)."""
    return (CHILDREN + (("lmtp",) if site.conf.lmtp.socket else ()) + (("web",) if site.conf.web.base_url else ())
            + (("metrics",) if site.conf.metrics.listen and metrics.available() else ()))


def listening(site, spec: str) -> bool:
    """True when the socket ``spec`` (unix:PATH relative to state_dir, or inet) accepts a connection."""
    try:
        kind, where = parse_socket(spec)
    except ValueError:
        return True
    family, addr = ((socket.AF_UNIX, site.resolve(where)) if kind == "unix"
                    else (socket.AF_INET6 if ":" in where[0] else socket.AF_INET, where))
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            s.connect(addr)
        return True
    except OSError:
        return False


class Supervisor:
    """Starts and watches the children; ``stop()`` (the signal handler) ends :meth:`run`."""

    def __init__(self, site, *, children=None, extra_args: dict | None = None, log_level: str | None = None):
        self.site = site
        self.fixed = children is not None      # chosen by the caller: a reload does not change the set
        self.children = tuple(children if children is not None else children_for(site))
        self.extra = extra_args or {}
        self.log_level = log_level
        self.procs: dict[str, subprocess.Popen] = {}
        self.started: dict[str, float] = {}
        self.pause: dict[str, float] = {name: 1.0 for name in self.children}
        self.due: dict[str, float] = {}
        self.stopping = False
        self.hangups = 0
        self.since = clock.now()
        self.reloads = 0
        self.reload_result = ""
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)
        self.env = env

    def command(self, name: str) -> list[str]:
        # The runner takes its slice lock (listgate.queue.lock); --wait: a runner left over
        # from an earlier serve (still finishing after that serve died) is waited for, not raced.
        wait = ["--wait"] if name == "runner" else []
        return [sys.executable, "-m", "listgate", "-c", self.site.path, name, *wait, *self.extra.get(name, ())]

    def start(self, name: str) -> None:
        parent = os.getpid()
        self.procs[name] = subprocess.Popen(self.command(name), env=self.env, stdin=subprocess.DEVNULL,
                                            preexec_fn=lambda: _child_setup(parent))
        self.started[name] = time.monotonic()
        log.info("child_started", child=name, pid=self.procs[name].pid)
        self.record()

    def record(self) -> None:
        """Write serve's record (:mod:`listgate.daemons`): its children's pids and the reload count."""
        try:
            daemons.write_record(self.site, "serve", started=self.since, reloads=self.reloads,
                                 reload_result=self.reload_result,
                                 children={n: p.pid for n, p in self.procs.items() if p.poll() is None})
        except OSError as exc:
            log.warning("daemon_record_failed", "cannot write the daemon record", error=exc)

    def stop_child(self, name: str) -> None:
        """SIGTERM one child and wait for it (SIGKILL after ``STOP_TIMEOUT``)."""
        proc = self.procs.pop(name, None)
        self.due.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.error("child_killed", "child did not stop, killing", child=name, pid=proc.pid)
            proc.kill()
            proc.wait()

    def _used(self, name: str) -> dict:
        """The restart-only settings child ``name`` runs with: its own record, else what serve started it with."""
        rec = daemons.read_record(self.site, name)
        proc = self.procs.get(name)
        if rec is not None and proc is not None and rec.pid == proc.pid:
            return rec.data.get("settings") or {}
        return daemons.settings(self.site, name)

    def reload(self) -> str:
        """SIGHUP: apply changed restart-only settings (module docstring); returns what was done, one line."""
        try:
            new = config.load(self.site.path, strict=False)
        except config.ConfigError as exc:
            log.error("config_reload_failed", "reload refused: the site file has errors, nothing restarted",
                      errors="; ".join(exc.errors))
            return "refused: the site file has errors (listgate check); nothing restarted"
        wanted = self.children if self.fixed else children_for(new)
        done = []
        for name in self.children:
            if name not in wanted:
                self.stop_child(name)
                done.append(f"stopped {name}")
        old_serve = daemons.settings(self.site, "serve")
        used = {name: self._used(name) for name in self.procs}
        self.site = new
        if daemons.settings(new, "serve") != old_serve:
            lg_log.setup(new.conf.logging, program="listgate-serve", level=self.log_level)
        for name in wanted:
            if name not in self.children:
                self.pause[name] = 1.0
                self.start(name)
                done.append(f"started {name}")
            elif name in used and used[name] != daemons.settings(new, name):
                self.stop_child(name)
                self.start(name)
                done.append(f"restarted {name}")
        self.children = tuple(wanted)
        if done and not self.wait_ready():     # reload returns once the new sockets answer, like a start
            done.append(f"not all listening after {READY_TIMEOUT:g}s")
        return ", ".join(done) if done else "nothing to do: no restart-only setting changed"

    def stop(self, *_args) -> None:
        self.stopping = True

    def hangup(self, *_args) -> None:
        """The SIGHUP handler: counted here, applied by :meth:`reload_if_asked` (module docstring)."""
        self.hangups += 1

    def reload_if_asked(self) -> None:
        """Apply a SIGHUP that arrived (:meth:`reload`), log and record it; called by the main loop
        and while waiting for sockets (a slow start must not swallow a reload)."""
        if self.hangups:
            self.hangups = 0
            self.reload_result = self.reload()
            self.reloads += 1
            log.info("sighup", self.reload_result)
            self.record()

    def wait_ready(self) -> bool:
        """True once the milter, policy (and web) sockets accept connections (or READY_TIMEOUT passed)."""
        end = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < end and not self.stopping:
            self.reload_if_asked()        # may change the sockets: read them after it
            conf = self.site.conf
            specs = [s for name, s in (("milter", conf.milter.socket), ("policy", conf.policy.socket),
                                       ("web", conf.web.listen)) if name in self.children]
            if all(listening(self.site, s) for s in specs):
                return True
            time.sleep(0.1)
        return False

    def run(self) -> int:
        for name in self.children:
            self.start(name)
        if self.wait_ready():
            sdnotify.notify("READY=1")
            log.info("serving", children=",".join(self.children))
        else:
            log.warning("children_not_ready", "children not listening yet; telling systemd we are ready anyway")
            sdnotify.notify("READY=1")
        while not self.stopping:
            self.reload_if_asked()
            now = time.monotonic()
            for name, proc in list(self.procs.items()):
                if proc.poll() is None:
                    continue
                if name not in self.due:
                    quick = now - self.started[name] < 10
                    self.pause[name] = min(self.pause[name] * 2, MAX_PAUSE) if quick else 1.0
                    self.due[name] = now + self.pause[name]
                    log.error("child_exited", "child exited, restarting", child=name, status=proc.returncode,
                              restart_in=f"{self.pause[name]:g}s")
                elif now >= self.due[name]:
                    del self.due[name]
                    self.start(name)
            time.sleep(0.1)
        return self.shutdown()

    def shutdown(self) -> int:
        sdnotify.notify("STOPPING=1")
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        end = time.monotonic() + STOP_TIMEOUT
        for name, proc in self.procs.items():
            try:
                proc.wait(timeout=max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("child_killed", "child did not stop, killing", child=name, pid=proc.pid)
                proc.kill()
                proc.wait()
        log.info("stopped")
        return 0
