"""DMARC mitigation of posts (list config ``dmarc_mitigation``; Mailman's ``dmarc_mitigate_action``).

A post keeps its author's ``From`` but is re-sent by the list, decorated:
the author's DKIM signature breaks and it leaves from our hosts, so receivers
that enforce the author domain's DMARC policy refuse or junk it. When the
author's domain publishes a policy listed in ``dmarc_mitigate_policies``
(``reject``, ``quarantine`` by default; ``none`` may be added), or the author
matches ``dmarc_mitigate_addresses``, the post is changed before decoration:

* ``munge_from``: ``From`` becomes the list address with the author's name,
  ``"Name via LIST" <L@D>``; the author goes into ``Reply-To`` or ``Cc``
  (``dmarc_poster_in``, RFC 5322 sections 3.6.2 and 3.6.3), so replies still
  reach them. The body is not touched.
* ``wrap_message``: a new message from the list (same ``From`` as above,
  ``Subject``, ``To``, ``Cc``, ``Date``, ``Message-ID``, ``In-Reply-To``,
  ``References`` of the post) carrying an optional text/plain part
  (``dmarc_wrapped_message_text``) and the post unchanged as a
  ``message/rfc822`` part (RFC 2046 section 5.2.1).

Policy discovery (RFC 7489 section 6.6.3): the TXT records at
``_dmarc.FROM-DOMAIN`` starting with ``v=DMARC1``; when there is none, those
at ``_dmarc.ORGANIZATIONAL-DOMAIN`` (the Public Suffix List's registrable
domain, from the ``publicsuffixlist`` package and its bundled list), where
``sp=`` applies to subdomains. More than one record, or a record without a
valid ``p=``, is no policy (section 6.6.3 steps 3 and 6). When the DNS gives
no answer the post is mitigated: a changed From costs less than a post
refused by every receiver that enforces DMARC.
"""
from __future__ import annotations

import email.utils
import functools
import re
import secrets
from dataclasses import dataclass

from ..dns import NXDOMAIN, NODATA, OK, UNKNOWN
from ..log import events
from . import mail
from .notices import address

log = events("listgate.app.dmarc")

POLICIES = ("none", "quarantine", "reject")
# Header fields of the post the wrapper message keeps (Mailman keeps the same ones).
_WRAPPER_KEEPS = ("subject", "to", "cc", "date", "message-id", "in-reply-to", "references")
# Fields of the post that a munged or wrapped post no longer carries as they were.
_AUTHOR_FIELDS = ("from", "reply-to", "cc", "sender")


@dataclass(frozen=True)
class Policy:
    """A DMARC policy lookup: ``policy`` reject | quarantine | none, None (no policy) or ``unknown``
    (no DNS answer); ``domain`` where the record was found; ``detail`` for the log."""

    policy: str | None
    domain: str = ""
    detail: str = ""


@functools.cache
def _psl():
    from publicsuffixlist import PublicSuffixList
    return PublicSuffixList()


def organizational_domain(domain: str) -> str:
    """The registrable domain of ``domain`` by the Public Suffix List (RFC 7489 section 3.2); ``domain``
    itself when it is a public suffix."""
    domain = domain.lower().rstrip(".")
    return _psl().privatesuffix(domain) or domain


def _tags(record: str) -> dict[str, str]:
    tags = {}
    for part in record.split(";"):
        if "=" in part:
            k, v = part.split("=", 1)
            tags.setdefault(k.strip().lower(), v.strip())
    return tags


def _record(resolver, domain: str) -> tuple[str, str | None]:
    """``(status, record)`` of ``_dmarc.DOMAIN``: status ok (one record), none, unknown."""
    ans = resolver.txt(f"_dmarc.{domain}")
    if ans.status == UNKNOWN:
        return "unknown", ans.error
    if ans.status in (NXDOMAIN, NODATA):
        return "none", None
    records = [r for r in ans.records if re.match(r"v\s*=\s*DMARC1\s*(;|$)", r)]
    if len(records) != 1:
        return "none", f"{len(records)} DMARC records" if records else None
    return OK, records[0]


def lookup_policy(resolver, domain: str) -> Policy:
    """The DMARC policy for mail From: ``domain`` (module docstring); never raises."""
    domain = domain.lower().rstrip(".")
    status, record = _record(resolver, domain)
    found_at, tag = domain, "p"
    if status == "none":
        org = organizational_domain(domain)
        if org != domain:
            status, record = _record(resolver, org)
            found_at, tag = org, "sp"
    if status == "unknown":
        return Policy("unknown", domain, record or "")
    if status != OK:
        return Policy(None, domain, record or "no DMARC record")
    tags = _tags(record)
    p = tags.get("p", "").lower()
    if p not in POLICIES:
        return Policy(None, found_at, f"malformed DMARC record {record!r}")
    if tag == "sp" and tags.get("sp", "").lower() in POLICIES:
        p = tags["sp"].lower()
    return Policy(p, found_at, record)


def _matches(lc, author: str) -> str | None:
    author = author.lower()
    for pattern in lc.dmarc_mitigate_addresses:
        if pattern.startswith("^"):
            try:
                if re.search(pattern, author, re.I):
                    return pattern
            except re.error:
                log.warning("dmarc_bad_pattern", "bad pattern in dmarc_mitigate_addresses", list=address(lc),
                            pattern=pattern)
        elif pattern.lower() == author:
            return pattern
    return None


def reason(site, lc, author: str | None) -> str | None:
    """Why a post by ``author`` must be mitigated on ``lc``, or None (also when the list mitigates nothing)."""
    if lc.dmarc_mitigation == "none" or not author or "@" not in author:
        return None
    hit = _matches(lc, author)
    if hit:
        return f"the poster matches {hit!r} in dmarc_mitigate_addresses"
    pol = lookup_policy(site.resolver, author.rsplit("@", 1)[1])
    if pol.policy == "unknown":
        return f"the DMARC policy of {pol.domain} could not be looked up ({pol.detail})"
    if pol.policy in lc.dmarc_mitigate_policies:
        return f"{pol.domain} publishes DMARC p={pol.policy}"
    return None


def _via(lc, display: str, author: str) -> str:
    """``"Name via LIST" <L@D>`` as a header value, RFC 2047-encoded when needed."""
    return email.utils.formataddr((f"{display or author} via {lc.name}", address(lc)), charset="utf-8")


def _field(name: str, value: str) -> bytes:
    return f"{name}: {value}".encode("utf-8")


def _author_fields(lc, fields: list[bytes], display: str, author: str) -> list[bytes]:
    """The new From and the field that names the author (``dmarc_poster_in``), merged with what was there."""
    kept = [f for f in fields if mail.field_name(f) == ("reply-to" if lc.dmarc_poster_in == "reply_to" else "cc")]
    target = "Reply-To" if lc.dmarc_poster_in == "reply_to" else "Cc"
    poster = email.utils.formataddr((display, author), charset="utf-8")
    if kept:
        old = kept[0].split(b":", 1)[1].strip()
        if author.lower().encode("utf-8", "replace") not in old.lower():
            return [_field("From", _via(lc, display, author)), f"{target}: ".encode() + old + b", " + poster.encode()]
        return [_field("From", _via(lc, display, author)), f"{target}: ".encode() + old]
    return [_field("From", _via(lc, display, author)), _field(target, poster)]


def munge_from(lc, msg: bytes, display: str, author: str) -> bytes:
    """``msg`` From: the list with the author's name; the author in Reply-To or Cc; body unchanged."""
    head, eol, body = mail.split(msg)
    fields = mail.fields(head, eol)
    replaced = ("from", "reply-to") if lc.dmarc_poster_in == "reply_to" else ("from", "cc")
    out = [f for f in fields if mail.field_name(f) not in replaced]
    return eol.join(out + _author_fields(lc, fields, display, author)) + eol + eol + body


def wrap_message(lc, msg: bytes, display: str, author: str) -> bytes:
    """A message from the list carrying ``msg`` unchanged as a message/rfc822 part (module docstring)."""
    head, eol, body = mail.split(msg)
    fields = mail.fields(head, eol)
    keep = [f for f in fields if mail.field_name(f) in _WRAPPER_KEEPS
            and not (mail.field_name(f) == "cc" and lc.dmarc_poster_in == "cc")]
    boundary = "=_listgate_" + secrets.token_hex(12)
    while boundary.encode() in msg:
        boundary = "=_listgate_" + secrets.token_hex(12)
    cte = b"7bit" if msg.isascii() else b"8bit"
    out = keep + _author_fields(lc, fields, display, author) + [
        b"MIME-Version: 1.0", f'Content-Type: multipart/mixed; boundary="{boundary}"'.encode()]
    parts = [b"This is a message in MIME format: the post is attached."]
    text = lc.dmarc_wrapped_message_text
    if text:
        parts.append(eol.join([b"--" + boundary.encode(), b"Content-Type: text/plain; charset=utf-8",
                               b"Content-Transfer-Encoding: 8bit", b"", text.encode("utf-8")]))
    parts.append(eol.join([b"--" + boundary.encode(), b"Content-Type: message/rfc822",
                           b"Content-Transfer-Encoding: " + cte, b"Content-Disposition: inline", b""]) + eol + msg)
    parts.append(b"--" + boundary.encode() + b"--" + eol)
    return eol.join(out) + eol + eol + eol.join(parts)


def mitigate(site, lc, msg: bytes) -> bytes:
    """``msg`` as the list's ``dmarc_mitigation`` wants it for this author (module docstring); unchanged
    when no mitigation is due. Looks up DNS (the runner calls this, never a front end)."""
    writer = mail.author(mail.headers(msg))
    if writer is None:
        return msg
    why = reason(site, lc, writer[1])
    if why is None:
        return msg
    log.info("dmarc_mitigation", list=address(lc), action=lc.dmarc_mitigation, author=writer[1], reason=why)
    if lc.dmarc_mitigation == "munge_from":
        return munge_from(lc, msg, writer[0], writer[1])
    return wrap_message(lc, msg, writer[0], writer[1])
