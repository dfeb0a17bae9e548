"""Site and list configuration (read-only YAML owned by ops).

``load(path)`` returns a :class:`Site`: the validated site file, resolved paths
and every list from ``lists_dir``. :class:`Watcher` reloads when the files
change, so daemons pick up edits without a restart or a signal.

Site errors (the site file, ``lists_dir``, the VERP keys) are fatal. With
``strict=False`` (the daemons, through :class:`Watcher`, and the CLI) an error
in one list's file is not: that list is left out, its file and errors are in
``Site.list_errors``, and its addresses (``Site.broken_lists``, when the file
still says which list it is) get ``451 4.3.0`` at RCPT (:mod:`listgate.routing`)
until the file is fixed, while every other list is served.
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Iterator

from ..addresses import AddressTable, list_key
from . import schema
from ..log import events
from .loader import (ConfigError, Frozen, format_duration, load_yaml_file, mask_url, parse_duration, parse_socket,
                     read_small_file, valid_address)

__all__ = ["ConfigError", "Frozen", "Site", "Watcher", "load", "default_path", "log_list_errors",
           "format_duration", "mask_url", "parse_duration", "parse_socket", "valid_address"]

ENV_VAR = "LISTGATE_CONFIG"
DEFAULT_PATH = "/etc/listgate/listgate.yaml"
log = events("listgate.config")
# A list's language: a BCP 47-like tag (de, pt-BR), used as a directory name, so never a path.
LANGUAGE_RE = re.compile(r"^[A-Za-z]{2,8}(?:[-_][A-Za-z0-9]{1,8})*$")


def default_path() -> str:
    """The site file: ``$LISTGATE_CONFIG`` or ``/etc/listgate/listgate.yaml``."""
    return os.environ.get(ENV_VAR) or DEFAULT_PATH


@dataclass(frozen=True)
class Site:
    """A loaded site: ``conf`` (site keys), resolved directories, and lists.

    ``lists`` maps ``"name@domain"`` (lower case) to the list's :class:`Frozen`
    config. Worked out from them on first use and kept with this object (a
    reload gives a new Site): ``domains``, the set of domains listgate
    manages (broken lists' domains included); ``address_table``, the
    :class:`~listgate.addresses.AddressTable` of every list address;
    ``broken_table``, the same for ``broken_lists``; ``verp_keys``, the VERP
    keyring (its key files read once, :mod:`listgate.verp`); ``resolver``, the
    DNS resolver (:mod:`listgate.dns`); ``dkim_keys``, the DKIM keyring.

    ``list_errors`` maps a list file that was refused to its errors
    (``FILE:LINE: key.path: message``); ``broken_lists`` maps the
    ``"name@domain"`` such a file is for, when it says so, to the file.
    Both are empty for a site loaded with ``strict=True``.
    """

    path: str
    conf: Frozen
    state_dir: str
    queue_dir: str
    lists_dir: str
    templates_dir: str | None = None
    lists: dict[str, Frozen] = field(default_factory=dict)
    list_files: dict[str, str] = field(default_factory=dict)
    list_errors: dict[str, tuple[str, ...]] = field(default_factory=dict)
    broken_lists: dict[str, str] = field(default_factory=dict)

    @cached_property
    def domains(self) -> frozenset[str]:
        return frozenset([lc.domain for lc in self.lists.values()]
                         + [key.rpartition("@")[2] for key in self.broken_lists])

    @cached_property
    def address_table(self) -> AddressTable:
        return AddressTable(self.lists)

    @cached_property
    def broken_table(self) -> AddressTable:
        return AddressTable(self.broken_lists)

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


def load(path: str | None = None, *, strict: bool = True) -> Site:
    """Load and validate the site file and every ``*.yaml`` in its lists_dir.

    Raises :class:`ConfigError` carrying every problem found, each as
    ``FILE:LINE: key.path: message``; with ``strict=False`` only for site
    errors (list errors go to ``Site.list_errors``, module docstring).
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
    templates_dir = here(raw["templates_dir"]) if raw["templates_dir"] else os.path.join(base, "templates")
    keys = tuple(Frozen({**k.as_dict(), "file": here(k.file)}) for k in raw["verp"].keys)
    raw["verp"] = Frozen({**raw["verp"].as_dict(), "keys": keys})
    dkim_keys = tuple(Frozen({**k.as_dict(), "file": here(k.file)}) for k in raw["dkim"].keys)
    raw["dkim"] = Frozen({**raw["dkim"].as_dict(), "keys": dkim_keys})
    if raw["store"].password_file:
        raw["store"] = Frozen({**raw["store"]._data, "password_file": here(raw["store"].password_file)})
    conf = Frozen(raw)
    lists: dict[str, Frozen] = {}
    files: dict[str, str] = {}
    list_errors: dict[str, list[str]] = {}
    try:
        names = sorted(n for n in os.listdir(lists_dir) if n.endswith((".yaml", ".yml")) and not n.startswith("."))
    except OSError as exc:
        raise ConfigError([f"{path}:1: lists_dir: cannot read {lists_dir}: {exc.strerror}"]) from None
    for name in names:
        fpath = os.path.join(lists_dir, name)
        try:
            lraw = load_yaml_file(fpath, schema.LIST)
        except ConfigError as exc:
            list_errors[fpath] = exc.errors
            continue
        stem = name.rsplit(".", 1)[0]
        if stem != lraw["name"]:
            list_errors[fpath] = [f"{fpath}:1: name: list {lraw['name']!r} must live in {lraw['name']}.yaml"]
            continue
        if lraw["subject_prefix"] is None:
            lraw["subject_prefix"] = f"[{lraw['name']}] "
        if lraw["language"] is not None and not LANGUAGE_RE.match(lraw["language"]):
            list_errors[fpath] = [f"{fpath}:1: language: {lraw['language']!r} is not a language tag (de, pt-BR)"]
            continue
        # notice templates (listgate.app.texts): the list's directory, then the site's
        tdir = lraw["templates_dir"] or f"{stem}.templates"
        lraw["templates_dir"] = os.path.normpath(os.path.join(lists_dir, tdir))
        lraw["site_templates_dir"] = templates_dir
        lc = Frozen(lraw)
        key = list_key(lc)
        if key in lists:
            list_errors[fpath] = [f"{fpath}:1: name: list {key} is also defined in {files[key]}"]
            continue
        lists[key] = lc
        files[key] = fpath
    if not keys:
        errors.append(f"{path}:1: verp.keys: at least one VERP signing key is required")
    elif all(k.retired for k in keys):
        errors.append(f"{path}:1: verp.keys: every key is retired; one must sign")
    if strict:
        errors.extend(e for errs in list_errors.values() for e in errs)
    if errors:
        raise ConfigError(errors)
    broken: dict[str, str] = {}
    for fpath in list_errors:
        key = _which_list(fpath)
        if key is not None and key not in lists:
            broken.setdefault(key, fpath)
    return Site(path=path, conf=conf, state_dir=state_dir, queue_dir=queue_dir,
                lists_dir=lists_dir, templates_dir=templates_dir, lists=lists, list_files=files,
                list_errors={f: tuple(e) for f, e in list_errors.items()}, broken_lists=broken)


_TOP_KEY_RE = re.compile(r"^(name|domain)\s*:\s*[\"']?([A-Za-z0-9_.-]+)[\"']?\s*(?:#.*)?$", re.M)


def _which_list(fpath: str) -> str | None:
    """``"name@domain"`` of a list file that failed validation, read as loosely as it takes, or None.

    The top-level ``name:`` and ``domain:`` lines are looked for line by line, so a
    syntax error elsewhere in the file does not hide them; ``name`` defaults to the
    file's stem. None when no valid domain is found (nothing to answer 451 for).
    """
    from .loader import LISTNAME_RE, valid_domain
    try:
        text = read_small_file(fpath).decode("utf-8", "replace")
    except (OSError, ConfigError):
        return None
    found = {k: v for k, v in reversed(_TOP_KEY_RE.findall(text))}   # the first of each wins
    name = found.get("name", os.path.basename(fpath).rsplit(".", 1)[0]).lower()
    domain = found.get("domain", "").lower()
    if not LISTNAME_RE.match(name) or not valid_domain(domain):
        return None
    return f"{name}@{domain}"


def log_list_errors(site: Site, only: set[str] | None = None) -> None:
    """Log each refused list file of ``site`` (or of those in ``only``) on one line (daemons at start/reload)."""
    owners = {f: k for k, f in site.broken_lists.items()}
    for fpath, errs in site.list_errors.items():
        if only is not None and fpath not in only:
            continue
        key = owners.get(fpath)
        what = "list not served (451 4.3.0 at RCPT)" if key else "list file ignored"
        log.error("list_refused", f"{what} until its file is fixed", list=key, file=fpath, errors=" | ".join(errs))


class Watcher:
    """Holds the current :class:`Site` and reloads it when its files change.

    Loads with ``strict=False``: a broken list file leaves that list out (see
    the module docstring) and the others are served. ``current()`` costs a few
    ``stat`` calls at most once per ``interval`` seconds. A reload whose site
    file fails validation is logged and the previous configuration stays in
    force; a list whose file became invalid keeps its previous configuration
    (a typo must not take mail down); each refused file is logged once per change.
    """

    def __init__(self, path: str | None = None, interval: float = 1.0, site: Site | None = None):
        self.path = os.path.abspath(path or default_path())
        self.interval = interval
        self._site = site or load(self.path, strict=False)
        self._stamp = self._fingerprint()
        self._checked = time.monotonic()

    def _fingerprint(self) -> tuple:
        items = []
        for p in [self.path, self._site.lists_dir, *self._site.list_files.values(), *self._site.list_errors]:
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
            new = load(self.path, strict=False)
        except ConfigError as exc:
            log.error("config_reload_failed", "configuration reload failed, keeping the previous one",
                      errors=" | ".join(exc.errors))
            return False
        old = self._site
        changed = {f for f, errs in new.list_errors.items() if old.list_errors.get(f) != errs}
        kept = {key: f for key, f in new.broken_lists.items() if key in old.lists}
        if kept:   # a list that was served stays served with its previous configuration
            lists = {**new.lists, **{key: old.lists[key] for key in kept}}
            files = {**new.list_files, **{key: old.list_files[key] for key in kept}}
            broken = {key: f for key, f in new.broken_lists.items() if key not in kept}
            new = replace(new, lists=lists, list_files=files, broken_lists=broken)
        self._site = new
        self._stamp = self._fingerprint()
        for key, fpath in kept.items():
            if fpath in changed:
                log.error("list_refused", "list file refused, keeping its previous configuration", list=key,
                          file=fpath, errors=" | ".join(new.list_errors[fpath]))
        log_list_errors(new, only=changed - set(kept.values()))
        log.info("config_reloaded", "configuration reloaded", lists=len(new.lists),
                 refused=len(new.list_errors) or None)
        return True
