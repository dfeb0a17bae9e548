"""The texts of every notice and reply listgate writes, and where an admin overrides them.

A notice has a *name* (:data:`NOTICES`: ``probe``, ``welcome``, ``held``...)
and a template file ``NAME.txt``: UTF-8 text with :class:`string.Template`
placeholders (``$list``, ``${member}``; ``$$`` is a dollar sign). A notice
that is a whole message starts with one ``Subject: ...`` line and a blank
line; a *fragment* (a part of a reply: ``help``, ``unknown_token``,
``rate_limited``, the ``cmd_*`` lines) is body only. An override without a ``Subject:`` line
keeps the subject of the next template in the search order.

Search order (:func:`candidates`) for notice N of a list whose ``language``
is L (the first readable, valid file wins; nothing is cached, so a changed
file is used from the next notice on, without reload)::

    <list templates_dir>/L/N.txt      list templates_dir: default LISTS_DIR/NAME.templates
    <list templates_dir>/N.txt
    <site templates_dir>/L/N.txt      site templates_dir: default templates beside the site file
    <site templates_dir>/N.txt
    built-in L (listgate/templates/notices/L/N.txt), built-in

Site notices (no list: ``bad_queue_site``) search the site directory, then
the built-in one. Every notice may use the placeholders in :data:`COMMON`
(for site notices: :data:`SITE_COMMON`) and its own (:data:`NOTICES`).

Unknown placeholders, a malformed ``$``, a bad Subject block and bytes that
are not UTF-8 make a file invalid: ``listgate check`` reports each as
``FILE:LINE: message`` (:func:`check_site`); at run time an invalid file is
logged and skipped (the next one in the search order is used), so a typo in
an override never stops a notice.
"""
from __future__ import annotations

import os
import string
from dataclasses import dataclass
from importlib import resources

from ..config import LANGUAGE_RE
from ..log import events

log = events("listgate.app.texts")


@dataclass(frozen=True)
class Notice:
    """One notice: its own placeholders, what it is (``about``), and whether it is a whole message
    (``subject``) or a fragment of a reply, for a list or for the site (``site``)."""
    fields: tuple[str, ...]
    about: str
    subject: bool = True
    site: bool = False


# Placeholders of every list notice: the list's posting address, its name and domain, two more addresses.
COMMON = ("list", "list_name", "domain", "owner_address", "request_address")
# ... and of every site notice.
SITE_COMMON = ("hostname",)

# To add a notice: an entry here and listgate/templates/notices/NAME.txt (tests check both agree).
NOTICES: dict[str, Notice] = {
    # replies to people who wrote to the list
    "confirm": Notice(("action", "confirm", "token"), "asks to confirm a (un)subscription or change of "
                      "address; keep $token in the subject (a reply confirms)"),
    "results": Notice(("results",), "the reply to a command message"),
    "help": Notice(("join", "leave"), "help text (in a command reply)", subject=False),
    "unknown_token": Notice((), "unknown or expired confirmation token (in a command reply)", subject=False),
    "rate_limited": Notice(("address",), "too many confirmations sent to an address (in a command reply)",
                           subject=False),
    # lines of the reply to a command message ($command: the command word, e.g. subscribe)
    "cmd_no_address": Notice(("command",), "no usable address to subscribe", subject=False),
    "cmd_already_member": Notice(("command", "address"), "the address is a member already", subject=False),
    "cmd_not_member": Notice(("command", "address"), "the address is not a member", subject=False),
    "cmd_confirmation_sent": Notice(("command", "address"), "a confirmation request went to the address",
                                    subject=False),
    "cmd_undeliverable": Notice(("command", "address", "reason"), "the address's domain takes no mail (DNS)",
                                subject=False),
    "cmd_change_address_usage": Notice((), "change-address without a new address", subject=False),
    "cmd_digest_usage": Notice((), "digest without on/mime/plain/off", subject=False),
    "cmd_digest_mode": Notice(("address", "mode"), "the member's new delivery mode", subject=False),
    "cmd_unknown": Notice(("command",), "an unknown command (the help follows)", subject=False),
    "rejected": Notice(("subject", "reason"), "to the author of a post the moderators or the policy rejected"),
    # membership
    "welcome": Notice(("leave",), "to a new member"),
    "goodbye": Notice((), "to a member who left"),
    "address_changed": Notice(("old", "new"), "to both addresses after a change of address"),
    "re_enabled": Notice(("address",), "to a member whose delivery is enabled again"),
    "owner_joined": Notice(("address",), "to the owners: a member joined (notify_owner_on_join)"),
    "owner_left": Notice(("address",), "to the owners: a member left (notify_owner_on_leave)"),
    "owner_membership": Notice(("command", "changed", "changes"), "to the owners: the administrator changed "
                               "the members (listgate members add, remove or sync with --notify-owners)"),
    # moderation
    "held": Notice(("author", "subject", "reason", "confirm", "token"), "to the moderators: a post is held "
                   "(post attached); keep $token in the subject (a reply approves)"),
    "held_expired": Notice(("author", "subject", "reason"), "to the moderators: a held post expired"),
    # the bounce life cycle
    "probe": Notice(("member", "score", "threshold"), "the probe to a member whose score reached the threshold"),
    "disabled": Notice(("member", "confirm_address", "token", "notice", "notices", "removal_note"),
                       "to a member disabled by bounce (each reminder); a reply re-enables"),
    "removed": Notice(("member",), "to a member removed for bouncing"),
    "owner_member": Notice(("what", "member", "reason", "count"), "to the owners: bounce processing "
                           "scored/disabled/removed a member (bounces attached)"),
    "owner_incident": Notice(("incident_domain", "status", "count", "window", "members"),
                             "to the owners: a domain incident (bounces not scored)"),
    "owner_complaint": Notice(("member", "action"), "to the owners: a spam complaint (report attached)"),
    "unrecognized": Notice(("recipient", "reason", "envelope_sender"),
                           "to the owners: mail at the bounce address not attributed (attached)"),
    "postmaster_report": Notice(("recipient", "reason", "reason_short", "envelope_sender"),
                                "to the postmaster: a report about the site's own mail (attached)"),
    "site_incident": Notice(("reason", "paused", "retry", "evidence"),
                            "to the postmaster and owners: a site incident paused delivery"),
    # queues
    "bad_queue": Notice(("count", "entries"), "to the owners, daily: their list's mail in the bad queue"),
    "bad_queue_site": Notice(("count", "entries"), "to the postmaster, daily: the bad queue", site=True),
}

_BUILTIN = "listgate.templates"


@dataclass(frozen=True)
class Text:
    """A rendered notice: ``subject`` (None for a fragment) and ``body``; ``source`` the file used."""
    subject: str | None
    body: str
    source: str


class TemplateProblem(ValueError):
    """A template file that cannot be used: ``problems`` are ``(line, message)`` pairs."""

    def __init__(self, problems: list[tuple[int, str]]):
        super().__init__("; ".join(f"line {n}: {m}" for n, m in problems))
        self.problems = problems


def placeholders(name: str) -> tuple[str, ...]:
    """Every placeholder notice ``name`` may use (its own, then the common ones)."""
    notice = NOTICES[name]
    return notice.fields + (SITE_COMMON if notice.site else COMMON)


def _search_dirs(lc=None, site=None) -> list[str]:
    """Override directories, best first (module docstring)."""
    dirs = []
    if lc is not None:
        dirs += [lc.templates_dir, lc.site_templates_dir]
    elif site is not None:
        dirs.append(site.templates_dir)
    return [d for d in dirs if d]


def candidates(name: str, lc=None, site=None) -> list[tuple[str, object]]:
    """``(label, path or resource)`` of every place notice ``name`` is looked for, best first."""
    language = getattr(lc, "language", None) if lc is not None else None
    found: list[tuple[str, object]] = []
    for d in _search_dirs(lc, site):
        if language:
            found.append((os.path.join(d, language, f"{name}.txt"),) * 2)
        found.append((os.path.join(d, f"{name}.txt"),) * 2)
    root = resources.files(_BUILTIN).joinpath("notices")
    if language:
        found.append((f"built-in {language}/{name}.txt", root.joinpath(language, f"{name}.txt")))
    found.append((f"built-in {name}.txt", root.joinpath(f"{name}.txt")))
    return found


def parse(name: str, data: bytes) -> tuple[str | None, str]:
    """``(subject or None, body)`` of template file contents for notice ``name``.

    Raises :class:`TemplateProblem` (with line numbers) for bytes that are not
    UTF-8, a Subject line not followed by a blank line, a Subject in a
    fragment, a malformed ``$`` or a placeholder ``name`` does not have.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TemplateProblem([(data[:exc.start].count(b"\n") + 1, "not UTF-8 text")]) from None
    text = text.replace("\r\n", "\n")
    problems: list[tuple[int, str]] = []
    subject, body, offset = None, text, 0
    if text[:8].lower() == "subject:":
        first, _, rest = text.partition("\n")
        if not NOTICES[name].subject:
            problems.append((1, f"{name} is a part of a reply: it has no Subject line"))
        elif rest and not rest.startswith("\n"):
            problems.append((2, "a blank line must follow the Subject line"))
        subject, body, offset = first[8:].strip(), rest[1:], 2
    allowed = set(placeholders(name))
    for part, first_line in ((subject or "", 1), (body, 1 + offset)):
        for m in string.Template.pattern.finditer(part):
            line = first_line + part.count("\n", 0, m.start())
            ident = m.group("named") or m.group("braced")
            if m.group("invalid") is not None:
                problems.append((line, "a $ that starts no placeholder (write $$ for a dollar sign)"))
            elif ident and ident not in allowed:
                problems.append((line, f"unknown placeholder ${ident} (known: "
                                       + ", ".join(f"${p}" for p in placeholders(name)) + ")"))
    if problems:
        raise TemplateProblem(problems)
    return subject, body


def read(where) -> bytes | None:
    """The bytes of a file path or a package resource; None when it does not exist."""
    try:
        if isinstance(where, str):
            with open(where, "rb") as f:
                return f.read()
        return where.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None


def render(name: str, lc=None, *, site=None, **fields) -> Text:
    """Notice ``name`` for list ``lc`` (or, for a site notice, ``site``) filled with ``fields``.

    ``fields`` are the notice's own placeholders (:data:`NOTICES`); the common
    ones come from ``lc`` (or ``site``). Files are searched as the module
    docstring says; an unreadable or invalid override is logged and skipped.
    Raises KeyError for an unknown notice, ValueError when ``fields`` are not
    exactly the notice's own (a caller's mistake).
    """
    notice = NOTICES[name]
    if set(fields) != set(notice.fields):
        raise ValueError(f"notice {name} takes {sorted(notice.fields)}, got {sorted(fields)}")
    values = dict(fields)
    if notice.site:
        values["hostname"] = site.conf.hostname
    else:
        from .notices import address
        values.update(list=address(lc), list_name=lc.name, domain=lc.domain,
                      owner_address=address(lc, "owner"), request_address=address(lc, "request"))
    values = {k: str(v) for k, v in values.items()}
    subject = body = source = None
    for label, where in candidates(name, lc, site):
        try:
            data = read(where)
        except OSError as exc:
            log.error("notice_template_unreadable", "skipped", template=label, error=exc.strerror or exc)
            continue
        if data is None:
            continue
        try:
            subj, text = parse(name, data)
        except TemplateProblem as exc:
            log.error("notice_template_invalid", "skipped (see listgate check)", template=label, error=exc)
            continue
        if body is None:
            body, source = string.Template(text).substitute(values), label
        if subj is not None or not notice.subject:
            subject = string.Template(subj).substitute(values) if subj is not None else None
            break
    if body is None:
        raise KeyError(f"no template for notice {name}")   # the built-in one is missing: a broken install
    return Text(subject, body, source)


def builtin(name: str, language: str | None = None) -> bytes:
    """The built-in template file of notice ``name`` (in ``language`` when there is one)."""
    root = resources.files(_BUILTIN).joinpath("notices")
    if language:
        data = read(root.joinpath(language, f"{name}.txt"))
        if data is not None:
            return data
    return root.joinpath(f"{name}.txt").read_bytes()


def check_dir(directory: str, *, site_dir: bool) -> list[str]:
    """``FILE:LINE: message`` for every problem in a template directory (missing: none).

    Files are ``NAME.txt`` for a notice in :data:`NOTICES` (a list directory
    holds no site notices), directories are languages holding the same.
    Hidden files and editor backups (``~``) are ignored.
    """
    if not os.path.isdir(directory):
        return [f"{directory}:1: templates_dir is not a directory"] if os.path.lexists(directory) else []
    lines = []

    def one(path: str, entry: str) -> None:
        name = entry[:-4] if entry.endswith(".txt") else None
        if name is None:
            lines.append(f"{path}:1: not a notice template (NAME.txt) or a language directory; ignored")
        elif name not in NOTICES:
            lines.append(f"{path}:1: unknown notice name {name!r} (listgate notices list)")
        elif NOTICES[name].site and not site_dir:
            lines.append(f"{path}:1: {name} is a site notice: it belongs in the site's templates_dir")
        else:
            try:
                with open(path, "rb") as f:
                    parse(name, f.read())
            except OSError as exc:
                lines.append(f"{path}:1: cannot read: {exc.strerror}")
            except TemplateProblem as exc:
                lines.extend(f"{path}:{n}: {m}" for n, m in exc.problems)

    for entry in sorted(os.listdir(directory)):
        path = os.path.join(directory, entry)
        if entry.startswith(".") or entry.endswith("~"):
            continue
        if os.path.isdir(path):
            if not LANGUAGE_RE.match(entry):
                lines.append(f"{path}:1: not a language directory (a tag like de or pt-BR); ignored")
                continue
            for sub in sorted(os.listdir(path)):
                if not (sub.startswith(".") or sub.endswith("~")):
                    one(os.path.join(path, sub), sub)
        else:
            one(path, entry)
    return lines


def check_site(site) -> list[str]:
    """Problems in the site's and every list's template directories (what ``listgate check`` prints)."""
    lines = check_dir(site.templates_dir, site_dir=True) if site.templates_dir else []
    for lc in site.iter_lists():
        if lc.templates_dir and lc.templates_dir != site.templates_dir:
            lines += check_dir(lc.templates_dir, site_dir=False)
    return lines
