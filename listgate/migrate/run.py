"""``listgate import mailman21 PREFIX``: move a Mailman 2.1 site into listgate.

Order: refuse while ``PREFIX/locks`` holds a live lock (:mod:`.locks`); read
each list's ``config.pck`` (``config.pck.last`` when it cannot be read) and
write ``lists.d/NAME.yaml`` (never over an existing file without ``force``;
checked by the configuration loader before it is renamed into place); load
the site again; then per list members, pending records, held messages;
finally the queue entries. Nothing is written to the Mailman tree.

Idempotent: each thing moved (a member, a record, a hold, a queue entry) is
recorded in ``STATE_DIR/import/mailman21.journal`` right after its store
transaction or qfile is durable, and a later run skips what the journal
names, so a second run changes nothing, and a member who left after the
move is not brought back. A crash between the two leaves one item to be
moved again (a queue entry may then be delivered twice: at-least-once,
like the runner). Records that cannot be placed, unreadable files and the
settings that do not map are written with their content to
``STATE_DIR/import/mailman21-report-TIME.json`` for the admin.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field

from .. import clock, config
from ..addresses import list_key, normalize
from ..config import schema
from ..config.loader import load_yaml_file
from ..queue import Switchboard
from ..store import StoreError, open_store
from ..store.mailman import MailmanImportError, import_members, read_config
from ..store.tokens import new_token
from . import place, queues, records
from .lists import list_settings
from .locks import live_locks


class ImportRefused(Exception):
    """The import cannot start (Mailman is running, no Mailman tree at PREFIX)."""


@dataclass
class Summary:
    lists: dict = field(default_factory=dict)            # name -> {"yaml", "source", "notes", "unmapped"}
    members: dict = field(default_factory=dict)          # delivery status -> count added
    members_skipped: int = 0
    digest_members: int = 0
    moderated_members: int = 0
    bounce_records: int = 0
    pending_placed: int = 0
    pending_unplaced: int = 0
    pending_expired: int = 0
    held_messages: int = 0
    queue_moved: int = 0
    queue_refused: int = 0
    already_done: int = 0
    problems: list = field(default_factory=list)         # records.Problem as dicts
    expired: list = field(default_factory=list)          # pending records past their lifetime (not moved)
    dry_run: bool = False
    report_file: str | None = None

    @property
    def complete(self) -> bool:
        """Everything was placed: nothing unplaced, refused or unreadable."""
        return not (self.pending_unplaced or self.queue_refused or self.problems)

    def problem(self, what: str, where: str, reason: str, content=None, *, count: str | None = None) -> None:
        self.problems.append(asdict(records.Problem(what, where, reason, content)))
        if count:
            setattr(self, count, getattr(self, count) + 1)


class _Journal:
    """What earlier runs moved (one ``KIND KEY`` per line, appended and fsync'd)."""

    def __init__(self, path: str, dry_run: bool):
        self.path, self.dry_run, self.done = path, dry_run, set()
        try:
            with open(path, encoding="utf-8") as fp:
                self.done = {line.rstrip("\n") for line in fp if line.strip()}
        except FileNotFoundError:
            pass

    def __contains__(self, key: str) -> bool:
        return key in self.done

    def add(self, *keys: str) -> None:
        if self.dry_run or not keys:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fp:
            fp.write("".join(f"{k}\n" for k in keys))
            fp.flush()
            os.fsync(fp.fileno())
        self.done.update(keys)


def run(site, prefix: str, *, names: list[str] | None = None, dry_run: bool = False,
        force: bool = False) -> Summary:
    """Import the Mailman 2.1 tree at ``prefix`` into ``site``; the summary says what happened.

    Raises :class:`ImportRefused` when ``prefix`` is not a Mailman tree or a
    live Mailman lock is held; StoreUnavailable / QueueError when listgate
    cannot store durably (what was done so far is journalled).
    """
    lists_dir = os.path.join(prefix, "lists")
    if not os.path.isdir(lists_dir):
        raise ImportRefused(f"{prefix} is not a Mailman 2.1 tree (no lists directory)")
    held = live_locks(os.path.join(prefix, "locks"))
    if held:
        raise ImportRefused("Mailman is running (live locks: " + "; ".join(held) + "): stop it, or import a copy")
    summary = Summary(dry_run=dry_run)
    journal = _Journal(os.path.join(site.state_dir, "import", "mailman21.journal"), dry_run)
    wanted = {n.lower() for n in names} if names else None
    found = _read_lists(lists_dir, wanted, summary)
    for name, mlist in found.items():
        _write_list_file(site, name, mlist, summary, dry_run, force)
    if not dry_run:
        site = config.load(site.path)
    importer = _Importer(site, prefix, found, summary, journal, dry_run)
    importer.members()
    importer.pending_and_held()
    importer.queue()
    if not dry_run and (summary.problems or summary.expired or any(v.get("unmapped") for v in summary.lists.values())):
        stamp = int(clock.now())
        path = os.path.join(site.state_dir, "import", f"mailman21-report-{stamp}.json")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as fp:
            json.dump({"lists": summary.lists, "problems": summary.problems, "expired": summary.expired}, fp,
                      indent=2, default=str)
        summary.report_file = path
    return summary


def _read_lists(lists_dir: str, wanted, summary: Summary) -> dict:
    found = {}
    for name in sorted(os.listdir(lists_dir)):
        if wanted is not None and name.lower() not in wanted:
            continue
        base = os.path.join(lists_dir, name)
        if not os.path.isdir(base):
            continue
        errors = []
        for source in ("config.pck", "config.pck.last"):
            try:
                data = records.read_file(os.path.join(base, source))
                if data is None:
                    raise MailmanImportError("missing")
                found[name.lower()] = (read_config(data), source, base)
                break
            except (OSError, ValueError) as exc:
                errors.append(f"{source}: {exc}")
        else:
            summary.problem("list", base, "; ".join(errors), count=None)
            continue
        if errors:
            summary.lists.setdefault(name.lower(), {})["fallback"] = (
                f"config.pck could not be read ({errors[0]}): used config.pck.last")
    for name in sorted(wanted - set(found)) if wanted else []:
        if not any(p["where"].endswith(f"/{name}") for p in summary.problems):
            summary.problem("list", os.path.join(lists_dir, name), "no such Mailman list")
    return found


def _write_list_file(site, name: str, found, summary: Summary, dry_run: bool, force: bool) -> None:
    import yaml
    mlist, source, _ = found
    members = mlist.members
    settings = list_settings(name, mlist.conf, mlist.text, sum(m.moderated for m in members), len(members))
    entry = summary.lists.setdefault(name, {})
    entry.update(source=source, notes=settings.notes, unmapped=[f"{k} = {v}" for k, v in settings.unmapped],
                 domain=settings.yaml["domain"])
    path = os.path.join(site.lists_dir, f"{name}.yaml")
    text = ("# moved from Mailman 2.1 by 'listgate import mailman21'; settings that did not map are in\n"
            "# the import report\n" + yaml.safe_dump(settings.yaml, sort_keys=False, allow_unicode=True))
    if os.path.exists(path):
        with open(path, encoding="utf-8", errors="replace") as fp:
            same = fp.read() == text
        if same or not force:
            entry["yaml"] = "unchanged" if same else "kept (exists; --force overwrites)"
            return
    if dry_run:
        entry["yaml"] = "would write"
        return
    tmp = os.path.join(site.lists_dir, f".{name}.yaml.{os.getpid()}.tmp")   # dot files are not loaded
    with open(tmp, "w", encoding="utf-8") as fp:
        fp.write(text)
        fp.flush()
        os.fsync(fp.fileno())
    try:
        load_yaml_file(tmp, schema.LIST)
    except config.ConfigError as exc:
        os.unlink(tmp)
        summary.problem("list file", path, "; ".join(exc.errors))
        entry["yaml"] = "not written (invalid)"
        return
    os.replace(tmp, path)
    entry["yaml"] = "written"


class _Importer:
    def __init__(self, site, prefix, found, summary, journal, dry_run):
        self.site, self.prefix, self.found, self.summary = site, prefix, found, summary
        self.journal, self.dry_run, self.now = journal, dry_run, clock.now()
        # per list: lower-cased address -> (listgate member key, bounce score)
        self.members_of = {n: {m.address.lower(): (_key(m.address), m.bounce.score if m.bounce else 0.0)
                               for m in f[0].members if _key(m.address)} for n, f in found.items()}
        self.member_keys = {n: set(table) for n, table in self.members_of.items()}

    def _lc(self, name: str):
        lc = self.site.get_list(name)
        if lc is None and name in self.found:
            lc = self.site.get_list(name, self.summary.lists.get(name, {}).get("domain"))
        return lc

    def _store(self, name: str):
        lc = self._lc(name)
        return (lc, open_store(self.site, list_key(lc))) if lc is not None and not self.dry_run else (lc, None)

    # -- members -----------------------------------------------------------------
    def members(self) -> None:
        s = self.summary
        for name, (mlist, _, _) in self.found.items():
            todo = [m for m in mlist.members if f"member {name} {_key(m.address)}" not in self.journal]
            s.already_done += len(mlist.members) - len(todo)
            for m in todo:
                s.digest_members += m.delivery_mode != "regular"
                s.moderated_members += m.moderated
                s.bounce_records += m.bounce is not None and (m.bounce.score > 0 or m.bounce.date is not None)
            lc, store = self._store(name)
            if self.dry_run:
                for m in todo:
                    s.members[m.delivery_status] = s.members.get(m.delivery_status, 0) + 1
                continue
            if lc is None:
                s.problem("members", name, "the list is not defined in listgate (its list file was not written)",
                          count=None)
                continue
            report = import_members(store, todo)
            for m in todo:
                if m.address in report.added:
                    s.members[m.delivery_status] = s.members.get(m.delivery_status, 0) + 1
            s.members_skipped += len(report.skipped)
            for address, reason in report.skipped:
                if reason != "already a member":
                    s.problem("member", name, reason, address)
            self.journal.add(*(f"member {name} {_key(m.address)}" for m in todo if _key(m.address)))

    # -- pending records and held messages ------------------------------------------
    def pending_and_held(self) -> None:
        s = self.summary
        found: list[records.MailmanPending] = []
        held: dict[str, list[records.HeldRequest]] = {}
        for name, (_, _, base) in self.found.items():
            result = records.read_pending(os.path.join(base, "pending.pck"), name)
            found += result.records
            requests = records.read_requests(os.path.join(base, "request.pck"), name)
            held[name] = requests.records
            for p in result.problems + requests.problems:
                s.problem(p.what, p.where, p.reason, p.content, count="pending_unplaced")
        site_wide = records.read_pending(os.path.join(self.prefix, "data", "pending.pck"), None)
        found += site_wide.records
        for p in site_wide.problems:
            s.problem(p.what, p.where, p.reason, p.content, count="pending_unplaced")
        held_ids = {n: {r.id for r in reqs if r.op == records.HELDMSG} for n, reqs in held.items()}
        hold_tokens: dict[tuple[str, int], str] = {}
        for rec in found:
            if f"pending {rec.token}" in self.journal:
                s.already_done += 1
                continue
            if rec.expires is not None and rec.expires <= self.now:
                s.pending_expired += 1
                s.expired.append(rec.describe())
                continue
            places = place.candidates(rec, self.member_keys, held_ids)
            if len(places) != 1:
                why = f"could be any of {', '.join(places)}" if places else "no list qualifies"
                s.problem("pending record", rec.source, f"cannot be placed: {why}", rec.describe(),
                          count="pending_unplaced")
                continue
            name = places[0]
            if rec.op == "H":
                wanted = rec.content[0] if rec.content else None
                if wanted in held_ids.get(name, set()):
                    hold_tokens[(name, wanted)] = rec.token
                    continue            # placed with its hold below
                s.problem("pending record", rec.source, "its held message is no longer held", rec.describe(),
                          count="pending_unplaced")
                continue
            self._place(name, rec)
        for name, reqs in held.items():
            for req in reqs:
                self._held(name, req, hold_tokens.get((name, req.id)))

    def _place(self, name: str, rec) -> None:
        s = self.summary
        try:
            record = place.pending_record(rec, self.now, self.site.conf.pending.user_confirmation,
                                          self.members_of.get(name, {}))
        except place.Unplaceable as exc:
            s.problem("pending record", rec.source, str(exc), rec.describe(), count="pending_unplaced")
            return
        lc, store = self._store(name)
        if self.dry_run:
            s.pending_placed += 1
            return
        if lc is None:
            s.problem("pending record", rec.source, f"list {name} is not defined in listgate", rec.describe(),
                      count="pending_unplaced")
            return
        try:
            with store.transaction():
                store.restore_pending(record)
                if record.type == "re_enable":
                    member = store.get_member(record.payload["member"])
                    if member is not None and member.delivery_status == "by_bounce":
                        member.re_enable_token = record.token
                        store.save_member(member)
        except (ValueError, StoreError) as exc:
            s.problem("pending record", rec.source, str(exc), rec.describe(), count="pending_unplaced")
            return
        self.journal.add(f"pending {rec.token}")
        s.pending_placed += 1

    def _held(self, name: str, req, token: str | None) -> None:
        s = self.summary
        where = f"{name}/request.pck id {req.id}"
        if f"held {name} {req.id}" in self.journal:
            s.already_done += 1
            return
        if req.op != records.HELDMSG:
            kind = "subscription" if req.op == records.SUBSCRIPTION else "unsubscription"
            s.problem(f"{kind} waiting for the admin", where, "listgate has no admin approval of (un)subscriptions:"
                      " act on it by hand (listgate members add/remove)", records._plain(req.data),
                      count="pending_unplaced")
            return
        try:
            payload, when = records.held_payload(req, os.path.join(self.prefix, "data"))
        except (OSError, ValueError) as exc:
            s.problem("held message", where, str(exc), records._plain(req.data), count="pending_unplaced")
            return
        if self.dry_run:
            s.held_messages += 1
            s.pending_placed += token is not None
            return
        lc, store = self._store(name)
        if lc is None:
            s.problem("held message", where, f"list {name} is not defined in listgate", count="pending_unplaced")
            return
        from ..store import PendingRecord
        record = PendingRecord(token or new_token(), "held_message", payload, min(when or self.now, self.now),
                               self.now + self.site.conf.pending.held_message)
        store.restore_pending(record)
        keys = [f"held {name} {req.id}"] + ([f"pending {token}"] if token else [])
        self.journal.add(*keys)
        s.held_messages += 1
        s.pending_placed += token is not None

    # -- queue entries -------------------------------------------------------------------
    def queue(self) -> None:
        s = self.summary
        for entry in queues.scan(os.path.join(self.prefix, "qfiles")):
            digest = hashlib.sha1(entry.raw or "\0".join(entry.files).encode()).hexdigest()
            key = f"queue {os.path.relpath(entry.files[0], self.prefix)} {digest}"
            if key in self.journal:
                s.already_done += 1
                continue
            reason = entry.error
            target = meta = None
            if reason is None:
                listname = entry.meta.get("listname")
                lc = self._lc(listname.lower()) if isinstance(listname, str) else None
                if lc is None and self.dry_run and isinstance(listname, str) and listname.lower() in self.found:
                    # the list file is not written in a dry run: judge the entry by its queue alone
                    if entry.queue not in place.DIRECT:
                        reason = f"Mailman queue {entry.queue!r} has no listgate counterpart"
                    target = entry.queue
                elif lc is None:
                    reason = f"list {listname!r} is not defined in listgate"
                else:
                    try:
                        target, meta = place.queue_target(self.site, lc, entry.queue, entry.meta, self.now)
                    except (place.Unplaceable, ValueError, OSError) as exc:
                        reason = str(exc)
            if reason is not None:
                target = None
                s.queue_refused += 1
                s.problems.append({"what": "queue entry (moved to bad)", "where": ", ".join(entry.files),
                                   "reason": reason, "content": None})
                if not self.dry_run:
                    Switchboard.for_site(self.site, "bad").enqueue(
                        entry.msg if entry.msg is not None else entry.raw,
                        {"reason": f"mailman21 import: {reason}", "mailman21": {"files": entry.files}},
                        arrival=entry.arrival or self.now)
                    self.journal.add(key)
                continue
            if not self.dry_run:
                Switchboard.for_site(self.site, target).enqueue(entry.msg, meta, arrival=entry.arrival or self.now)
                self.journal.add(key)
            s.queue_moved += 1


def _key(address) -> str | None:
    try:
        return normalize(address)
    except (ValueError, TypeError):
        return None
