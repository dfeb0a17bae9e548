"""The list address scheme: which list and role an address is, and back.

Per list ``L`` at domain ``D`` (DESIGN.md, "Address scheme"):

=========================  ==========
``L@D``                    post
``L-request@D``            request (email commands)
``L-join@D``               join
``L-leave@D``              leave
``L-confirm+TOKEN@D``      confirm
``L-owner@D``              owner
``L-bounces@D``            bounces (``+EXT`` carries a signed VERP or a probe token)
=========================  ==========

The extension delimiter is ``+`` (Postfix ``recipient_delimiter = +``). List
names are compared case-insensitively; the extension keeps its case (tokens
are case-sensitive base32/base64url).

This module is the only place that knows these suffixes, the form of a list
key (:func:`list_key`) and how angle brackets come off an address (:func:`bare`).
"""
from __future__ import annotations

from dataclasses import dataclass

DELIMITER = "+"

ROLE_SUFFIXES = {
    "request": "-request",
    "join": "-join",
    "leave": "-leave",
    "confirm": "-confirm",
    "owner": "-owner",
    "bounces": "-bounces",
}
ROLES = ("post",) + tuple(ROLE_SUFFIXES)
# Roles whose mail is addressed to the list machinery rather than to members.
COMMAND_ROLES = ("request", "join", "leave", "confirm")
# Roles that take a +extension; for the others an extension makes the address unknown.
EXTENSION_ROLES = ("confirm", "bounces")


@dataclass(frozen=True)
class ListAddress:
    """A parsed list address.

    ``list_key`` is ``"name@domain"`` in lower case; ``role`` one of
    :data:`ROLES`; ``extension`` the text after ``+`` (or ``None``).
    """

    name: str
    domain: str
    role: str
    extension: str | None = None

    @property
    def list_key(self) -> str:
        return list_key(self)


def list_key(lst) -> str:
    """``"name@domain"``: the key of a list (its store, its qfiles, ``Site.lists``).

    ``lst`` is anything with the list's ``name`` and ``domain``: a list
    configuration or a :class:`ListAddress`.
    """
    return f"{lst.name}@{lst.domain}"


def bare(address: str) -> str:
    """``" <a@b> "`` → ``"a@b"``; ``"<>"`` → ``""`` (the null sender, RFC 5321 section 4.5.5).

    Takes off surrounding space and one pair of enclosing angle brackets (the
    ``Path`` of RFC 5321 section 4.1.2), nothing else.
    """
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1].strip()
    return address


def split_address(address: str) -> tuple[str, str] | None:
    """``"<Local@Dom.ain>"`` → ``("Local", "dom.ain")``; None if not an address.

    The domain is lower-cased (RFC 5321 section 2.4: domains are
    case-insensitive); the local part is kept as written.
    """
    address = bare(address)
    if address.count("@") < 1:
        return None
    local, _, domain = address.rpartition("@")
    if not local or not domain:
        return None
    return local, domain.lower().rstrip(".")


class AddressTable:
    """Every address of a set of lists, ready for lookups: the scheme's one parser.

    ``known_lists`` is a container of ``"name@domain"`` keys (lower case),
    e.g. ``Site.lists``. A lookup is one dict access; a loaded
    :class:`~listgate.config.Site` builds its table once
    (``Site.address_table``), which is what the RCPT paths use.
    """

    __slots__ = ("_entries",)

    def __init__(self, known_lists):
        # "base@domain" (no +extension) -> [post ListAddress or None, (name, domain, role) or None]
        # No suffix ends with another, so an address has at most one role reading.
        self._entries: dict[str, list] = {}
        for key in known_lists:
            name, _, domain = key.rpartition("@")
            self._entries.setdefault(key, [None, None])[0] = ListAddress(name, domain, "post")
            for role, suffix in ROLE_SUFFIXES.items():
                self._entries.setdefault(f"{name}{suffix}@{domain}", [None, None])[1] = (
                    ListAddress(name, domain, role))

    def lookup(self, local: str, domain: str) -> ListAddress | None:
        """The list address ``local@domain`` is (``domain`` already lower case), or None."""
        base, plus, ext = local.partition(DELIMITER)
        entry = self._entries.get(f"{base.lower()}@{domain}")
        if entry is None:
            return None
        post, role_address = entry
        if post is not None and not plus:
            return post
        if role_address is None:
            return None
        role = role_address.role
        if plus and role not in EXTENSION_ROLES:
            return None          # an extension on a role that takes none: unknown
        if role == "confirm" and not ext:
            return None          # L-confirm needs its token
        return ListAddress(role_address.name, role_address.domain, role, ext) if ext else role_address


def parse(address: str, known_lists) -> ListAddress | None:
    """Which list and role ``address`` is, or None if it is not a list address.

    ``known_lists`` is a container of ``"name@domain"`` keys (lower case), e.g.
    ``Site.lists``. An address in a managed domain that matches no list and
    role returns None; the caller decides that it is unknown (``550 5.1.1``).
    Builds the lists' table on each call: for many lookups against one Site,
    use ``site.address_table.lookup``.
    """
    parts = split_address(address)
    if parts is None:
        return None
    return AddressTable(known_lists).lookup(*parts)


def make(name: str, domain: str, role: str = "post", extension: str | None = None) -> str:
    """Build the address for ``role`` of list ``name@domain`` (inverse of :func:`parse`).

    Raises ValueError for an unknown role or an extension on a role that takes none.
    """
    if role == "post":
        local = name
    elif role in ROLE_SUFFIXES:
        local = name + ROLE_SUFFIXES[role]
    else:
        raise ValueError(f"unknown role {role!r}")
    if extension is not None:
        if role not in EXTENSION_ROLES:
            raise ValueError(f"role {role!r} takes no extension")
        local = f"{local}{DELIMITER}{extension}"
    return f"{local}@{domain}"


def normalize(address: str) -> str:
    """Canonical member key: local part as written, domain lower-cased, no brackets.

    Two addresses that differ only in the domain's case are the same member.
    Raises ValueError if ``address`` has no ``@``, or holds 8-bit bytes that
    are not UTF-8 (surrogate escapes, as the MTA hands over raw non-SMTPUTF8
    junk): such a sender is nobody's member key, and the store holds UTF-8 text.
    """
    parts = split_address(address)
    if parts is None:
        raise ValueError(f"not an address: {address!r}")
    key = f"{parts[0]}@{parts[1]}"
    if not key.isascii():
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"not an address (bytes that are not UTF-8): {address!r}") from None
    return key


def match_key(address: str, case_sensitive: bool = False) -> str:
    """The key two spellings of one member share under a list's rule: :func:`normalize`, and
    the local part lower-cased too unless ``case_sensitive``.

    Domains are case-insensitive (RFC 5321 section 2.4). Local parts are
    case-sensitive by that same section, but people type them in any case
    and MTAs fold them (VERP addresses come back lower-cased), so a list
    matches them without case, as Mailman does (``str.lower``, as its
    lower-cased member keys); a list's ``case_sensitive_local_parts`` keeps
    them apart. Raises ValueError as :func:`normalize` does.
    """
    key = normalize(address)
    if case_sensitive:
        return key
    local, _, domain = key.rpartition("@")
    return f"{local.lower()}@{domain}"
