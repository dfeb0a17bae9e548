"""The address scheme's one parser (addresses.AddressTable) against the rule as written in DESIGN.md."""
from __future__ import annotations

import itertools

from listgate.addresses import ROLE_SUFFIXES, ListAddress, make, normalize, parse, split_address

D = "lists.example.org"


def reference(address: str, known) -> ListAddress | None:
    """The scheme stated plainly (slow): L@D posts; L-SUFFIX@D is a role of L;
    only confirm and bounces take +EXT, and confirm needs it."""
    parts = split_address(address)
    if parts is None:
        return None
    local, domain = parts
    base, plus, ext = local.partition("+")
    lower = base.lower()
    if not plus and f"{lower}@{domain}" in known:
        return ListAddress(lower, domain, "post")
    for role, suffix in ROLE_SUFFIXES.items():
        if lower.endswith(suffix) and f"{lower[:-len(suffix)]}@{domain}" in known:
            if plus and role not in ("confirm", "bounces"):
                return None
            if role == "confirm" and not ext:
                return None
            return ListAddress(lower[:-len(suffix)], domain, role, ext or None)
    return None


def test_table_lookup_equals_the_rule_over_many_addresses():
    # includes lists named like a suffix of another list (the config refuses them; the parser must not care)
    known = {f"demo@{D}", f"a-b@{D}", f"news@example.net", f"demo-owner@{D}", f"x-bounces@{D}"}
    bases = ["demo", "DEMO", "a-b", "a", "news", "x", "x-bounces", "postmaster", "nolist", ""]
    suffixes = ["", "-request", "-join", "-leave", "-confirm", "-owner", "-OWNER", "-bounces", "-admin",
                "-owner-bounces", "-bounces-owner"]
    exts = ["", "+", "+x", "+" + "a" * 26, "+a+b", "+m=example.com.k1.abcdefgh"]
    domains = [D, D.upper(), "example.net", "example.org"]
    found = 0
    for base, suffix, ext, domain in itertools.product(bases, suffixes, exts, domains):
        address = f"{base}{suffix}{ext}@{domain}"
        got = parse(address, known)
        assert got == reference(address, known), address
        found += got is not None
    assert found > 100


def test_make_is_the_inverse_of_parse():
    known = {f"demo@{D}"}
    for role in ("post",) + tuple(ROLE_SUFFIXES):
        ext = "abcdefghijklmnopqrstuvwxyz" if role in ("confirm", "bounces") else None
        assert parse(make("demo", D, role, ext), known) == ListAddress("demo", D, role, ext)


def test_normalize_folds_only_the_domain():
    assert normalize("<Bob.Smith@Example.ORG>") == "Bob.Smith@example.org"
