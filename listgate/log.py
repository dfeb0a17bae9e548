"""Logging set-up: stderr or syslog facility ``mail``, one line per event.

Events name the list, the qfile and, where known, the MTA's queue id, as
``key=value`` pairs after a short message (grep-able like Postfix's logs).
"""
from __future__ import annotations

import logging
import logging.handlers
import sys

_configured = False


def setup(conf=None, program: str = "listgate", level: str | None = None) -> None:
    """Configure the root ``listgate`` logger from the site's ``logging`` section."""
    global _configured
    root = logging.getLogger("listgate")
    for h in list(root.handlers):
        root.removeHandler(h)
    dest = conf.destination if conf is not None else "stderr"
    lvl = (level or (conf.level if conf is not None else "info")).upper()
    if dest == "syslog":
        try:
            handler: logging.Handler = logging.handlers.SysLogHandler(
                address=conf.syslog_socket, facility=logging.handlers.SysLogHandler.LOG_MAIL)
            handler.setFormatter(logging.Formatter(f"{program}[%(process)d]: %(levelname)s %(message)s"))
        except OSError:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter(f"%(asctime)s {program}[%(process)d] %(levelname)s %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"%(asctime)s {program}[%(process)d] %(levelname)s %(message)s"))
    root.addHandler(handler)
    root.setLevel(lvl)
    root.propagate = False
    _configured = True


def kv(**fields) -> str:
    """``list=demo qfile=... queue_id=ABC`` with None values left out."""
    return " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
