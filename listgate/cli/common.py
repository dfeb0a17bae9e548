"""Helpers shared by sub-commands: loading the site, printing, errors."""
from __future__ import annotations

import json
import sys
from typing import Any

from .. import config


def load_site(args) -> config.Site:
    """The site named by ``-c``/``$LISTGATE_CONFIG``; exits 1 with every error on bad config."""
    try:
        return config.load(getattr(args, "config", None))
    except config.ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        raise SystemExit(1) from None


def get_list(site: config.Site, name: str):
    """The list named ``name`` or ``name@domain``; exits 1 with a clear message if unknown."""
    lc = site.get_list(name)
    if lc is None:
        known = ", ".join(sorted(site.lists)) or "none"
        fail(f"unknown list {name!r} (lists: {known})")
    return lc


def fail(message: str, status: int = 1) -> None:
    print(f"listgate: {message}", file=sys.stderr)
    raise SystemExit(status)


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")
