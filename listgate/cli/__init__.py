"""The ``listgate`` command. Each sub-command lives in its own module here.

A module in :data:`COMMAND_MODULES` defines ``register(subparsers)``, adding
its parsers with ``set_defaults(func=handler)``; a handler takes the parsed
arguments and returns the exit status. A queue or store that cannot be used
now exits 75 (EX_TEMPFAIL) and any other I/O error 74 (EX_IOERR), with a
message instead of a traceback, whichever command met it.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__

COMMAND_MODULES = (
    "setup",       # init, check
    "queue",       # queue ls|show|edit|unshunt|requeue
    "inject",      # inject (Exim pipe hand-off)
    "members",     # members ...
    "pending",     # pending ...
    "bounces",     # bounces show
    "classify",    # classify FILE...
    "milter_cmd",  # milter
    "policy_cmd",  # policy
    "lmtp_cmd",    # lmtp
    "web_cmd",     # web
    "runner_cmd",  # runner, serve
    "held",        # held list|approve|reject|discard
    "tasks",       # tasks run
    "store",       # store init|copy
    "import_cmd",  # import mailman21
    "status",      # status (runner slices, queue sizes)
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="listgate", description="Mailing lists at the MTA.")
    parser.add_argument("-c", "--config", metavar="FILE",
                        help="site config (default: $LISTGATE_CONFIG or /etc/listgate/listgate.yaml)")
    parser.add_argument("--version", action="version", version=f"listgate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    from ..queue import QueueError
    from ..store import StoreUnavailable
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except (QueueError, StoreUnavailable) as exc:
        # a full, read-only or broken queue/store: nothing was changed; sysexits EX_TEMPFAIL
        print(f"listgate: not available now, try again later: {exc}", file=sys.stderr)
        return 75
    except OSError as exc:
        print(f"listgate: {exc.filename or ''}{': ' if exc.filename else ''}{exc.strerror or exc}", file=sys.stderr)
        return 74  # EX_IOERR


if __name__ == "__main__":
    sys.exit(main())
