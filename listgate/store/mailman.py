"""Import members and bounce info from a Mailman 2.1 list database (``config.pck``).

A ``config.pck`` is a Python 2 pickle of the list's attribute dict, written by
``MailList.Save`` (protocol 0 or 1). It is data from another system, so it is
read with :mod:`listgate.migrate.unpickle` (known Mailman classes become inert
stand-ins, any other global refuses the file). Python 2 byte strings are read as latin-1 (so
nothing fails to decode) and display names are then re-decoded with the
charset of the list's language (Mailman 2.1 ``Defaults.py``, ``LC_DESCRIPTIONS``).

Member attributes used (Mailman 2.1 ``OldStyleMemberships.py``): ``members``
and ``digest_members`` (lower-cased address → 0, or the address as typed),
``usernames`` (display names), ``delivery_status`` (address → (status, time);
0 enabled, 1 unknown (legacy), 2 by user, 3 by admin, 4 by bounce),
``user_options`` (bits: 1 delivery disabled, 8 plain text digests, 128
moderated), ``language`` (address → language code), ``bounce_info``
(``_BounceInfo``: ``score``, ``date`` and ``lastnotice`` as (year, month, day),
``noticesleft``, ``cookie``: the token of the re-enable record Mailman mailed).
"""
from __future__ import annotations

import calendar
from dataclasses import dataclass, field
from typing import Any, Iterable

from ..migrate.unpickle import MAX_PICKLE_BYTES, UnsafePickle, is_a, loads, looks_like_pickle
from .base import ListStore
from .common import new_member

__all__ = ["MAX_PICKLE_BYTES", "MailmanImportError", "ImportedMember", "MailmanList", "import_members",
           "load_config", "looks_like_pickle", "read_config"]

# MemberAdaptor.ENABLED/UNKNOWN/BYUSER/BYADMIN/BYBOUNCE -> listgate delivery status. UNKNOWN is
# Mailman 2.0's "disabled, reason not recorded": keep it disabled, as the admin's doing.
_DELIVERY = {0: "enabled", 1: "by_admin", 2: "by_user", 3: "by_admin", 4: "by_bounce"}
_DISABLE_DELIVERY = 1          # Mailman 2.1 Defaults.DisableDelivery option bit
_DISABLE_MIME = 8              # Defaults.DisableMime: plain text (RFC 1153) digests
_MODERATE = 128                # Defaults.Moderate: the member's posts are held
_NEVER = (1970, 1, 2)          # Mailman's ZEROHOUR_PLUSONEDAY: "no notice sent yet"

# Charsets of Mailman 2.1's languages whose byte strings are not latin-1 or ASCII text.
_LANGUAGE_CHARSETS = {
    "ar": "utf-8", "ca": "utf-8", "cs": "iso-8859-2", "el": "iso-8859-7", "eo": "utf-8", "fa": "utf-8",
    "he": "utf-8", "hr": "iso-8859-2", "hu": "iso-8859-2", "ja": "euc-jp", "ko": "euc-kr",
    "lt": "iso-8859-13", "pl": "iso-8859-2", "ro": "utf-8", "ru": "koi8-r", "sk": "utf-8", "sl": "iso-8859-2",
    "sr": "utf-8", "tr": "iso-8859-9", "uk": "utf-8", "vi": "utf-8", "zh_CN": "utf-8", "zh_TW": "utf-8",
}


class MailmanImportError(ValueError):
    """The file is not a Mailman 2.1 list database we can read safely."""


@dataclass
class BounceInfo:
    """A member's Mailman bounce info; dates are 'YYYY-MM-DD' (UTC) or None."""

    score: float
    date: str | None
    notices_left: int | None
    last_notice: str | None


@dataclass
class ImportedMember:
    """One member to import: from a Mailman list or a plain address file."""

    address: str
    display_name: str = ""
    delivery_status: str = "enabled"
    digest: bool = False
    bounce: BounceInfo | None = None
    delivery_mode: str = "regular"            # regular, mime_digest, plain_digest
    moderated: bool = False
    language: str = ""
    status_changed_at: float | None = None    # when Mailman disabled delivery
    cookie: str | None = None                 # the re-enable token Mailman mailed (bounce info)


@dataclass
class MailmanList:
    """What :func:`read_config` found: the list's name, host, language and members."""

    real_name: str
    host_name: str
    language: str
    members: list[ImportedMember] = field(default_factory=list)
    charset: str = "iso-8859-1"
    conf: dict[str, Any] = field(default_factory=dict, repr=False)

    def text(self, value: Any) -> str:
        """A Python 2 string of this list's database as text (see :func:`_text`)."""
        return _text(value, self.charset)


@dataclass
class ImportReport:
    added: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)    # (address, reason)


def load_config(data: bytes) -> dict[str, Any]:
    """The attribute dict of a ``config.pck``; MailmanImportError if it is not one or names a disallowed class."""
    try:
        result = loads(data, what="Mailman 2.1 list database")
    except UnsafePickle as exc:
        raise MailmanImportError(str(exc)) from None
    if not isinstance(result, dict) or not isinstance(result.get("members"), dict):
        raise MailmanImportError("not a Mailman 2.1 list database (no members table)")
    return result


def read_config(data: bytes) -> MailmanList:
    """Members (regular and digest), delivery status and bounce info from ``config.pck`` bytes."""
    conf = load_config(data)
    language = _text(conf.get("preferred_language"), "us-ascii") or "en"
    charset = _LANGUAGE_CHARSETS.get(language, "iso-8859-1")
    usernames = _dict(conf.get("usernames"))
    statuses = _dict(conf.get("delivery_status"))
    options = _dict(conf.get("user_options"))
    bounces = _dict(conf.get("bounce_info"))
    languages = _dict(conf.get("language"))
    found = MailmanList(real_name=_text(conf.get("real_name"), charset), host_name=_text(conf.get("host_name"), charset),
                        language=language, charset=charset, conf=conf)
    for table, digest in (("members", False), ("digest_members", True)):
        for key, typed in sorted(_dict(conf.get(table)).items(), key=lambda kv: str(kv[0])):
            if not isinstance(key, str):
                continue
            address = typed if isinstance(typed, str) and typed else key
            status = _delivery_status(statuses.get(key), options.get(key))
            bits = options.get(key) if isinstance(options.get(key), int) else 0
            info = bounces.get(key)
            cookie = info.get("cookie") if is_a(info, "Mailman.Bouncer._BounceInfo") else None
            member_language = _text(languages.get(key), "us-ascii")
            found.members.append(ImportedMember(
                address=address, display_name=_text(usernames.get(key), charset), delivery_status=status,
                digest=digest, bounce=_bounce_info(info, status),
                delivery_mode=("plain_digest" if bits & _DISABLE_MIME else "mime_digest") if digest else "regular",
                moderated=bool(bits & _MODERATE), language="" if member_language == language else member_language,
                status_changed_at=_changed_at(statuses.get(key), status),
                cookie=cookie if isinstance(cookie, str) and cookie else None))
    return found


def import_members(store: ListStore, members: Iterable[ImportedMember]) -> ImportReport:
    """Add ``members`` to ``store`` in one transaction (:meth:`ListStore.add_members`); existing or
    malformed ones are skipped, not changed.

    Bounce info is carried over (score, last bounce day, notices left for
    members disabled by bounce), with the delivery mode, moderation flag,
    language and the time delivery was disabled. Mailman's re-enable cookies
    are pending records: ``listgate import mailman21`` moves them.
    """
    report = ImportReport()
    todo = []
    for item in members:
        try:
            member = new_member(item.address, item.display_name, item.delivery_status)
        except ValueError as exc:
            report.skipped.append((item.address, str(exc)))
            continue
        member.delivery_mode, member.moderated, member.language = item.delivery_mode, item.moderated, item.language
        if item.status_changed_at is not None and item.delivery_status != "enabled":
            member.status_changed_at = item.status_changed_at
        if item.bounce is not None:
            member.bounce_score = item.bounce.score
            member.last_bounce_day = item.bounce.date
            member.last_bounce_at = _day_start(item.bounce.date)
            member.notices_left = item.bounce.notices_left
            member.last_notice_at = _day_start(item.bounce.last_notice)
        todo.append(member)
    added = {id(m) for m in store.add_members(todo)}
    for member in todo:
        if id(member) in added:
            report.added.append(member.address)
        else:
            report.skipped.append((member.address, "already a member"))
    return report


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _text(value: Any, charset: str) -> str:
    """A Python 2 byte string (read as latin-1) re-decoded in the list's charset; unicode kept."""
    if not isinstance(value, str):
        return ""
    try:
        raw = value.encode("latin-1")
    except UnicodeEncodeError:
        return value  # it was a unicode object in Python 2: already right
    for encoding in ("utf-8", charset):
        try:
            return raw.decode(encoding)
        except (UnicodeDecodeError, LookupError):
            continue
    return value


def _delivery_status(entry: Any, options: Any) -> str:
    if isinstance(entry, (tuple, list)) and entry and isinstance(entry[0], int):
        return _DELIVERY.get(entry[0], "by_admin")
    if isinstance(options, int) and options & _DISABLE_DELIVERY:
        return "by_user"
    return "enabled"


def _date(value: Any) -> str | None:
    if (isinstance(value, (tuple, list)) and len(value) >= 3 and all(isinstance(v, int) for v in value[:3])
            and tuple(value[:3]) != _NEVER and 1 <= value[1] <= 12 and 1 <= value[2] <= 31):
        return f"{value[0]:04d}-{value[1]:02d}-{value[2]:02d}"
    return None


def _day_start(day: str | None) -> float | None:
    """POSIX time of 00:00 UTC on ``day`` ('YYYY-MM-DD')."""
    if day is None:
        return None
    year, month, mday = (int(p) for p in day.split("-"))
    return float(calendar.timegm((year, month, mday, 0, 0, 0)))


def _changed_at(entry: Any, status: str) -> float | None:
    if status == "enabled" or not (isinstance(entry, (tuple, list)) and len(entry) >= 2):
        return None
    when = entry[1]
    return float(when) if isinstance(when, (int, float)) and not isinstance(when, bool) and when > 0 else None


def _bounce_info(info: Any, status: str) -> BounceInfo | None:
    if not is_a(info, "Mailman.Bouncer._BounceInfo"):
        return None
    state = info.__dict__
    score = state.get("score")
    notices = state.get("noticesleft")
    return BounceInfo(
        score=float(score) if isinstance(score, (int, float)) else 0.0,
        date=_date(state.get("date")),
        # listgate counts notices only while a member is disabled by bounce
        notices_left=notices if status == "by_bounce" and isinstance(notices, int) else None,
        last_notice=_date(state.get("lastnotice")),
    )
