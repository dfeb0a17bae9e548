"""The configuration schema: every key, its type and its default, in one place.

A schema is a :class:`Section` (a mapping with fixed keys); each key is a
:class:`Field` whose ``kind`` names a checker in :mod:`listgate.config.loader`.
Defaults are immutable values here and are copied into each loaded config;
nothing else in listgate holds a default.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class Field:
    kind: str                      # str, int, float, bool, duration, size, address, addresses,
                                   # listname, domain, enum, strings, socket, networks, path, section, keys,
                                   # timestamp, store (a section that may also be the word "sqlite")
    default: Any = None
    required: bool = False
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    section: "Section | None" = None
    doc: str = ""
    deprecated: bool = False       # accepted so old site files load, ignored; not in the reference


@dataclass(frozen=True)
class Section:
    fields: Mapping[str, Field] = field(default_factory=dict)


# Durations are seconds once loaded; sizes are bytes.
DAY = 86400

LOGGING = Section({
    "destination": Field("enum", "stderr", choices=("stderr", "syslog")),
    "level": Field("enum", "info", choices=("debug", "info", "warning", "error")),
    "syslog_socket": Field("path", "/dev/log"),
})

MILTER = Section({
    "socket": Field("socket", "unix:milter.sock", doc="unix:PATH (relative to state_dir) or inet:PORT@HOST"),
    "socket_mode": Field("str", "0660", doc="octal mode of a unix socket"),
    "timeout": Field("duration", 600),
    "duplicate_window": Field("duration", 2 * DAY, doc="how long the runner remembers a list+role+sender+Message-ID "
                              "to drop a retried SMTP transaction's second copy"),
    # deprecated: accepted so an old site file still loads, ignored; `listgate check` and the
    # milter warn while it is set (None: absent)
    "preallocate_qfiles": Field("int", None, minimum=0, deprecated=True,
                                doc="deprecated and ignored (qfiles are no longer written in advance): delete it"),
})

POLICY = Section({
    "socket": Field("socket", "inet:10040@127.0.0.1", doc="unix:PATH or inet:PORT@HOST"),
    "socket_mode": Field("str", "0666"),
    "idle_timeout": Field("duration", 300),
    "max_line": Field("int", 8192, minimum=256, doc="longest attribute line accepted (bytes)"),
})

# The LMTP front end (``listgate lmtp``, RFC 2033): served only when ``socket`` is set.
LMTP = Section({
    "socket": Field("socket", None, doc="unix:PATH (relative to state_dir) or inet:PORT@HOST; none: no LMTP server "
                    "(the milter takes list mail)"),
    "socket_mode": Field("str", "0660", doc="octal mode of a unix socket (the MTA's delivery agent connects)"),
    "max_message_size": Field("size", 64 * 1024 * 1024, minimum=0, doc="largest message accepted (announced as "
                              "SIZE, RFC 1870; larger ones get 552 5.3.4); 0: no limit"),
    "timeout": Field("duration", 300, doc="close a connection idle for this long"),
})

REINJECT = Section({
    "host": Field("str", "127.0.0.1"),
    "port": Field("int", 10026, minimum=1),
    "timeout": Field("duration", 60),
    "helo": Field("str", "localhost"),
})

VERP_KEY = Section({
    "id": Field("str", required=True, doc="short key id carried in signed VERP addresses"),
    "file": Field("path", required=True, doc="file holding the secret (mode 0600)"),
    "retired": Field("bool", False, doc="still verifies, never signs"),
    "retired_at": Field("timestamp", None, doc="when the key was retired (YYYY-MM-DD or ISO 8601 UTC); "
                        "a retired key verifies until retired_at + verp.retired_verify_window, "
                        "without retired_at for as long as it is listed"),
})

VERP = Section({
    "keys": Field("keys", (), doc="signing keys; the first non-retired key signs"),
    "mac_length": Field("int", 8, minimum=6, doc="base32 characters of MAC in a VERP address"),
    "retired_verify_window": Field("duration", 30 * DAY, doc="how long a retired key (with retired_at) still verifies"),
})

PENDING = Section({
    "user_confirmation": Field("duration", 3 * DAY),
    "probe": Field("duration", 10 * DAY),
    "held_message": Field("duration", 14 * DAY),
})

STORE_POOL = Section({
    "min": Field("int", 1, minimum=0, doc="connections each process keeps open to PostgreSQL"),
    "max": Field("int", 8, minimum=1, maximum=1000, doc="most connections each process opens (busy: callers wait "
                 "up to connect_timeout, then answer 4xx)"),
})

# ``store: sqlite`` (the default: one SQLite file per list under STATE_DIR/lists) or a mapping;
# a mapping with ``url`` puts every list in one shared PostgreSQL database.
STORE = Section({
    "busy_timeout": Field("duration", 10, doc="how long a writer waits for a list store's lock before answering 4xx"),
    "url": Field("str", None, doc="postgresql://USER@HOST[:PORT]/DB[?sslmode=verify-full...]: the shared "
                 "PostgreSQL store (none: SQLite files); a password goes in password_file, not here"),
    "password_file": Field("path", None, doc="file holding the database password (read at each connect; "
                           "relative to the site file)"),
    "pool": Field("section", section=STORE_POOL),
    "connect_timeout": Field("duration", 5, doc="longest wait for a PostgreSQL connection before answering 4xx"),
    "statement_timeout": Field("duration", 10, doc="longest PostgreSQL statement before answering 4xx"),
})

RUNNER = Section({
    "poll_interval": Field("duration", 1),
    "max_attempts": Field("int", 3, minimum=1, doc="tries before a qfile goes to bad"),
    "retry_backoff": Field("duration", 300),
    "retry_giveup": Field("duration", 5 * DAY),
    "tasks_interval": Field("duration", 3600, doc="how often periodic tasks run"),
})

SITE = Section({
    "state_dir": Field("path", required=True),
    "queue_dir": Field("path", None, doc="default STATE_DIR/queue"),
    "lists_dir": Field("path", None, doc="default: lists.d beside the site file"),
    "hostname": Field("domain", "localhost"),
    "postmaster": Field("address", None, doc="who gets reports about the site's own mail that reach a list "
                        "(TLS and DMARC reports, non-complaint feedback reports, TLS/MTA-STS/DANE failures of "
                        "our MTA); default postmaster@HOSTNAME"),
    "milter": Field("section", section=MILTER),
    "policy": Field("section", section=POLICY),
    "lmtp": Field("section", section=LMTP),
    "reinject": Field("section", section=REINJECT),
    "verp": Field("section", section=VERP),
    "pending": Field("section", section=PENDING),
    "runner": Field("section", section=RUNNER),
    "store": Field("store", section=STORE, doc="sqlite, or a mapping (url: postgresql://... for PostgreSQL)"),
    "trusted_networks": Field("networks", ("127.0.0.0/8", "::1/128")),
    "logging": Field("section", section=LOGGING),
})

DOMAIN_INCIDENT = Section({
    "members": Field("int", 3, minimum=2, doc="distinct members at one domain failing alike"),
    "window": Field("duration", 3600),
})

SITE_INCIDENT = Section({
    "share": Field("float", 0.2, minimum=0.0, maximum=1.0,
                   doc="share of the enabled members failing with one status and text"),
    "domains": Field("int", 3, minimum=2, doc="... across at least this many domains"),
    "window": Field("duration", DAY, doc="... within this time (one post's failures, or a day's)"),
    "retry": Field("duration", 3600, doc="while paused, one delivery is let through this often; "
                   "an incident seen from bounces clears when none came back this long after it"),
})

LIST = Section({
    "name": Field("listname", required=True),
    "domain": Field("domain", required=True),
    "description": Field("str", ""),
    "owners": Field("addresses", required=True),
    "moderators": Field("addresses", ()),
    "posting_policy": Field("enum", "members_only", choices=("open", "members_only", "moderated", "announce")),
    "non_member_action": Field("enum", "hold", choices=("hold", "reject", "discard")),
    "max_message_size": Field("size", 10 * 1024 * 1024),
    "subject_prefix": Field("str", None, doc="default: '[NAME] '"),
    "verp_mode": Field("enum", "signed", choices=("signed", "xverp")),
    "accept_unsigned_verp": Field("bool", False, doc="Mailman-style L-bounces+local=domain@D (migration window)"),
    "notify_owner_on_join": Field("bool", True),
    "notify_owner_on_leave": Field("bool", True),
    "bounce_processing": Field("bool", True),
    "bounce_score_threshold": Field("float", 5.0, minimum=0.0),
    "bounce_info_stale_after": Field("duration", 7 * DAY),
    "bounce_you_are_disabled_warnings": Field("int", 3, minimum=0),
    "bounce_you_are_disabled_warnings_interval": Field("duration", 7 * DAY),
    "bounce_notify_owner_on_disable": Field("bool", True),
    "bounce_notify_owner_on_removal": Field("bool", True),
    "bounce_notify_owner_on_bounce_increment": Field("bool", False, doc="a notice to the owners, with the "
                                                     "bounce attached, on each scored bounce (Mailman 3)"),
    "bounce_unrecognized_goes_to_list_owner": Field("bool", True),
    "bounce_weights": Field("section", section=Section({
        "hard": Field("float", 1.0, minimum=0.0),
        "soft": Field("float", 0.5, minimum=0.0),
        "policy": Field("float", 0.0, minimum=0.0),
        "complaint": Field("float", 0.0, minimum=0.0),
        "unknown": Field("float", 0.0, minimum=0.0),
    })),
    "complaint_action": Field("enum", "record", choices=("record", "disable", "unsubscribe")),
    "bounce_domain_incident": Field("section", section=DOMAIN_INCIDENT),
    "bounce_site_incident": Field("section", section=SITE_INCIDENT),
    "digest_size_threshold": Field("size", 30 * 1024, doc="a digest goes out once its collected posts are this big"),
    "digest_period": Field("duration", DAY, doc="... or this long after the last digest (Mailman: daily)"),
})
