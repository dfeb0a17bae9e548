"""DKIM signature (RFC 6376) and ARC seal (RFC 8617) of a post after decoration (dkimpy).

A post is signed once, when it is final: after DMARC mitigation and
decoration, before it is split into ``out`` qfiles for fan-out
(:func:`listgate.app.posting.queue_post`), so every member gets the same
signed bytes and signing costs one RSA operation per post, not per member.
The runner's delivery only changes line ends to CRLF, which the signature was
made over.

Keys (site ``dkim.keys``): PEM private keys in files, each with its
``selector`` and the list ``domain`` it signs for (none: every list domain).
For a list domain the first key that is not ``retired`` signs (``d=`` the list
domain, ``s=`` the selector). To rotate: publish the new key's record
(``SELECTOR._domainkey.DOMAIN``), put the key first, mark the old one retired,
and remove the old record a few days later (mail in queues is still verified
against it). Signing is on when the list's ``dkim_sign`` says so, or it is
unset and the site's ``dkim.sign`` is true. A list domain without a key, or an
unreadable key file, raises :class:`DkimKeyError`: the post waits in ``shunt``
rather than leaving unsigned (``listgate check`` says the same beforehand).

ARC (site ``arc.seal``): before decoration the runner checks the post's own
DKIM signatures and ARC chain (dkimpy, through the site's resolver) and
writes what it found as ``Authentication-Results`` with our authserv-id
(``arc.authserv_id``, default the site's hostname; RFC 8601). Such fields
arriving from outside with our authserv-id are forged and removed first
(RFC 8601 section 5). The ARC set (``ARC-Authentication-Results``,
``ARC-Message-Signature``, ``ARC-Seal``) is made with the list domain's DKIM
key over the decorated post, so a receiver that trusts us can honour the
original authentication although decoration broke the author's signature.
"""
from __future__ import annotations

import re

import dkim
from dkim.crypto import UnparsableKeyError, parse_pem_private_key

from ..log import events
from . import mail
from .notices import address

log = events("listgate.app.signing")

_EOL = re.compile(rb"\r?\n")
# Signed header fields; From twice: an added second From breaks the signature (RFC 6376 section 8.15).
# Absent ones are signed as absent, so nobody can add them later.
SIGNED = ("from", "from", "reply-to", "sender", "to", "cc", "subject", "date", "message-id", "in-reply-to",
          "references", "mime-version", "content-type", "content-transfer-encoding", "list-id", "list-post",
          "list-help", "list-subscribe", "list-unsubscribe", "list-unsubscribe-post", "list-archive",
          "list-owner", "precedence")


class DkimKeyError(Exception):
    """A DKIM key file is unreadable or not a PEM private key, or a list domain has no signing key."""


class Keyring:
    """The DKIM keys of one configuration (``dkim`` section), read once (``Site.dkim_keys``)."""

    def __init__(self, dkim_conf):
        self.keys = []
        for k in dkim_conf.keys:
            try:
                with open(k.file, "rb") as fh:
                    pem = fh.read()
                parse_pem_private_key(pem)
            except (OSError, UnparsableKeyError, ValueError) as exc:
                raise DkimKeyError(f"DKIM key {k.selector}: {k.file}: not a readable PEM private key ({exc})") from None
            self.keys.append((k, pem))

    def signer(self, domain: str) -> tuple[str, bytes]:
        """``(selector, pem)`` of the key signing for list domain ``domain``; DkimKeyError if none."""
        domain = domain.lower()
        for k, pem in self.keys:
            if not k.retired and (k.domain is None or k.domain.lower() == domain):
                return k.selector, pem
        raise DkimKeyError(f"no DKIM key signs for {domain} (dkim.keys)")


def check_keys(site) -> list[str]:
    """Problems with ``site``'s DKIM keys (unreadable, a signing list domain without a key); empty when fine."""
    try:
        ring = site.dkim_keys
    except DkimKeyError as exc:
        return [str(exc)]
    problems = []
    for lc in site.iter_lists():
        if enabled(site, lc):
            try:
                ring.signer(lc.domain)
            except DkimKeyError as exc:
                problems.append(f"list {address(lc)}: {exc}")
    return problems


def enabled(site, lc) -> bool:
    """Whether ``lc``'s mail is DKIM-signed: its ``dkim_sign``, else the site's ``dkim.sign``."""
    return bool(site.conf.dkim.sign if lc.dkim_sign is None else lc.dkim_sign)


def authserv_id(site) -> str:
    return site.conf.arc.authserv_id or site.conf.hostname


def intake_results(site, original: bytes) -> str:
    """The ``Authentication-Results`` value (RFC 8601) for ``original`` as it reached the list: its DKIM
    signatures and its ARC chain, checked with the site's resolver. Never raises for bad input."""
    dnsfunc = site.resolver.dkim_txt
    m = mail.headers(original)
    results = []
    sigs = m.get_all("DKIM-Signature") or []
    if sigs:
        try:
            ok = dkim.verify(original, dnsfunc=dnsfunc)
        except Exception:  # noqa: BLE001 - dkimpy raises assorted errors on malformed signatures
            ok = False
        d = re.search(r"\bd\s*=\s*([^;\s]+)", str(sigs[0]))
        results.append(f"dkim={'pass' if ok else 'fail'}" + (f" header.d={d.group(1)}" if d else ""))
    else:
        results.append("dkim=none")
    if m.get_all("ARC-Seal"):
        try:
            cv = dkim.arc_verify(original, dnsfunc=dnsfunc)[0].decode("ascii", "replace")
        except Exception:  # noqa: BLE001
            cv = "fail"
        results.append(f"arc={cv}")
    else:
        results.append("arc=none")
    return f"{authserv_id(site)}; " + "; ".join(results)


def _ours(field: bytes, server: str) -> bool:
    value = field.split(b":", 1)[1].strip().decode("utf-8", "replace")
    return re.split(r"[;\s]", value, maxsplit=1)[0].lower() == server.lower()


def _with_results(site, msg: bytes, results: str) -> bytes:
    """``msg`` (CRLF) without Authentication-Results claiming our authserv-id, with ``results`` on top."""
    head, eol, body = mail.split(msg)
    server = authserv_id(site)
    kept = [f for f in mail.fields(head, eol)
            if not (mail.field_name(f) == "authentication-results" and _ours(f, server))]
    top = f"Authentication-Results: {results}".encode("utf-8")
    return eol.join([top] + kept) + eol + eol + body


def sign(site, lc, msg: bytes, *, original: bytes | None = None, results: str | None = None) -> bytes:
    """``msg`` (the decorated post) with CRLF line ends, ARC-sealed when ``arc.seal`` (with
    :func:`intake_results` of ``original``, or ``results`` already taken from it) and
    DKIM-signed, as the list says (module docstring).

    Returns ``msg`` unchanged when the list does not sign. Raises :class:`DkimKeyError`.
    """
    if not enabled(site, lc):
        return msg
    selector, pem = site.dkim_keys.signer(lc.domain)
    wire = _EOL.sub(b"\r\n", msg)
    domain = lc.domain.encode("ascii")
    if results is None and original is not None and site.conf.arc.seal:
        results = intake_results(site, original)
    if site.conf.arc.seal and results is not None:
        wire = _with_results(site, wire, results)
        arc_set = dkim.arc_sign(wire, selector.encode(), domain, pem, authserv_id(site).encode())
        wire = b"".join(arc_set) + wire
    sig = dkim.sign(wire, selector.encode(), domain, pem, canonicalize=(b"relaxed", b"relaxed"),
                    include_headers=[h.encode() for h in SIGNED])
    log.debug("signed", list=address(lc), selector=selector)
    return sig + wire
