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

This module is the only place that knows these suffixes.
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
        return f"{self.name}@{self.domain}"


def split_address(address: str) -> tuple[str, str] | None:
    """``"<Local@Dom.ain>"`` → ``("Local", "dom.ain")``; None if not an address.

    The domain is lower-cased (RFC 5321 section 2.4: domains are
    case-insensitive); the local part is kept as written.
    """
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1].strip()
    if address.count("@") < 1:
        return None
    local, _, domain = address.rpartition("@")
    if not local or not domain:
        return None
    return local, domain.lower().rstrip(".")


def parse(address: str, known_lists) -> ListAddress | None:
    """Which list and role ``address`` is, or None if it is not a list address.

    ``known_lists`` is a container of ``"name@domain"`` keys (lower case), e.g.
    ``Site.lists``. An address in a managed domain that matches no list and
    role returns None; the caller decides that it is unknown (``550 5.1.1``).
    """
    parts = split_address(address)
    if parts is None:
        return None
    local, domain = parts
    base, plus, ext = local.partition(DELIMITER)
    ext = ext if plus else None
    lower = base.lower()
    if ext is None and f"{lower}@{domain}" in known_lists:
        return ListAddress(lower, domain, "post")
    for role, suffix in ROLE_SUFFIXES.items():
        if lower.endswith(suffix):
            name = lower[: -len(suffix)]
            if f"{name}@{domain}" in known_lists:
                if ext is not None and role not in EXTENSION_ROLES:
                    return None
                if role == "confirm" and not ext:
                    return None
                return ListAddress(name, domain, role, ext or None)
    return None


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
    Raises ValueError if ``address`` has no ``@``.
    """
    parts = split_address(address)
    if parts is None:
        raise ValueError(f"not an address: {address!r}")
    return f"{parts[0]}@{parts[1]}"
