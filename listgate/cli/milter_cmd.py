"""``listgate milter``: run the milter daemon in the foreground (systemd, runit)."""
from __future__ import annotations

import sys

from .. import config, log
from .common import load_site, start_daemon


def register(sub) -> None:
    p = sub.add_parser("milter", help="run the milter (Postfix smtpd_milters) in the foreground")
    p.set_defaults(func=cmd_milter)


def cmd_milter(args) -> int:
    from ..milter import daemon  # pymilter's C module loads only for this command

    site = load_site(args)
    log.setup(site.conf.logging, program="listgate-milter")
    config.log_list_errors(site)
    start_daemon(site, "milter")
    try:
        return daemon.run(watcher=config.Watcher(site.path, site=site))
    except daemon.DaemonError as exc:
        print(f"listgate milter: {exc}", file=sys.stderr)
        return 1
