"""The ``listgate`` command. Each sub-command lives in its own module here.

A module in :data:`COMMAND_MODULES` defines ``register(subparsers)``, adding
its parsers with ``set_defaults(func=handler)``; a handler takes the parsed
arguments and returns the exit status. A queue or store that cannot be used
now exits 75 (EX_TEMPFAIL) and any other I/O error 74 (EX_IOERR), with a
message instead of a traceback, whichever command met it.

Run as root, every command that reads the site config first becomes the
user and group that own ``state_dir`` (:func:`common.become_state_owner`;
``--as-root`` keeps root), so a store or qfile it writes stays usable by the
daemons. ``init``, ``conf-path``, ``notices`` (which only reads) and
``classify`` without a config do not.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from .. import __version__

COMMAND_MODULES = (
    "setup",       # init, check, conf-path
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
    "notices",     # notices list|show (notice templates)
)

# commands that do not read the site config (no user to become)
NO_SITE = frozenset({"init", "conf-path", "notices"})   # notices: reads only


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="listgate", description="Mailing lists at the MTA.")
    parser.add_argument("-c", "--config", metavar="FILE",
                        help="site config (default: $LISTGATE_CONFIG or /etc/listgate/listgate.yaml)")
    parser.add_argument("--as-root", action="store_true",
                        help="run as root even when state_dir belongs to another user (by default a command "
                             "run as root becomes the user and group that own state_dir first)")
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
    from ..config import ENV_VAR
    from ..queue import QueueError
    from ..store import StoreUnavailable
    from .common import become_state_owner
    try:
        if args.command not in NO_SITE and (args.command != "classify" or args.config or os.environ.get(ENV_VAR)):
            become_state_owner(args, missing_ok=args.command == "check")
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
