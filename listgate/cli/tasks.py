"""``listgate tasks run``: periodic tasks and due retries, for sites that prefer cron."""
from __future__ import annotations

from .. import log as lg_log
from .common import load_site


def register(sub) -> None:
    p = sub.add_parser("tasks", help="periodic tasks (bounce notices and removals, pending expiry, retries)")
    tsub = p.add_subparsers(dest="tasks_command", metavar="ACTION", required=True)
    r = tsub.add_parser("run", help="run them now (the runner also does every runner.tasks_interval)")
    r.add_argument("--no-retries", action="store_true", help="do not deliver due retries")
    r.set_defaults(func=cmd_run)


def cmd_run(args) -> int:
    from ..runner import tasks
    from ..runner.loop import Runner
    site = load_site(args)
    lg_log.setup(site.conf.logging, program="listgate-tasks")
    for line in tasks.run(site):
        print(line)
    if not args.no_retries:
        runner = Runner(site)
        try:
            n, outcomes = runner.run_retries()
        finally:
            runner.close()
        # recipients by what happened to them, not qfiles tried: a try may defer them all again
        print(f"retries: {n} qfile(s) due; recipients delivered {outcomes['delivered']}, "
              f"failed {outcomes['failed']}, deferred again {outcomes['deferred']}, "
              f"given up {outcomes['gave_up']}")
    return 0
