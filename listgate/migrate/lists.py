"""A Mailman 2.1 list's settings (``config.pck``) as a listgate list file (``lists.d/NAME.yaml``).

:func:`list_settings` maps what has a listgate meaning (``config/schema.py``
``LIST``) and returns every other setting by name and value, so the report
shows what did not move. Mailman's settings are documented in its
``Defaults.py`` and ``Gui/*.py``; the ones used here:

- ``real_name``, ``host_name``, ``description``, ``owner``, ``moderator``,
  ``subject_prefix``, ``max_message_size`` (KB, 0: no limit),
  ``admin_notify_mchanges``;
- posting: ``generic_nonmember_action`` (0 accept, 1 hold, 2 reject,
  3 discard), ``default_member_moderation`` and ``member_moderation_action``
  (0 hold, 1 reject, 2 discard) with the members' moderation bits;
- bounces: ``bounce_processing``, ``bounce_score_threshold``,
  ``bounce_info_stale_after`` and ``bounce_you_are_disabled_warnings_interval``
  (seconds), ``bounce_you_are_disabled_warnings``,
  ``bounce_notify_owner_on_disable``/``_removal``,
  ``bounce_unrecognized_goes_to_list_owner``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import valid_address
from ..config.loader import format_duration

_NONMEMBER = {1: "hold", 2: "reject", 3: "discard"}
_MODERATE = 128         # Mailman 2.1 Defaults.Moderate user option bit

# membership tables (imported as members, not settings) and Mailman's own counters and caches
_NOT_SETTINGS = {
    "members", "digest_members", "passwords", "usernames", "user_options", "language", "delivery_status",
    "bounce_info", "topics_userinterest", "created_at", "data_version", "last_post_time", "post_id",
    "next_post_number", "next_digest_number", "next_request_id", "digest_last_sent_at", "one_last_digest",
    "volume", "hold_and_cmd_autoresponses", "admin_responses", "postings_responses", "request_responses",
}
_SECRETS = {"password", "mod_password", "post_password"}
_BOOLEANS = {
    "bounce_processing": "bounce_processing",
    "bounce_notify_owner_on_disable": "bounce_notify_owner_on_disable",
    "bounce_notify_owner_on_removal": "bounce_notify_owner_on_removal",
    "bounce_unrecognized_goes_to_list_owner": "bounce_unrecognized_goes_to_list_owner",
}


@dataclass
class ListSettings:
    """``yaml``: the list file's mapping; ``unmapped``: (setting, value shown) for the report;
    ``notes``: what the admin should know about the mapping."""

    yaml: dict[str, Any]
    unmapped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def list_settings(name: str, conf: dict[str, Any], text, moderated_members: int, members: int) -> ListSettings:
    """Map the attribute dict ``conf`` of list ``name`` (its directory name, lower case).

    ``text`` re-decodes a Python 2 byte string in the list's charset;
    ``moderated_members``/``members`` count the members with the moderation bit.
    """
    used: set[str] = set()

    def take(key: str, default: Any = None) -> Any:
        used.add(key)
        return conf.get(key, default)

    domain = text(take("host_name")) or "localhost"
    out: dict[str, Any] = {"name": name, "domain": domain.lower()}
    notes: list[str] = []
    description = text(take("description"))
    real_name = text(take("real_name"))
    if description:
        out["description"] = description
    if real_name and real_name.lower() != name:
        notes.append(f"real_name {real_name!r} is not the list name {name!r}: listgate uses {name!r}")
    for key, target in (("owner", "owners"), ("moderator", "moderators")):
        found, bad = _addresses(take(key), text)
        if found:
            out[target] = found
        for item in bad:
            notes.append(f"{key}: {item!r} is not an address listgate accepts: left out")
    if "owners" not in out:
        out["owners"] = [f"postmaster@{out['domain']}"]
        notes.append(f"no usable owner: owners set to postmaster@{out['domain']}; change it")
    prefix = take("subject_prefix")
    if isinstance(prefix, str):
        out["subject_prefix"] = text(prefix)
        if "%" in prefix:
            notes.append(f"subject_prefix {text(prefix)!r} has a %-sequence (post number): listgate writes it as is")
    size = take("max_message_size")
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        out["max_message_size"] = size * 1024
    elif size == 0:
        notes.append("max_message_size 0 (no limit in Mailman): listgate keeps its default (10 MiB)")
    _posting(conf, take, out, notes, moderated_members, members)
    for key, target in _BOOLEANS.items():
        value = take(key)
        if isinstance(value, (bool, int)):
            out[target] = bool(value)
    changes = take("admin_notify_mchanges")
    if isinstance(changes, (bool, int)):
        out["notify_owner_on_join"] = out["notify_owner_on_leave"] = bool(changes)
    threshold = take("bounce_score_threshold")
    if isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and threshold >= 0:
        out["bounce_score_threshold"] = float(threshold)
    warnings = take("bounce_you_are_disabled_warnings")
    if isinstance(warnings, int) and not isinstance(warnings, bool) and warnings >= 0:
        out["bounce_you_are_disabled_warnings"] = warnings
    for key in ("bounce_info_stale_after", "bounce_you_are_disabled_warnings_interval"):
        value = take(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
            out[key] = format_duration(int(value))
    unmapped = []
    for key in sorted(k for k in conf if isinstance(k, str)):
        if key in used or key in _NOT_SETTINGS or key.startswith("_"):
            continue
        shown = "(secret, not shown)" if key in _SECRETS else _show(conf[key], text)
        unmapped.append((key, shown))
    return ListSettings(out, unmapped, notes)


def _posting(conf, take, out, notes, moderated_members: int, members: int) -> None:
    """posting_policy and non_member_action from Mailman's privacy settings."""
    nonmember = take("generic_nonmember_action", 1)
    member_action = take("member_moderation_action", 0)
    take("default_member_moderation")
    all_moderated = members > 0 and moderated_members == members
    if all_moderated and member_action in (1, 2):
        out["posting_policy"] = "announce"
    elif all_moderated:
        out["posting_policy"] = "moderated"
    elif nonmember == 0:
        out["posting_policy"] = "open"
    else:
        out["posting_policy"] = "members_only"
    if nonmember in _NONMEMBER:
        out["non_member_action"] = _NONMEMBER[nonmember]
    if 0 < moderated_members < members:
        notes.append(f"{moderated_members} of {members} members are moderated in Mailman: the flag is kept "
                     f"on each member; listgate holds their posts on members_only lists (not on open ones)")
    for key in ("accept_these_nonmembers", "hold_these_nonmembers", "reject_these_nonmembers",
                "discard_these_nonmembers"):
        value = conf.get(key)
        if value:
            notes.append(f"{key} is not empty: listgate has no per-sender list; see the unmapped settings")


def _addresses(value: Any, text) -> tuple[list[str], list[str]]:
    found, bad = [], []
    for item in value if isinstance(value, list) else []:
        address = text(item).strip() if isinstance(item, str) else ""
        (found if address and valid_address(address) else bad).append(address or repr(item))
    return found, bad


def _show(value: Any, text, limit: int = 300) -> str:
    shown = text(value) if isinstance(value, str) else repr(value)
    return shown if len(shown) <= limit else shown[:limit] + f"... ({len(shown)} characters)"
