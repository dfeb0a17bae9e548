"""What each running daemon is: its record under ``STATE_DIR/run`` (pid, start, restart-only settings).

Every long-running daemon (``milter``, ``policy``, ``runner``, ``lmtp``,
``web``, ``metrics`` and ``serve`` itself) writes ``STATE_DIR/run/NAME.json``
when it starts and removes it when it stops (:func:`record`); ``serve`` also
writes the classic ``run/serve.pid`` (the pid and a newline) for tools that
want one. A record is JSON::

    {"daemon": "milter", "pid": 1234, "started": 1765000000.0,
     "config": "/etc/listgate/listgate.yaml", "settings": {"milter.socket": "unix:milter.sock", ...}}

``settings`` holds the values of the site settings that daemon reads only at
start (:data:`RESTART_ONLY`, INSTALL section 3.4): ``listgate check``
compares them with the files on disk (:func:`stale_settings`) and says which
daemon needs a restart. ``listgate status``, ``reload`` and ``stop`` find the
daemons here. A record left by a killed process is recognised as such
(:func:`live`: the pid must exist and run listgate) and is overwritten by the
next start.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from . import clock

RUN_DIR = "run"

# Site settings read only when a daemon starts, per daemon (dotted keys; a bare section
# name stands for all its keys). Every daemon also reads COMMON at start.
COMMON = ("logging", "metrics.listen")
RESTART_ONLY: dict[str, tuple[str, ...]] = {
    "milter": ("milter.socket", "milter.socket_mode"),
    "policy": ("policy.socket", "policy.socket_mode"),
    "lmtp": ("lmtp.socket", "lmtp.socket_mode"),
    "web": ("web.listen", "web.socket_mode"),
    "runner": ("reinject",),
    "metrics": (),
    # which children serve starts: an LMTP server when lmtp.socket is set, web with web.base_url,
    # the metrics child with metrics.listen
    "serve": ("lmtp.socket", "web.base_url"),
}


def run_dir(site) -> str:
    """``STATE_DIR/run``: daemon records, ``serve.pid``, the metrics directory."""
    return os.path.join(site.state_dir, RUN_DIR)


def record_path(site, name: str) -> str:
    return os.path.join(run_dir(site), f"{name}.json")


def kind(name: str) -> str:
    """The daemon kind of a record name (``runner-1-of-4`` is a ``runner``)."""
    return name.split("-", 1)[0]


def settings(site, name: str) -> dict[str, Any]:
    """The restart-only settings of daemon ``name`` as ``site`` has them: ``{dotted.key: value}``."""
    out: dict[str, Any] = {}
    for key in RESTART_ONLY.get(kind(name), ()) + COMMON:
        section, _, field = key.partition(".")
        value = getattr(site.conf, section)
        if field:
            out[key] = _plain(getattr(value, field))
        else:
            for sub, v in value.as_dict().items():
                out[f"{section}.{sub}"] = _plain(v)
    return out


def _plain(value: Any) -> Any:
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


def _write(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_record(site, name: str, **extra) -> dict:
    """Write this process's record for daemon ``name`` (replacing any earlier one); returns it.

    ``extra`` keys are added (serve: ``children``). Raises OSError when the
    run directory cannot be made or written.
    """
    os.makedirs(run_dir(site), mode=0o750, exist_ok=True)
    data = {"daemon": name, "pid": os.getpid(), "started": clock.now(), "config": site.path,
            "settings": settings(site, name), **extra}
    _write(record_path(site, name), json.dumps(data, indent=1, sort_keys=True) + "\n")
    if name == "serve":
        _write(os.path.join(run_dir(site), "serve.pid"), f"{os.getpid()}\n")
    return data


def remove_record(site, name: str) -> None:
    """Remove ``name``'s record (and serve.pid) if it is this process's own; a newer daemon's is left alone."""
    rec = read_record(site, name)
    if rec is None or rec.data.get("pid") != os.getpid():
        return
    paths = [record_path(site, name)] + ([os.path.join(run_dir(site), "serve.pid")] if name == "serve" else [])
    for path in paths:
        try:
            os.unlink(path)
        except OSError:
            pass


@dataclass
class Record:
    name: str
    data: dict

    @property
    def pid(self) -> int | None:
        pid = self.data.get("pid")
        return pid if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 else None

    @property
    def live(self) -> bool:
        return self.pid is not None and live(self.pid)


def read_record(site, name: str) -> Record | None:
    """The record of daemon ``name``, or None when there is none (or it is not readable JSON)."""
    try:
        with open(record_path(site, name), encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return Record(name, data) if isinstance(data, dict) else None


def records(site) -> dict[str, Record]:
    """Every daemon record in the run directory, by name."""
    try:
        names = sorted(n[:-5] for n in os.listdir(run_dir(site)) if n.endswith(".json"))
    except OSError:
        return {}
    found = {name: read_record(site, name) for name in names}
    return {name: rec for name, rec in found.items() if rec is not None}


def live(pid: int) -> bool:
    """True when process ``pid`` exists and runs listgate (its command line names it): a pid
    reused by another program after a crash is not ours to signal."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass                                     # exists, another user's: look at its command line
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().split(b"\0")
    except OSError:
        return True                              # no /proc: trust kill(pid, 0)
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            if fh.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                return False                     # a zombie: exited, not yet reaped
    except (OSError, IndexError):
        pass
    return any(b"listgate" in arg for arg in argv)


def stale_settings(site) -> list[str]:
    """One line per setting a live daemon runs with that differs from ``site`` (the files on disk).

    Shape: ``milter (pid 1234): milter.socket is 'unix:new.sock' in the config, the daemon uses
    'unix:old.sock': run listgate reload``. Daemons without a live record (not running) are not
    mentioned. Under ``serve``, ``listgate reload`` (``systemctl reload listgate``) applies it;
    a daemon on its own (the split units) needs a restart.
    """
    found = records(site)
    serve = found.get("serve")
    children = set((serve.data.get("children") or {}).values()) if serve is not None and serve.live else set()
    lines = []
    for name, rec in found.items():
        if not rec.live:
            continue
        how = ("run listgate reload (systemctl reload listgate)" if name == "serve" or rec.pid in children
               else f"restart it (systemctl restart listgate-{kind(name)})")
        used = rec.data.get("settings") or {}
        now = settings(site, name)
        for key in sorted(used):
            if used.get(key) != now.get(key):
                lines.append(f"{name} (pid {rec.pid}): {key} is {now.get(key)!r} in the config, "
                             f"the daemon uses {used.get(key)!r}: {how}")
    return lines


# daemons that serve a list's addresses or posts: they keep a valid configuration of a list whose
# file later gets errors (config.Watcher), and answer 451 4.3.0 for one that had none when they started
SERVING = ("milter", "policy", "lmtp", "runner", "serve")


def broken_list_effect(site, key: str, fpath: str) -> str:
    """What the daemons do about list ``key`` whose file ``fpath`` has errors: one phrase.

    A running daemon keeps the configuration it had loaded for a list when the
    file turns bad on a live edit (``config.Watcher``); a daemon that starts
    with the broken file answers 451 4.3.0 for the list's addresses. Which
    case holds is told by the live daemons' start times (their records) against
    the file's mtime; without records (no daemon running) only the second.
    """
    try:
        mtime = os.stat(fpath).st_mtime
    except OSError:
        mtime = None
    running = [r for n, r in records(site).items() if kind(n) in SERVING and r.live]
    before = sorted(r.pid for r in running if mtime is not None
                    and isinstance(r.data.get("started"), (int, float)) and r.data["started"] < mtime)
    after = sorted(r.pid for r in running if r.pid not in before)
    started_now = "a daemon started now would answer 451 4.3.0 for its addresses"
    if before and not after:
        return (f"list {key} has errors: the running daemons (started before the file changed) keep its "
                f"previous configuration, if they had loaded a valid one, until it is fixed; {started_now}")
    if before:
        return (f"list {key} has errors: daemons started before the file changed (pid "
                f"{', '.join(map(str, before))}) keep its previous configuration if they had loaded a valid one, the others (pid "
                f"{', '.join(map(str, after))}) answer 451 4.3.0 for its addresses, until it is fixed")
    if after:
        return (f"list {key} not served: the running daemons started with the file's errors and answer "
                "451 4.3.0 for its addresses until it is fixed")
    return f"list {key} has errors: no daemon runs; {started_now} until it is fixed"
