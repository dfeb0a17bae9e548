"""Posts: the posting rule, decoration, loop protection, queueing for fan-out.

The posting rule (:func:`decide`), list config ``posting_policy``,
``non_member_action`` and ``max_message_size``; the one rule for the RCPT
decision (:mod:`listgate.routing`) and for the runner after DATA:

* ``open``: anyone; ``members_only``: members (any delivery status), others
  per ``non_member_action``, a member with the ``moderated`` flag (Mailman's
  per-member moderation) held; ``moderated``: owners and moderators pass,
  members are held, non-members per ``non_member_action``; ``announce``:
  owners and moderators only, everyone else per ``non_member_action``;
* owners and moderators may always post; addresses compare without angle
  brackets and without case (owners are listed as written, members are
  keyed with the domain lower-cased: a mail admin expects ``Jane@Example.COM``
  to be ``jane@example.com``);
* larger than ``max_message_size``: held for the moderators (known after DATA only).

The poster is known by the addresses the caller has: at RCPT only the
envelope sender, after DATA also the ``From`` address. Either may be forged:
a closed list is a spam filter, not an authentication scheme. A poster with
no address (the null sender) is nobody's member.

Decoration works on the raw header section, byte for byte: fields are
removed or added, the ``Subject`` gets the prefix, and the body (8-bit, CRLF,
whatever it is) is never re-encoded. Added: ``List-Id`` (RFC 2919),
``List-Post``, ``List-Help``, ``List-Subscribe``, ``List-Unsubscribe``
(RFC 2369; ``List-Post: NO`` for announce lists, RFC 2369 section 3.4),
``Precedence: list`` and ``X-Listgate-Loop: L@D``. ``List-Unsubscribe`` is the
``mailto:`` form here, the same for every member; when the site has a web
front end (``web.base_url``) the runner replaces it at hand-over, per member,
with the one-click form (:func:`add_unsubscribe_headers`, RFC 8058). A post that already carries
this list's ``X-Listgate-Loop`` or ``List-Id`` has been through the list and
is discarded (loop protection).

Before decoration a post may be changed for DMARC (:mod:`.dmarc`, list
``dmarc_mitigation``); after it, the final bytes are DKIM-signed and
ARC-sealed once (:mod:`.signing`), then split into ``out`` qfiles.
"""
from __future__ import annotations

import email.header
import hashlib
from dataclasses import dataclass
from typing import Callable, Iterable

from .. import metrics, verp
from ..addresses import split_address
from ..log import events
from ..queue import Switchboard, derived_id
from ..store import open_store
from . import attribution, digests, dmarc, mail, moderation, signing
from .notices import address, list_id, list_label

log = events("listgate.app.posting")

LOOP_HEADER = "X-Listgate-Loop"
# A post to at most FANOUT_SINGLE members is one out qfile; a bigger one is split into
# parts of FANOUT_CHUNK deliveries (see queue_post).
FANOUT_SINGLE = 200
FANOUT_CHUNK = 50
# Fields this list sets; copies from elsewhere (another list) are removed first.
_REPLACED = {"list-id", "list-post", "list-help", "list-subscribe", "list-unsubscribe", "list-archive",
             "list-owner", "precedence", "list-unsubscribe-post"}
# What a one-click List-Unsubscribe-Post field says (RFC 8058 section 3.1), and what the POST body is.
ONE_CLICK = "List-Unsubscribe=One-Click"


@dataclass(frozen=True)
class Decision:
    """The posting rule's verdict: ``action`` accept | hold | reject | discard, and why."""

    action: str
    reason: str = ""


ACCEPT = Decision("accept")


def rcpt_refusal_text(lc) -> str:
    """The text of the ``550 5.7.1`` (RFC 3463: delivery not authorized) for a refused poster at RCPT."""
    if lc.posting_policy == "announce":
        return "only the list's owners and moderators may post to this list"
    return "only members may post to this list"


def _bare(sender: str | None) -> str | None:
    """``<Jane@Example.COM>`` -> ``Jane@example.com``: as members are keyed; None for no address."""
    parts = split_address(sender) if sender else None
    return f"{parts[0]}@{parts[1]}" if parts else None


def is_staff(lc, sender: str | None) -> bool:
    """Whether ``sender`` is one of the list's owners or moderators (no brackets, no case)."""
    bare = _bare(sender)
    if bare is None:
        return False
    bare = bare.lower()
    return any(bare == (_bare(a) or "").lower() for a in tuple(lc.owners) + tuple(lc.moderators))


def decide(lc, senders: Iterable[str | None], store: Callable[[], object], *,
           size: int | None = None) -> Decision:
    """The posting rule's verdict for a poster known by ``senders`` (see the module docstring).

    ``senders``: the poster's addresses the caller knows (the envelope sender,
    the ``From`` address; ``""``/``<>``/None entries are nobody). ``store``: a
    function returning the list's store, called only when membership decides
    (an open list or an owner's post never opens it). ``size``: the message's
    size in octets, if known. Raises what the store raises
    (:class:`~listgate.store.StoreUnavailable`): the caller answers 4xx or retries.
    """
    if size is not None and size > lc.max_message_size:
        return Decision("hold", f"message is {size} bytes, the limit is {lc.max_message_size}")
    policy = lc.posting_policy
    if policy == "open":
        return ACCEPT
    known = [b for b in (_bare(s) for s in senders) if b]
    if any(is_staff(lc, b) for b in known):
        return ACCEPT
    if policy != "announce":
        members = store() if known else None
        # a sender with 8-bit junk (not UTF-8) is nobody's member: get_member says None
        found = [m for m in (members.get_member(b) for b in known) if m is not None]
        if any(m.moderated for m in found):    # Mailman's per-member moderation flag
            return Decision("hold", "the member's posts are moderated")
        if found:
            return ACCEPT if policy == "members_only" else Decision("hold", "the list is moderated")
    reason = ("only owners and moderators post to this announce list" if policy == "announce"
              else "the poster is not a member")
    return Decision(lc.non_member_action, reason)


_fields = mail.fields
_name = mail.field_name


def _prefixed_subject(lc, field: bytes | None) -> bytes:
    """The Subject field with the list's prefix, unless it already carries it (``Re: [demo] x`` stays)."""
    prefix = lc.subject_prefix or ""
    if not prefix.strip():
        return field if field is not None else b"Subject: (no subject)"
    raw_prefix = prefix.encode("ascii") if prefix.isascii() else (
        email.header.Header(prefix.strip(), "utf-8").encode() + " ").encode("ascii")
    if field is None:
        return b"Subject: " + raw_prefix + b"(no subject)"
    value = field.split(b":", 1)[1]
    current = mail.header_text(mail.headers(b"Subject:" + value + b"\n\n"), "Subject")
    if prefix.strip().lower() in current.lower():
        return field
    return b"Subject: " + raw_prefix + value.lstrip(b" \t")


def decorate(lc, msg: bytes) -> bytes:
    """``msg`` with this list's headers and subject prefix; the body bytes unchanged."""
    head, eol, body = mail.split(msg)
    fields = [f for f in _fields(head, eol) if _name(f) not in _REPLACED]
    subj = [i for i, f in enumerate(fields) if _name(f) == "subject"]
    if subj:
        fields[subj[0]] = _prefixed_subject(lc, fields[subj[0]])
    else:
        fields.append(_prefixed_subject(lc, None))
    post = "NO" if lc.posting_policy == "announce" else f"<mailto:{address(lc)}>"
    added = [
        ("List-Id", list_id(lc)),
        ("List-Post", post),
        ("List-Help", f"<mailto:{address(lc, 'request')}?subject=help>"),
        ("List-Subscribe", f"<mailto:{address(lc, 'join')}>"),
        ("List-Unsubscribe", unsubscribe_mailto(lc)),
        ("Precedence", "list"),
        (LOOP_HEADER, address(lc)),
    ]
    fields += [f"{n}: {v}".encode("utf-8") for n, v in added]
    return eol.join(fields) + eol + eol + body


def unsubscribe_mailto(lc) -> str:
    """``<mailto:L-leave@D?subject=unsubscribe>``: the RFC 2369 section 3.2 form (RFC 6068 URI)."""
    return f"<mailto:{address(lc, 'leave')}?subject=unsubscribe>"


def per_member_fields(site, lc) -> bool:
    """Whether each member's copy of a post gets fields of its own at hand-over
    (:func:`add_unsubscribe_headers`): the site has ``web.base_url`` and the list sends
    one copy per member (not ``xverp`` batches)."""
    return bool(site.conf.web.base_url) and lc.verp_mode != "xverp"


def unsubscribe_url(site, lc, member: str) -> str | None:
    """``BASE/u/TOKEN`` for ``member`` of ``lc`` (:mod:`listgate.web.tokens`), or None when the
    site has no ``web.base_url``. Raises ValueError for a member that is not an address,
    :class:`listgate.verp.VerpKeyError` when the signing key cannot be read."""
    base = site.conf.web.base_url
    if not base:
        return None
    from ..web import tokens
    if not base.isascii():
        raise ValueError(f"web.base_url {base!r} is not ASCII (write a non-ASCII host name as its A-label)")
    return f"{base.rstrip('/')}/u/{tokens.sign(site, lc, member)}"


def add_unsubscribe_headers(msg: bytes, site, lc, member: str) -> bytes:
    """``msg`` (a decorated post) as it goes to ``member``: with the one-click unsubscribe fields.

    ``List-Unsubscribe: <BASE/u/TOKEN>,<eol> <mailto:L-leave@D?subject=unsubscribe>`` and
    ``List-Unsubscribe-Post: List-Unsubscribe=One-Click`` (RFC 8058 section 3.1: an HTTPS
    URI, and the POST field) replace the ``List-Unsubscribe`` that :func:`decorate` wrote, in
    its place; the rest of the message is unchanged byte for byte. ``msg`` is returned as it
    is when the site has no ``web.base_url``, and (with a warning in the log) when no token
    can be made for ``member`` (a key file unreadable now, not an address): the ``mailto:``
    form stays. Called once per recipient at hand-over (:mod:`listgate.runner.delivery`),
    before anything signs the message (DKIM must cover these fields, RFC 8058 section 4).
    """
    from ..verp import VerpKeyError
    try:
        url = unsubscribe_url(site, lc, member)
    except (ValueError, VerpKeyError) as exc:   # VerpKeyError is a ValueError; named for the reader
        log.warning("no_unsubscribe_link", "no one-click unsubscribe for this delivery", list=address(lc),
                    rcpt=member, error=exc)
        return msg
    if url is None:
        return msg
    head, eol, body = mail.split(msg)
    fields = _fields(head, eol)
    ours = [i for i, f in enumerate(fields) if _name(f) in ("list-unsubscribe", "list-unsubscribe-post")]
    at = ours[0] if ours else len(fields)
    new = [b"List-Unsubscribe: <" + url.encode("ascii") + b">," + eol + b" " + unsubscribe_mailto(lc).encode("utf-8"),
           b"List-Unsubscribe-Post: " + ONE_CLICK.encode("ascii")]
    kept = [f for i, f in enumerate(fields) if i not in ours]
    return eol.join(kept[:at] + new + kept[at:]) + eol + eol + body


def been_here(lc, m) -> bool:
    """True if the message already went through this list (loop protection)."""
    me = address(lc).lower()
    if any(str(v).strip().lower() == me for v in (m.get_all(LOOP_HEADER) or ())):
        return True
    label = list_label(lc).lower()
    return label in mail.header_text(m, "List-Id").lower()


def fanout_meta(site, lc, store, *, message_id: str | None, origin: dict | None = None,
                modes: tuple[str, ...] = ("regular",)) -> dict:
    """Metadata of an ``out`` qfile: one delivery per ``enabled`` member whose delivery mode is
    one of ``modes`` (posts: ``regular``; :mod:`.digests` asks for its digest members), now.

    ``verp_mode: signed``: each member's signed VERP envelope sender;
    ``xverp``: ``L-bounces@D`` and ``xverp: True`` (see :mod:`.delivery`).
    """
    xverp = lc.verp_mode == "xverp"
    plain = address(lc, "bounces")
    if xverp and not lc.accept_unsigned_verp:
        log.warning("xverp_unsigned_refused", "verp_mode xverp without accept_unsigned_verp: bounces to the "
                    "unsigned VERP addresses Postfix makes will be refused at RCPT", list=plain)
    deliveries = [{"rcpt": m.address,
                   "sender": plain if xverp else verp.member_bounce_address(site, lc, m.address, log_plain=True)}
                  for m in store.members("enabled") if m.delivery_mode in modes]
    meta = {k: v for k, v in (origin or {}).items()
            if k in ("envelope_sender", "mta_queue_id", "client_address", "arrival")}
    meta.update(list=address(lc), role="post", kind="post", message_id=message_id,
                deliveries=deliveries, done=[], recipients_count=len(deliveries))
    if xverp:
        meta["xverp"] = True
    return meta


def queue_post(site, lc, msg: bytes, origin: dict | None = None, *, qid: str | None = None) -> str | None:
    """Mitigate (:mod:`.dmarc`), decorate and sign (:mod:`.signing`) ``msg``, put it in ``out`` for
    every enabled member who takes posts one by one and collect it for the digest
    (:mod:`.digests`); returns the first qfile id.

    Up to :data:`FANOUT_SINGLE` deliveries make one ``out`` qfile; more are split
    into qfiles of :data:`FANOUT_CHUNK` (``part``/``parts`` in their metadata):
    the qfile metadata rewritten (fsync'd) after each hand-over stays small, and
    the runner's delivery threads (or several runner slices) share a big post.
    Returns None when no enabled member takes posts one by one.
    """
    store = open_store(site, address(lc))
    m = mail.headers(msg)
    meta = fanout_meta(site, lc, store, message_id=mail.header_text(m, "Message-ID") or None, origin=origin)
    deliveries = meta.pop("deliveries")
    # final bytes, once per post: DMARC mitigation, then decoration (then DKIM/ARC below)
    data = decorate(lc, dmarc.mitigate(site, lc, msg))
    # digest members get it in their digest; a replayed in-qfile (same qid) is collected once
    digests.collect(store, data, qid or "sha256:" + hashlib.sha256(data).hexdigest())
    metrics.inc("posts")
    if not deliveries:
        log.info("post_no_recipients", "post for a list without enabled members taking posts one by one",
                 list=meta["list"])
        return None
    attribution.record_post(store, lc, meta["message_id"])     # what bounces and complaints may quote
    arrival = (origin or {}).get("arrival")
    arrival = arrival if isinstance(arrival, (int, float)) else None
    board = Switchboard.for_site(site, "out")
    # DKIM/ARC over the final bytes, once; but a post whose copies carry each member's own
    # one-click link is signed per copy at hand-over, after that link is in (RFC 8058 section 4)
    if per_member_fields(site, lc) and signing.enabled(site, lc):
        meta["sign_each"] = signing.intake_results(site, msg) if site.conf.arc.seal else ""
    else:
        data = signing.sign(site, lc, data, original=msg)
    size = len(deliveries) if len(deliveries) <= FANOUT_SINGLE else FANOUT_CHUNK
    parts = [deliveries[i:i + size] for i in range(0, len(deliveries), size)]
    first = None
    for n, part in enumerate(parts):
        # A part's id derives from the in-qfile's (the first part keeps it): a replay of the
        # in-qfile after a crash between two enqueues finds the parts already written, waiting
        # or being delivered, and leaves them alone instead of queueing copies. (A part fully
        # delivered and finished before the crash would be written again: that needs all its
        # deliveries to finish between its enqueue and the in-qfile's, a window of milliseconds.)
        part_id = derived_id(qid, n) if qid is not None else None
        if part_id is not None and board.peek(part_id) is not None:
            first = first or part_id
            continue
        part_id = board.enqueue(data, {**meta, "deliveries": part, "part": n + 1, "parts": len(parts)},
                                qid=part_id, arrival=arrival)
        first = first or part_id
    return first


def handle_post(site, lc, qf) -> str:
    """Process one post from ``in``: returns what was done (``queued``, ``held``, ``rejected``,
    ``discarded``, ``loop``). The caller finishes ``qf`` afterwards."""
    m = mail.headers(qf.msg)
    if been_here(lc, m):
        log.info("post_loop", "loop: post already went through the list", list=address(lc), qfile=qf.id)
        return "loop"
    envelope_sender = qf.meta.get("envelope_sender")
    writer = mail.author(m)
    store = open_store(site, address(lc))
    decision = decide(lc, ((writer[1] if writer else None), envelope_sender), lambda: store, size=len(qf.msg))
    if decision.action == "accept":
        queue_post(site, lc, qf.msg, qf.meta, qid=qf.id)
        return "queued"
    if decision.action == "hold":
        moderation.hold(site, lc, store, qf.msg, m, qf.meta, decision.reason)
        return "held"
    if decision.action == "reject":
        moderation.reject_notice(site, lc, writer[1] if writer else envelope_sender, mail.header_text(m, "Subject"),
                                 decision.reason, mail.auto_generated(m, envelope_sender) is None)
        log.info("post_rejected", list=address(lc), qfile=qf.id, reason=decision.reason)
        return "rejected"
    log.info("post_discarded", list=address(lc), qfile=qf.id, reason=decision.reason)
    return "discarded"
