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
                                   # timestamp, store (a section that may also be the word "sqlite"),
                                   # hostport (HOST:PORT)
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

# The web front end (``listgate web``): one-click unsubscribe (RFC 8058), served only when
# ``base_url`` is set; ``listgate serve`` runs it then.
WEB = Section({
    "base_url": Field("str", None, doc="public URL of the web front end behind the site's HTTPS reverse proxy, "
                      "e.g. https://lists.example.org/listgate; posts then carry one-click List-Unsubscribe "
                      "links BASE/u/TOKEN (RFC 8058 wants https). None: no web front end, posts carry the "
                      "mailto: form only (RFC 2369)"),
    "listen": Field("socket", "inet:8025@127.0.0.1", doc="where listgate web listens for the reverse proxy: "
                    "inet:PORT@HOST or unix:PATH (relative to state_dir)"),
    "socket_mode": Field("str", "0660", doc="octal mode of a unix socket (the reverse proxy connects)"),
})

REINJECT = Section({
    "host": Field("str", "127.0.0.1"),
    "port": Field("int", 10026, minimum=1),
    "timeout": Field("duration", 60),
    "helo": Field("str", "localhost"),
    "max_session_age": Field("duration", 300, minimum=1,
                             doc="reconnect once a session is this old (postfix reload reaches the listener)"),
    "max_session_messages": Field("int", 1000, minimum=1, doc="reconnect after this many transactions"),
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
    "max_age": Field("duration", 14 * DAY, minimum=DAY, doc="how long a dated member VERP address (and a post's "
                     "ENVID) stays valid; older ones are refused at RCPT like forged ones (more than the MTA's "
                     "maximal_queue_lifetime)"),
    "accept_undated_until": Field("timestamp", None, doc="until this date (YYYY-MM-DD, UTC), also accept the "
                                  "undated VERP addresses signed before dated ones existed (set it to the upgrade "
                                  "day plus max_age); null: refuse them"),
})

COMMANDS = Section({
    "max_replies_per_address": Field("int", 3, minimum=0, doc="confirmation requests and command replies one "
                                     "address gets from one list per replies_window (0: no limit)"),
    "max_replies_per_list": Field("int", 200, minimum=0, doc="confirmation requests and command replies one list "
                                  "sends per replies_window, to anyone (0: no limit)"),
    "replies_window": Field("duration", DAY, minimum=60),
})

# The one DNS resolver (listgate.dns): subscriptions, bounces, DMARC, DKIM verification at intake.
DNS = Section({
    "check_domains": Field("bool", True, doc="refuse subscriptions to domains that take no mail (null MX, "
                           "NXDOMAIN, no MX and no address); probe at once a member whose hard bounce "
                           "comes from a null MX or NXDOMAIN domain"),
    "nameservers": Field("strings", (), doc="IP addresses of recursive resolvers; empty: those of /etc/resolv.conf"),
    "port": Field("int", 53, minimum=1, maximum=65535),
    "timeout": Field("duration", 3, doc="wait for one server's answer"),
    "attempts": Field("int", 2, minimum=1, doc="rounds over the servers before the answer is unknown"),
})

DKIM_KEY = Section({
    "selector": Field("str", required=True, doc="the DKIM selector (s=): the key is published at SELECTOR._domainkey.DOMAIN"),
    "domain": Field("domain", None, doc="the list domain this key signs for; none: every list domain"),
    "file": Field("path", required=True, doc="PEM private key (RSA, at least 1024 bits; mode 0600)"),
    "retired": Field("bool", False, doc="no longer signs (keep its DNS record until mail signed with it is read)"),
})

DKIM = Section({
    "sign": Field("bool", False, doc="DKIM-sign every outgoing list message (lists may say otherwise: dkim_sign)"),
    "keys": Field("keys", (), section=DKIM_KEY, doc="signing keys; per domain, the first non-retired key signs"),
})

ARC = Section({
    "seal": Field("bool", False, doc="ARC-seal posts (RFC 8617) with the results listgate observed at intake"),
    "authserv_id": Field("str", None, doc="authserv-id of our Authentication-Results (RFC 8601); default: hostname"),
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

# The Prometheus endpoint (listgate.metrics), off unless ``listen`` is set.
METRICS = Section({
    "listen": Field("hostport", None, doc="HOST:PORT where `listgate serve` (its metrics child) answers "
                    "Prometheus scrapes at /metrics, e.g. 127.0.0.1:9310; none: no metrics (needs the "
                    "[metrics] extra, prometheus_client)"),
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
    "templates_dir": Field("path", None, doc="overrides of notice texts for every list (NAME.txt, LANG/NAME.txt; "
                           "listgate notices list); default: templates beside the site file"),
    "hostname": Field("domain", "localhost"),
    "postmaster": Field("address", None, doc="who gets reports about the site's own mail that reach a list "
                        "(TLS and DMARC reports, non-complaint feedback reports, TLS/MTA-STS/DANE failures of "
                        "our MTA); default postmaster@HOSTNAME"),
    "milter": Field("section", section=MILTER),
    "policy": Field("section", section=POLICY),
    "lmtp": Field("section", section=LMTP),
    "web": Field("section", section=WEB),
    "reinject": Field("section", section=REINJECT),
    "verp": Field("section", section=VERP),
    "dns": Field("section", section=DNS),
    "dkim": Field("section", section=DKIM),
    "arc": Field("section", section=ARC),
    "pending": Field("section", section=PENDING),
    "runner": Field("section", section=RUNNER),
    "commands": Field("section", section=COMMANDS),
    "store": Field("store", section=STORE, doc="sqlite, or a mapping (url: postgresql://... for PostgreSQL)"),
    "trusted_networks": Field("networks", ("127.0.0.0/8", "::1/128")),
    "logging": Field("section", section=LOGGING),
    "metrics": Field("section", section=METRICS),
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
    "language": Field("str", None, doc="language tag (de, pt-BR) of the list's notices: LANG/NAME.txt "
                      "templates are used first; none: the plain NAME.txt ones"),
    "templates_dir": Field("path", None, doc="overrides of notice texts for this list, searched before the "
                           "site's (relative to this file); default: NAME.templates beside this file"),
    "owners": Field("addresses", required=True),
    "moderators": Field("addresses", ()),
    "posting_policy": Field("enum", "members_only", choices=("open", "members_only", "moderated", "announce")),
    "non_member_action": Field("enum", "hold", choices=("hold", "reject", "discard")),
    "max_message_size": Field("size", 10 * 1024 * 1024),
    "subject_prefix": Field("str", None, doc="default: '[NAME] '"),
    "dmarc_mitigation": Field("enum", "none", choices=("none", "munge_from", "wrap_message"),
                              doc="what to do with a post From: a domain whose DMARC policy is in "
                                  "dmarc_mitigate_policies (Mailman's dmarc_mitigate_action)"),
    "dmarc_mitigate_policies": Field("strings", ("reject", "quarantine"),
                                     doc="DMARC policies (p=, or sp= at the organizational domain) that call for "
                                         "dmarc_mitigation: reject, quarantine, none"),
    "dmarc_mitigate_addresses": Field("strings", (), doc="posters always mitigated: an address, or a regular "
                                      "expression starting with ^ (Mailman's dmarc_addresses)"),
    "dmarc_poster_in": Field("enum", "reply_to", choices=("reply_to", "cc"),
                             doc="where a mitigated post names its author (RFC 5322 section 3.6.2, 3.6.3)"),
    "dmarc_wrapped_message_text": Field("str", "", doc="text/plain part before the wrapped post (wrap_message)"),
    "dkim_sign": Field("bool", None, doc="DKIM-sign this list's mail; none: as the site's dkim.sign says"),
    "verp_mode": Field("enum", "signed", choices=("signed", "xverp")),
    "accept_unsigned_verp": Field("bool", False, doc="Mailman-style L-bounces+local=domain@D (migration window)"),
    "case_sensitive_local_parts": Field("bool", False, doc="members differing only in the case of their local "
                                        "part are two members (default: one, as Mailman; domains never differ by case)"),
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
