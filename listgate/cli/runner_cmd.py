"""``listgate runner [--once] [--slice i/n] [--wait]`` and ``listgate serve``.

Exit status of ``runner``: 0 stopped (SIGTERM), 2 bad ``--slice``, 75 queues or
stores unavailable, or another live runner serves the slice (without ``--wait``).
"""
from __future__ import annotations

import signal
import sys

from .. import config, log as lg_log
from ..queue import QueueError
from ..queue.lock import SliceBusy
from ..store import StoreUnavailable
from .common import start_daemon


def register(sub) -> None:
    p = sub.add_parser("runner", help="process the queues: posts, commands, confirmations, delivery, tasks")
    p.add_argument("--once", action="store_true", help="process what is queued now (due retries too) and exit")
    p.add_argument("--slice", default="0/1", metavar="I/N",
                   help="serve hash slice I of N (several runner processes; slice 0 runs periodic tasks)")
    p.add_argument("--wait", action="store_true",
                   help="if another live runner serves this slice, wait until it is gone (default: exit 75)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="override logging.level")
    p.set_defaults(func=cmd_runner)

    p = sub.add_parser("serve", help="run milter, policy server, runner (and LMTP server when lmtp.socket is set) together (supervised)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="override logging.level")
    p.set_defaults(func=cmd_serve)


def parse_slice(text: str) -> tuple[int, int]:
    """``"i/n"`` → ``(i, n)`` with 0 <= i < n; raises ValueError."""
    i, sep, n = text.partition("/")
    if not sep or not i.isdigit() or not n.isdigit() or not 0 <= int(i) < int(n):
        raise ValueError(f"--slice wants I/N with 0 <= I < N, not {text!r}")
    return int(i), int(n)


def _watcher(args) -> config.Watcher:
    try:
        return config.Watcher(getattr(args, "config", None))
    except config.ConfigError as exc:
        print("\n".join(exc.errors), file=sys.stderr)
        raise SystemExit(1) from None


def cmd_runner(args) -> int:
    from ..runner.loop import Runner
    from .. import sdnotify
    try:
        sl, n = parse_slice(args.slice)
    except ValueError as exc:
        print(f"listgate: {exc}", file=sys.stderr)
        return 2
    watcher = _watcher(args)
    site = watcher.current()
    lg_log.setup(site.conf.logging, program="listgate-runner", level=args.log_level)
    config.log_list_errors(site)
    runner = Runner(watcher, slice=sl, slices=n)
    runner.install_signal_handlers()
    try:
        # One live runner per slice (issue 20, defect 5): a second one would reclaim the
        # first one's qfiles in recover() and send them again.
        try:
            runner.lock.acquire()
        except SliceBusy as exc:
            if not args.wait:
                print(f"listgate: {exc}", file=sys.stderr)
                return 75
            print(f"listgate: {exc}; waiting (--wait)", file=sys.stderr)
            if not runner.lock.acquire(wait=True, should_stop=lambda: runner.stopping):
                return 0
        if not args.once:
            start_daemon(site, "runner" if n == 1 else f"runner-{sl}-of-{n}")
        runner.recover()
        if args.once:
            try:
                runner.run_once()
            finally:
                runner.close()
            return 0
    except (QueueError, StoreUnavailable) as exc:  # nothing lost: the qfiles stay where they are
        print(f"listgate: queues or stores unavailable, try again later: {exc}", file=sys.stderr)
        return 75
    sdnotify.notify("READY=1")
    runner.run_forever()
    return 0


def cmd_serve(args) -> int:
    from .. import metrics
    from ..serve import Supervisor
    site = _watcher(args).current()
    lg_log.setup(site.conf.logging, program="listgate-serve", level=args.log_level)
    try:
        metrics.enable(site, fresh=True)   # before any child counts: the last run's files go
    except OSError as exc:
        print(f"listgate: metrics off: cannot use {metrics.directory(site)}: {exc}", file=sys.stderr)
    start_daemon(site, "serve")
    sup = Supervisor(site, log_level=args.log_level)
    signal.signal(signal.SIGTERM, sup.stop)
    signal.signal(signal.SIGINT, sup.stop)
    signal.signal(signal.SIGHUP, sup.hangup)
    return sup.run()
