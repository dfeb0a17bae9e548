"""Site and list configuration (read-only YAML owned by ops).

``load(path)`` returns a :class:`Site`: the validated site file, resolved paths
and every list from ``lists_dir``. :class:`Watcher` reloads when the files
change, so daemons pick up edits without a restart or a signal.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterator

from ..addresses import AddressTable, list_key
from . import schema
from .loader import (ConfigError, Frozen, format_duration, load_yaml_file, mask_url, parse_duration, parse_socket,
                     valid_address)

__all__ = ["ConfigError", "Frozen", "Site", "Watcher", "load", "default_path",
           "format_duration", "mask_url", "parse_duration", "parse_socket", "valid_address"]

ENV_VAR = "LISTGATE_CONFIG"
DEFAULT_PATH = "/etc/listgate/listgate.yaml"
log = logging.getLogger("listgate.config")


def default_path() -> str:
    """The site file: ``$LISTGATE_CONFIG`` or ``/etc/listgate/listgate.yaml``."""
    return os.environ.get(ENV_VAR) or DEFAULT_PATH


@dataclass(frozen=True)
class Site:
    """A loaded site: ``conf`` (site keys), resolved directories, and lists.

    ``lists`` maps ``"name@domain"`` (lower case) to the list's :class:`Frozen`
    config. Worked out from them on first use and kept with this object (a
    reload gives a new Site): ``domains``, the set of domains listgate
    manages; ``address_table``, the :class:`~listgate.addresses.AddressTable`
    of every list address; ``verp_keys``, the VERP keyring (its key files
    read once, :mod:`listgate.verp`); ``resolver``, the DNS resolver
    (:mod:`listgate.dns`); ``dkim_keys``, the DKIM keyring.
    """

    path: str
    conf: Frozen
    state_dir: str
    queue_dir: str
    lists_dir: str
    lists: dict[str, Frozen] = field(default_factory=dict)
    list_files: dict[str, str] = field(default_factory=dict)

    @cached_property
    def domains(self) -> frozenset[str]:
        return frozenset(lc.domain for lc in self.lists.values())

    @cached_property
    def address_table(self) -> AddressTable:
        return AddressTable(self.lists)

    @cached_property
    def verp_keys(self):
        """The :class:`listgate.verp.Keyring` of ``conf.verp``; raises :class:`listgate.verp.VerpKeyError`
        (and reads the files again at the next use) when a key file is unreadable."""
        from ..verp import Keyring     # verp imports the store, which imports this package
        return Keyring(self.conf.verp)

    @cached_property
    def resolver(self):
        """The site's one :class:`listgate.dns.Resolver` (``conf.dns``); its answer cache lives with it."""
        from ..dns import Resolver
        return Resolver(self.conf.dns)

    @cached_property
    def dkim_keys(self):
        """The :class:`listgate.app.signing.Keyring` of ``conf.dkim`` (key files read once); raises
        :class:`listgate.app.signing.DkimKeyError` (and reads them again at the next use) when one is unusable."""
        from ..app.signing import Keyring
        return Keyring(self.conf.dkim)

    def get_list(self, name: str, domain: str | None = None) -> Frozen | None:
        """Find a list by ``name@domain`` or by bare name (when unique)."""
        if "@" in name and domain is None:
            name, domain = name.rsplit("@", 1)
        name = name.lower()
        if domain is not None:
            return self.lists.get(f"{name}@{domain.lower()}")
        found = [lc for lc in self.lists.values() if lc.name == name]
        return found[0] if len(found) == 1 else None

    def resolve(self, path: str) -> str:
        """A path from the site file: relative ones are relative to ``state_dir``."""
        return path if os.path.isabs(path) else os.path.join(self.state_dir, path)

    def iter_lists(self) -> Iterator[Frozen]:
        return iter(sorted(self.lists.values(), key=lambda lc: (lc.domain, lc.name)))


def load(path: str | None = None) -> Site:
    """Load and validate the site file and every ``*.yaml`` in its lists_dir.

    Raises :class:`ConfigError` carrying every problem found, each as
    ``FILE:LINE: key.path: message``.
    """
    path = os.path.abspath(path or default_path())
    errors: list[str] = []
    try:
        raw = load_yaml_file(path, schema.SITE)
    except ConfigError as exc:
        raise ConfigError(exc.errors) from None
    base = os.path.dirname(path)

    def here(p: str) -> str:
        return os.path.normpath(p if os.path.isabs(p) else os.path.join(base, p))

    state_dir = here(raw["state_dir"])
    queue_dir = here(raw["queue_dir"]) if raw["queue_dir"] else os.path.join(state_dir, "queue")
    lists_dir = here(raw["lists_dir"]) if raw["lists_dir"] else os.path.join(base, "lists.d")
    keys = tuple(Frozen({**k.as_dict(), "file": here(k.file)}) for k in raw["verp"].keys)
    raw["verp"] = Frozen({**raw["verp"].as_dict(), "keys": keys})
    dkim_keys = tuple(Frozen({**k.as_dict(), "file": here(k.file)}) for k in raw["dkim"].keys)
    raw["dkim"] = Frozen({**raw["dkim"].as_dict(), "keys": dkim_keys})
    if raw["store"].password_file:
        raw["store"] = Frozen({**raw["store"]._data, "password_file": here(raw["store"].password_file)})
    conf = Frozen(raw)
    lists: dict[str, Frozen] = {}
    files: dict[str, str] = {}
    try:
        names = sorted(n for n in os.listdir(lists_dir) if n.endswith((".yaml", ".yml")) and not n.startswith("."))
    except OSError as exc:
        raise ConfigError([f"{path}:1: lists_dir: cannot read {lists_dir}: {exc.strerror}"]) from None
    for name in names:
        fpath = os.path.join(lists_dir, name)
        try:
            lraw = load_yaml_file(fpath, schema.LIST)
        except ConfigError as exc:
            errors.extend(exc.errors)
            continue
        stem = name.rsplit(".", 1)[0]
        if stem != lraw["name"]:
            errors.append(f"{fpath}:1: name: list {lraw['name']!r} must live in {lraw['name']}.yaml")
            continue
        if lraw["subject_prefix"] is None:
            lraw["subject_prefix"] = f"[{lraw['name']}] "
        lc = Frozen(lraw)
        key = list_key(lc)
        if key in lists:
            errors.append(f"{fpath}:1: name: list {key} is also defined in {files[key]}")
            continue
        lists[key] = lc
        files[key] = fpath
    if not keys:
        errors.append(f"{path}:1: verp.keys: at least one VERP signing key is required")
    elif all(k.retired for k in keys):
        errors.append(f"{path}:1: verp.keys: every key is retired; one must sign")
    if errors:
        raise ConfigError(errors)
    return Site(path=path, conf=conf, state_dir=state_dir, queue_dir=queue_dir,
                lists_dir=lists_dir, lists=lists, list_files=files)


class Watcher:
    """Holds the current :class:`Site` and reloads it when its files change.

    ``current()`` costs a few ``stat`` calls at most once per ``interval``
    seconds. A reload that fails validation is logged and the previous
    configuration stays in force (a typo must not take mail down).
    """

    def __init__(self, path: str | None = None, interval: float = 1.0, site: Site | None = None):
        self.path = os.path.abspath(path or default_path())
        self.interval = interval
        self._site = site or load(self.path)
        self._stamp = self._fingerprint()
        self._checked = time.monotonic()

    def _fingerprint(self) -> tuple:
        items = []
        for p in [self.path, self._site.lists_dir]:
            try:
                st = os.stat(p)
                items.append((p, st.st_mtime_ns, st.st_ino, st.st_size))
            except OSError:
                items.append((p, None))
        for p in self._site.list_files.values():
            try:
                st = os.stat(p)
                items.append((p, st.st_mtime_ns, st.st_ino, st.st_size))
            except OSError:
                items.append((p, None))
        return tuple(items)

    def current(self) -> Site:
        now = time.monotonic()
        if now - self._checked >= self.interval:
            self._checked = now
            self.maybe_reload()
        return self._site

    def maybe_reload(self) -> bool:
        """Reload if any file changed; True if a new config is in force."""
        stamp = self._fingerprint()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            self._site = load(self.path)
        except ConfigError as exc:
            log.error("configuration reload failed, keeping the previous one:\n%s", exc)
            return False
        self._stamp = self._fingerprint()
        log.info("configuration reloaded: %d lists", len(self._site.lists))
        return True


