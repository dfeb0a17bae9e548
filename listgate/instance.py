"""`listgate init DIR`: a self-contained instance (the embedded default); adding and removing lists.

DIR gets ``listgate.yaml``, ``lists.d/NAME.yaml``, ``keys/KEYID.key`` (mode
0600), ``lists/`` (per-list stores) and ``queue/``. Nothing outside DIR is
touched, so README's demo and the tests can run anywhere.

A list's file is written from one template (``listgate/templates/list.yaml``,
:func:`list_yaml`) by ``init`` and by ``listgate lists create``
(:func:`create_list`); ``listgate lists remove`` is :func:`remove_list`.
"""
from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from importlib import resources

from .queue import QUEUES


def _template(name: str) -> str:
    return resources.files("listgate.templates").joinpath(name).read_text(encoding="utf-8")


def list_yaml(name: str, domain: str, owners: list[str], description: str = "") -> str:
    """The text of list ``name@domain``'s file, from the package's template.

    Owners and the description are written as YAML double-quoted scalars
    (JSON strings are valid YAML 1.2), so no value can add a key; ``name`` and
    ``domain`` are written as given, the list schema checks them when loaded.
    """
    return _template("list.yaml").format(name=name, domain=domain, description=json.dumps(description),
                                         owners="\n".join(f"  - {json.dumps(o)}" for o in owners))


def write_key(path: str) -> None:
    """Write a fresh 256-bit VERP signing key (hex) with mode 0600; never overwrite."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(secrets.token_hex(32) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def init(directory: str, *, name: str = "demo", domain: str = "lists.example.org",
         owner: str | None = None, hostname: str = "localhost",
         milter_socket: str = "unix:milter.sock", policy_socket: str = "inet:10040@127.0.0.1",
         reinject_port: int = 10026) -> str:
    """Create an instance under ``directory``; returns the site file's path.

    Raises FileExistsError if ``directory`` already holds a site file.
    """
    directory = os.path.abspath(directory)
    site_path = os.path.join(directory, "listgate.yaml")
    if os.path.exists(site_path):
        raise FileExistsError(f"{site_path} already exists")
    # read the templates before making anything: a broken install leaves no half-made instance
    list_text = list_yaml(name, domain, [owner or f"owner@{domain}"], "Example list created by listgate init")
    key_id = "k" + secrets.token_hex(2)
    site_text = _template("site.yaml").format(hostname=hostname, milter_socket=milter_socket,
                                              policy_socket=policy_socket, reinject_port=reinject_port,
                                              key_id=key_id)
    os.makedirs(os.path.join(directory, "lists.d"), exist_ok=True)
    os.makedirs(os.path.join(directory, "lists"), exist_ok=True)
    os.makedirs(os.path.join(directory, "templates"), exist_ok=True)   # the site's notice overrides (INSTALL 10)
    for q in QUEUES:
        os.makedirs(os.path.join(directory, "queue", q), exist_ok=True)
    write_key(os.path.join(directory, "keys", f"{key_id}.key"))
    with open(os.path.join(directory, "lists.d", f"{name}.yaml"), "w", encoding="utf-8") as fh:
        fh.write(list_text)
    with open(site_path, "w", encoding="utf-8") as fh:
        fh.write(site_text)
    return site_path


# Queues whose qfiles are still to be handled; shunt and bad only rest.
WAITING_QUEUES = tuple(q for q in QUEUES if q not in ("shunt", "bad"))


def create_list(site, address: str, owners: list[str], description: str = "") -> str:
    """Write ``LISTS_DIR/NAME.yaml`` for list ``address`` (``name@domain``); returns its path.

    The file is checked as ``listgate check`` checks it (the site loaded again
    with ``strict=False``); if it does not validate it is removed again and
    ValueError carries the errors (``FILE:LINE: key: message``). Raises
    ValueError for a malformed ``address``, no owner, or a list that exists
    (also a file ``NAME.yaml`` for the same name at another domain: one file
    per name). The store is made on first use, as for every list. Run as
    root, the file gets the owner and group of ``lists_dir`` (root's in
    /etc/listgate, the instance user's in a ``listgate init`` directory).
    """
    from . import config
    from .config.loader import LISTNAME_RE, valid_domain
    name, at, domain = address.strip().lower().rpartition("@")
    if not at or not LISTNAME_RE.match(name) or ".." in name or not valid_domain(domain):
        raise ValueError(f"{address!r} is not a list address NAME@DOMAIN (NAME: lower-case letters, digits, "
                         "'.', '_', '-', at most 40 characters)")
    if not owners:
        raise ValueError("a list needs at least one owner (--owner ADDRESS)")
    key = f"{name}@{domain}"
    if key in site.lists or key in site.broken_lists:
        raise ValueError(f"list {key} exists already ({site.list_files.get(key) or site.broken_lists[key]})")
    path = os.path.join(site.lists_dir, f"{name}.yaml")
    text = list_yaml(name, domain, owners, description)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)   # a YAML file: 0640 (INSTALL 3.3)
    except FileExistsError:
        raise ValueError(f"{path} exists already: a list named {name} lives there (one file per list name)") from None
    try:
        if os.geteuid() == 0:       # root writes configuration: the file belongs to whoever owns lists_dir
            st = os.stat(site.lists_dir)
            os.fchown(fd, st.st_uid, st.st_gid)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        loaded = config.load(site.path, strict=False)
        errors = loaded.list_errors.get(path)
        if errors or key not in loaded.lists:
            raise ValueError("\n".join(errors or [f"{path}: list {key} was not loaded"]))
    except BaseException:
        os.unlink(path)
        raise
    return path


@dataclass
class Removal:
    """What :func:`remove_list` did: the file removed, the store kept or purged, qfiles left."""

    path: str
    store: str | None             # where the state is (kept) or what was deleted (purged); None: it had none
    purged: bool
    queued: dict[str, int] = field(default_factory=dict)    # queue -> the list's qfiles in it


def queued_for(site, key: str, queues=QUEUES) -> dict[str, int]:
    """How many qfiles of list ``key`` wait in each of ``queues`` (those with none left out).

    Reads only: a queue directory not made yet holds nothing. A qfile that
    cannot be parsed counts for no list.
    """
    from .queue import QFileFormatError, Switchboard
    counts = {}
    for name in queues:
        if not os.path.isdir(os.path.join(site.queue_dir, name)):
            continue
        board = Switchboard.for_site(site, name)
        n = 0
        for qid in board.held_ids() + board.ids():
            try:
                qf = board.peek(qid)
            except (QFileFormatError, OSError):
                continue
            n += qf is not None and str(qf.meta.get("list") or "").lower() == key
        if n:
            counts[name] = n
    return counts


def remove_list(site, key: str, *, purge: bool = False, force: bool = False) -> Removal:
    """Remove list ``key``'s file; its store stays (members, bounce info, holds) unless ``purge``.

    Refuses (ValueError) while qfiles of the list wait in a queue other than
    shunt and bad, unless ``force``: a runner would shunt them once the list
    is gone. A list whose file has errors (``site.broken_lists``) can be
    removed too. Raises ValueError for an unknown list, StoreUnavailable
    when ``purge`` cannot reach the store.
    """
    from . import store
    path = site.list_files.get(key) or site.broken_lists.get(key)
    if path is None:
        raise ValueError(f"unknown list {key!r} (lists: {', '.join(sorted(site.lists)) or 'none'})")
    waiting = queued_for(site, key, WAITING_QUEUES)
    if waiting and not force:
        raise ValueError(f"list {key} has qfiles waiting (" + ", ".join(f"{n} in {q}" for q, n in waiting.items())
                         + "): let the runner finish them, or --force")
    # a list that never had mail or members has no SQLite file: nothing to keep or delete
    where = None if not store.exists(site, key) else store.purge(site, key) if purge else store.describe(site, key)
    os.unlink(path)
    return Removal(path=path, store=where, purged=purge, queued=queued_for(site, key))
