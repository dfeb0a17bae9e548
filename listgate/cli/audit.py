"""The audit line: every command that may change state is logged once, with who ran it.

:func:`listgate.cli.main` calls :func:`record` after the command, for every
command not named in :data:`NOT_AUDITED` (so a new sub-command is audited
unless someone decides otherwise). The line goes to syslog when the site's
``logging`` section sends the daemons' lines there; with ``destination:
stderr`` (the default: the units' journal) it is appended to
``state_dir/audit.log`` instead, so an admin's terminal does not get a log
line after every change::

    ts=… level=info daemon=cli event=cli_command user=root uid=0 sudo_user=alice
      command="members add" argv="members add demo bob@example.org" status=0

``user``/``uid``: the real user that started the command, taken before a
command run as root becomes ``state_dir``'s owner (``sudo_user`` when run
through sudo). ``argv``: the arguments, with the password of a URL
(``postgresql://u:secret@h/db``) and the value of any ``--…password``/
``--…secret`` option masked. ``status``: the exit status (``error`` for a crash).
"""
from __future__ import annotations

import logging
import os
import re
import shlex
import sys

# Commands that change nothing (read-only) or are not administration (daemons and
# the MTA's hand-off log their own events). ``init`` runs before there is a site
# to log to. Everything else is audited.
READ_ONLY = frozenset({
    "check", "conf-path", "status", "classify",
    "queue ls", "queue show",
    "members list", "members export",
    "pending list", "pending show",
    "bounces show", "bounces list", "bounces evidence",
    "held list", "held show",
    "lists", "members find",
    "notices list", "notices show",
    "import",                   # without a kind: prints the help
})
DAEMONS = frozenset({"milter", "policy", "lmtp", "web", "runner", "serve", "inject", "metrics"})
NOT_AUDITED = READ_ONLY | DAEMONS | {"init"}
AUDIT_FILE = "audit.log"     # in state_dir, when the site logs to stderr

_SECRET_OPT = re.compile(r"^--?[\w-]*(password|passwd|secret)(?![\w-]*file)[\w-]*$", re.I)
_URL_PASSWORD = re.compile(r"(://[^/:@\s]*:)[^@/\s]*@")


def command_path(parser, argv: list[str]) -> str:
    """``"members add"``: the sub-command names in ``argv`` (walking ``parser``'s sub-parsers)."""
    import argparse
    names, tokens = [], iter(argv)
    current = parser
    while current is not None:
        subs = [a for a in current._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            break
        choices = subs[0].choices
        nxt = None
        for tok in tokens:
            if tok in choices:
                names.append(tok)
                nxt = choices[tok]
                break
        current = nxt
    return " ".join(names)


def audited(path: str) -> bool:
    """Whether command ``path`` (e.g. ``"queue requeue"``) gets an audit line."""
    return bool(path) and path not in NOT_AUDITED and path.split(" ", 1)[0] not in DAEMONS | {"init"}


def invoker() -> dict:
    """Who runs this process: real user name and uid, and ``SUDO_USER`` when set."""
    import pwd
    uid = os.getuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    return {"user": name, "uid": uid, "sudo_user": os.environ.get("SUDO_USER") or None}


def redact(argv: list[str]) -> list[str]:
    """``argv`` with URL passwords and the values of password/secret options replaced by ``***``."""
    out, hide_next = [], False
    for tok in argv:
        if hide_next:
            out.append("***")
            hide_next = False
            continue
        opt, eq, _ = tok.partition("=")
        if _SECRET_OPT.match(opt):
            if eq:
                out.append(f"{opt}=***")
            else:
                out.append(tok)
                hide_next = True
            continue
        out.append(_URL_PASSWORD.sub(r"\1***@", tok))
    return out


def record(args, path: str, argv: list[str], who: dict, status) -> None:
    """Log the audit line of command ``path`` (see the module docstring); never raises."""
    from .. import config, log as lg_log
    try:
        try:
            site = config.load(getattr(args, "config", None), strict=False)
        except (config.ConfigError, OSError):
            site = None         # no site to read: the line goes to stderr
        # a logger of its own, outside the "listgate" hierarchy: the process's logging
        # set-up (tests call main() in-process) is left as it was
        if site is not None and site.conf.logging.destination != "syslog":
            audit_file = os.path.join(site.state_dir, AUDIT_FILE)
            handler = logging.FileHandler(audit_file, encoding="utf-8")
            if os.geteuid() == 0:   # a command that stayed root (--as-root, lists create): keep it the daemons' file
                st = os.stat(site.state_dir)
                os.chown(audit_file, st.st_uid, st.st_gid)
            handler.setFormatter(lg_log.LogfmtFormatter("listgate"))
        else:
            handler, _ = lg_log.make_handler(site.conf.logging if site else None, "listgate")
        logger = logging.Logger("listgate.audit", logging.INFO)
        logger.addHandler(handler)
        try:
            level = logging.INFO if status == 0 else logging.WARNING
            lg_log.EventLog(logger.name, logger).event(level, "cli_command", None, **who, command=path,
                                                       argv=shlex.join(redact(argv)), status=status)
        finally:
            handler.close()
    except Exception as exc:  # noqa: BLE001 - the audit must not turn a done change into a failure
        print(f"listgate: warning: audit line not written: {exc}", file=sys.stderr)
