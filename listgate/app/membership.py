"""An administrator's changes to a list's members: ``listgate members add|remove|sync|find``.

An entry that sends mail (the welcome of :func:`listgate.app.subscriptions.welcome`,
the goodbye of :func:`listgate.app.subscriptions.goodbye`) is one store
transaction together with its mail; entries without mail are committed
:data:`BATCH` at a time. A store or queue failure (StoreUnavailable,
QueueError, raised to the caller) leaves the transactions before it done and
the rest untouched: running the same command again finishes the job
(members already there are counted, not added twice).
With ``notify_owners`` the owners get one notice listing every change,
after the last entry. ``dry_run`` reads only: the report says what would
change.

Whether an address is a member, and which member it is, is the store's rule
(:meth:`ListStore.get_member`); this module never compares addresses itself.
An address whose domain takes no mail (:func:`listgate.app.subscriptions.deliverable`)
is invalid unless ``check_domains`` is False; one the DNS cannot answer for is
*deferred* (retry later).
"""
from __future__ import annotations

import contextlib
import email.utils
import fnmatch
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from .. import addresses
from ..store import AlreadyMember, Member, NotAMember, exists, open_store
from ..store.common import bare_address, member_key
from ..store.mailman import ImportedMember
from . import notices, subscriptions

# progress(done, total): called before each entry and once at the end
Progress = Callable[[int, int], None]

# Changes without mail committed together (one fsync for this many members).
BATCH = 200

# The owners' notice names at most this many addresses per kind, then a count.
MAX_LISTED = 500


def parse_lines(text: str) -> tuple[list[ImportedMember], list[tuple[str, str]]]:
    """One address per line (``Name <addr>`` or bare; blank lines and ``#`` comments ignored).

    Returns (members, [("line N: TEXT", reason)] for lines that hold no address).
    Display-name syntax per RFC 5322 section 3.4 via :func:`email.utils.parseaddr`.
    """
    found, bad = [], []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, address = email.utils.parseaddr(line)
        if not address or "@" not in address:
            bad.append((f"line {n}: {line}", "no address on this line"))
            continue
        found.append(ImportedMember(address=address, display_name=name))
    return found, bad


@dataclass
class Report:
    """What a run did (or, with ``dry_run``, would do). Addresses as the store keeps them.

    ``invalid``: (entry, reason) not acted on (malformed, a domain that takes
    no mail, a line without an address); ``deferred``: (address, reason) the DNS
    could not answer for; ``queued``: qfile ids of the mail sent.
    """

    list_key: str
    dry_run: bool = False
    added: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    not_members: list[str] = field(default_factory=list)
    invalid: list[tuple[str, str]] = field(default_factory=list)
    deferred: list[tuple[str, str]] = field(default_factory=list)
    queued: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"list": self.list_key, "dry_run": self.dry_run, "added": self.added, "already_members": self.already,
                "removed": self.removed, "not_members": self.not_members,
                "invalid": [{"entry": e, "reason": r} for e, r in self.invalid],
                "deferred": [{"entry": e, "reason": r} for e, r in self.deferred], "queued": self.queued}


class _Run:
    """One command's entries against one list; the report grows as it goes.

    Each entry is first checked, reading only (malformed, already a member or
    not one, the DNS); the changes are then written, each with its mail in one
    transaction, or :data:`BATCH` at a time when no mail goes with them (one
    commit, one fsync, for many members; the write lock is never held across
    a DNS query).
    """

    def __init__(self, site, lc, *, dry_run: bool, progress: Progress | None, total: int):
        self.site, self.lc = site, lc
        self.key = addresses.list_key(lc)
        self.store = open_store(site, self.key)
        self.report = Report(self.key, dry_run)
        self.progress = progress or (lambda done, total: None)
        self.done, self.total = 0, total
        self.seen: set[str] = set()       # member keys of this run's entries so far

    def step(self) -> None:
        self.progress(self.done, self.total)
        self.done += 1

    def to_add(self, entries: Iterable[ImportedMember], check_domains: bool) -> list[ImportedMember]:
        """The entries to add; the others are reported (and counted as done)."""
        todo = []
        for entry in entries:
            if self._admit(entry.address, check_domains):
                todo.append(entry)
            else:
                self.step()
        return todo

    def _admit(self, address: str, check_domains: bool) -> bool:
        r = self.report
        wanted = _valid(r, address)
        if wanted is None:
            return False
        existing = self.store.get_member(address)
        if existing is not None or wanted in self.seen:
            r.already.append(existing.address if existing else address)
            return False
        if check_domains:
            verdict = subscriptions.deliverable(self.site, address)
            if verdict.dead:
                r.invalid.append((address, f"cannot receive mail: {verdict.reason}"))
                return False
            if verdict.status == "unknown":
                r.deferred.append((address, f"the DNS check of {verdict.domain} could not be made: {verdict.reason}"))
                return False
        self.seen.add(wanted)
        return True

    def to_remove(self, items: Iterable[str]) -> list[str]:
        """The addresses of members to remove; the others are reported (and counted as done)."""
        r, todo = self.report, []
        for address in items:
            if _valid(r, address) is None:
                self.step()
                continue
            member = self.store.get_member(address)
            if member is None or member.key in self.seen:
                r.not_members.append(address)
                self.step()
                continue
            self.seen.add(member.key)
            todo.append(member.address)
        return todo

    def write(self, items: Sequence, one, mail: bool) -> None:
        """``one(item)`` for each item, in transactions of one item (``mail``) or :data:`BATCH`."""
        size = 1 if mail else BATCH
        for start in range(0, len(items), size):
            with self.store.transaction() if not self.report.dry_run else contextlib.nullcontext():
                for item in items[start:start + size]:
                    self.step()
                    one(item)

    def add(self, entry: ImportedMember, welcome: bool) -> None:
        r = self.report
        if r.dry_run:
            r.added.append(entry.address)
            return
        with self.store.transaction():
            try:
                member = self.store.add_member(entry.address, entry.display_name)
            except AlreadyMember:        # added meanwhile
                r.already.append(entry.address)
                return
            # records left from an earlier membership of this address must not act on the new one
            subscriptions.start_clean(self.store, member, "added by an administrator")
            if welcome:
                r.queued.append(subscriptions.welcome(self.site, self.lc, member.address))
        r.added.append(member.address)

    def remove(self, address: str, goodbye: bool) -> None:
        r = self.report
        if r.dry_run:
            r.removed.append(address)
            return
        with self.store.transaction():
            try:
                member = self.store.remove_member(address)
            except NotAMember:           # removed meanwhile
                r.not_members.append(address)
                return
            if goodbye:
                r.queued.append(subscriptions.goodbye(self.site, self.lc, member.address))
        r.removed.append(member.address)

    def finish(self, command: str, notify_owners: bool) -> Report:
        self.progress(self.total, self.total)
        r = self.report
        if notify_owners and not r.dry_run and (r.added or r.removed):
            changed = ", ".join(f"{n} {what}" for n, what in ((len(r.added), "added"), (len(r.removed), "removed"))
                                if n)
            r.queued.append(notices.tell_owners(
                self.site, self.lc, "owner_membership", kind="owner_membership", command=command, changed=changed,
                changes="\n".join(_listed("Added", r.added) + _listed("Removed", r.removed))))
        return r


def _valid(report: Report, address: str) -> str | None:
    """The member key ``address`` would have, by the store's own rules; None (reported invalid) if malformed."""
    try:
        key = member_key(bare_address(address))
    except ValueError as exc:
        report.invalid.append((address, str(exc)))
        return None
    if key is None:
        report.invalid.append((address, f"malformed address {address!r}"))
    return key


def _listed(title: str, items: Sequence[str]) -> list[str]:
    if not items:
        return []
    lines = [f"{title} ({len(items)}):"] + [f"    {a}" for a in items[:MAX_LISTED]]
    if len(items) > MAX_LISTED:
        lines.append(f"    ... and {len(items) - MAX_LISTED} more")
    return lines + [""]


def add(site, lc, entries: Sequence[ImportedMember], *, welcome: bool = False, notify_owners: bool = False,
        dry_run: bool = False, check_domains: bool = True, progress: Progress | None = None) -> Report:
    """Add ``entries`` to list ``lc`` (module docstring); ``welcome`` sends each new member the welcome."""
    run = _Run(site, lc, dry_run=dry_run, progress=progress, total=len(entries))
    run.write(run.to_add(entries, check_domains), lambda e: run.add(e, welcome), welcome)
    return run.finish("add", notify_owners)


def remove(site, lc, members: Sequence[str], *, goodbye: bool = False, notify_owners: bool = False,
           dry_run: bool = False, progress: Progress | None = None) -> Report:
    """Remove the addresses ``members`` from list ``lc``; ``goodbye`` sends each the goodbye."""
    run = _Run(site, lc, dry_run=dry_run, progress=progress, total=len(members))
    run.write(run.to_remove(members), lambda a: run.remove(a, goodbye), goodbye)
    return run.finish("remove", notify_owners)


def sync(site, lc, entries: Sequence[ImportedMember], *, welcome: bool = False, goodbye: bool = False,
         notify_owners: bool = False, dry_run: bool = False, check_domains: bool = True, allow_empty: bool = False,
         progress: Progress | None = None) -> Report:
    """Make list ``lc``'s members those of ``entries``: add the missing ones, remove the others.

    Raises ValueError when ``entries`` is empty while the list has members
    (that would remove everyone: a truncated or wrong file), unless ``allow_empty``.
    Members are kept by the store's own matching (:meth:`ListStore.get_member`).
    """
    store = open_store(site, addresses.list_key(lc))
    members = store.members()
    if not entries and members and not allow_empty:
        raise ValueError(f"the file names no address: sync would remove all {len(members)} member(s) of "
                         f"{addresses.list_key(lc)} (--allow-empty to do that)")
    keep = set()
    for entry in entries:
        member = store.get_member(entry.address)          # None for a malformed one too
        if member is not None:
            keep.add(member.key)
    gone = [m.address for m in members if m.key not in keep]
    run = _Run(site, lc, dry_run=dry_run, progress=progress, total=len(entries) + len(gone))
    run.write(run.to_add(entries, check_domains), lambda e: run.add(e, welcome), welcome)
    run.report.already.clear()           # the members the file keeps: not news in a sync
    run.write(run.to_remove(gone), lambda a: run.remove(a, goodbye), goodbye)
    return run.finish("sync", notify_owners)


def find(site, pattern: str) -> list[tuple[str, Member]]:
    """Members of every list whose address or display name matches ``pattern``: (list key, member).

    Case-insensitive; a pattern with ``*``, ``?`` or ``[`` is a shell glob
    (:mod:`fnmatch`) matched against the whole address or name, any other a
    substring. Lists are in :meth:`Site.iter_lists` order; a list with no
    store yet is skipped (nothing is created).
    """
    wanted = pattern.lower()
    if any(c in wanted for c in "*?["):
        def matches(text: str) -> bool:
            return fnmatch.fnmatchcase(text.lower(), wanted)
    else:
        def matches(text: str) -> bool:
            return wanted in text.lower()
    found = []
    for lc in site.iter_lists():
        key = addresses.list_key(lc)
        if not exists(site, key):
            continue
        found.extend((key, m) for m in open_store(site, key).members()
                     if matches(m.address) or (m.display_name and matches(m.display_name)))
    return found


def entries_of(items: Iterable[str]) -> list[ImportedMember]:
    """Addresses from the command line (``Name <addr>`` allowed) as entries; none is dropped."""
    out = []
    for item in items:
        name, address = email.utils.parseaddr(item)
        out.append(ImportedMember(address=address if address and "@" in address else item.strip(),
                                  display_name=name))
    return out
