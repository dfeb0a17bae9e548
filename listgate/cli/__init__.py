"""The ``listgate`` command. Each sub-command lives in its own module here.

A module in :data:`COMMAND_MODULES` defines ``register(subparsers)``, adding
its parsers with ``set_defaults(func=handler)``; a handler takes the parsed
arguments and returns the exit status. A queue or store that cannot be used
now exits 75 (EX_TEMPFAIL) and any other I/O error 74 (EX_IOERR), with a
message instead of a traceback, whichever command met it.

Run as root, every command that reads the site config first becomes the
user and group that own ``state_dir`` (:func:`common.become_state_owner`;
``--as-root`` keeps root), so a store or qfile it writes stays usable by the
daemons. ``init``, ``conf-path``, ``notices`` (which only reads) and ``classify``
without a config do not,
nor do commands that write only configuration (``lists create|remove``: their
parsers set ``keeps_user``); the file they write takes its directory's owner.

Every file a command or daemon creates gets mode 0640, every directory 0750
(:data:`UMASK`), so the CLI run as root or listgate and the daemons make the
same files alike.

Every command that may change state (all but :data:`audit.NOT_AUDITED`: the
read-only ones and the daemons) is logged once when it ends, with who ran it,
its arguments (passwords masked) and its exit status (:mod:`.audit`).
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
    "lists",       # lists, lists create|remove
    "members",     # members ...
    "pending",     # pending ...
    "bounces",     # bounces show
    "classify",    # classify FILE...
    "milter_cmd",  # milter
    "policy_cmd",  # policy
    "lmtp_cmd",    # lmtp
    "web_cmd",     # web
    "runner_cmd",  # runner, serve
    "held",        # held list|show|approve|reject|discard
    "tasks",       # tasks run
    "store",       # store init|copy
    "import_cmd",  # import mailman21
    "status",      # status (daemons, runner slices, queues, stores)
    "control",     # reload, stop (the running serve)
    "metrics_cmd",  # metrics (the Prometheus endpoint)
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


# the file-creation mask of every listgate process, daemons and admin commands alike: files 0640 and
# directories 0750 (INSTALL 3.3), whoever makes them (a store, a stamp, audit.log, a list file); the
# units set the same (UMask=0027). Sockets get their own mode (listgate.sockets).
UMASK = 0o027


def main(argv: list[str] | None = None) -> int:
    """Run ``listgate ARGV`` under :data:`UMASK` (the caller's mask is restored when it returns)."""
    old = os.umask(UMASK)
    try:
        return _main(argv)
    finally:
        os.umask(old)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    from .common import become_state_owner
    from . import audit
    argv = sys.argv[1:] if argv is None else list(argv)
    path = audit.command_path(parser, argv)
    who = audit.invoker() if audit.audited(path) else None   # before becoming state_dir's owner
    status: int | str = "error"
    try:
        status = _run(args, become_state_owner)
        return status
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        raise
    finally:
        if who is not None:
            audit.record(args, path, argv, who, status)


def _run(args, become_state_owner) -> int:
    """Run the parsed command; its exit status (errors a user can meet become messages)."""
    from ..config import ENV_VAR
    from ..queue import QueueError
    from ..store import StoreUnavailable
    try:
        if (args.command not in NO_SITE and not getattr(args, "keeps_user", False)
                and (args.command != "classify" or args.config or os.environ.get(ENV_VAR))):
            try:
                become_state_owner(args, missing_ok=args.command == "check")
            except SystemExit:
                if args.command == "status" and args.check:   # a Nagios plugin says UNKNOWN (3)
                    print("LISTGATE UNKNOWN - the site configuration does not load (listgate check)")
                    return 3
                raise
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
