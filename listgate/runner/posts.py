"""Posts: posting policy, moderation holds, decoration, loop protection, queueing for fan-out.

Policy (list config ``posting_policy``, ``non_member_action``, ``max_message_size``):

* ``open``: anyone; ``members_only``: members (any delivery status), others
  per ``non_member_action``; ``moderated``: owners and moderators pass,
  members are held, non-members per ``non_member_action``; ``announce``:
  owners and moderators only, everyone else per ``non_member_action``;
* larger than ``max_message_size``: held for the moderators.

The poster is the ``From`` address or the envelope sender (either may be
forged: a closed list is a spam filter, not an authentication scheme).

Decoration works on the raw header section, byte for byte: fields are
removed or added, the ``Subject`` gets the prefix, and the body (8-bit, CRLF,
whatever it is) is never re-encoded. Added: ``List-Id`` (RFC 2919),
``List-Post``, ``List-Help``, ``List-Subscribe``, ``List-Unsubscribe``
(RFC 2369; ``List-Post: NO`` for announce lists, RFC 2369 section 3.4),
``Precedence: list`` and ``X-Listgate-Loop: L@D``. A post that already carries
this list's ``X-Listgate-Loop`` or ``List-Id`` has been through the list and
is discarded (loop protection).
"""
from __future__ import annotations

import base64
import email.header
import logging
from dataclasses import dataclass

from .. import verp
from ..log import kv
from ..queue import Switchboard
from ..store import open_store
from . import mail, replies, texts

log = logging.getLogger("listgate.runner.posts")

LOOP_HEADER = "X-Listgate-Loop"
# A post to at most FANOUT_SINGLE members is one out qfile; a bigger one is split into
# parts of FANOUT_CHUNK deliveries (see queue_post).
FANOUT_SINGLE = 200
FANOUT_CHUNK = 50
# Fields this list sets; copies from elsewhere (another list) are removed first.
_REPLACED = {"list-id", "list-post", "list-help", "list-subscribe", "list-unsubscribe", "list-archive",
             "list-owner", "precedence"}


@dataclass(frozen=True)
class Decision:
    action: str          # accept | hold | reject | discard
    reason: str = ""


def list_id(lc) -> str:
    """``"description" <name.domain>`` (RFC 2919 section 2: the list-label is dot-atom text)."""
    label = f"<{lc.name}.{lc.domain}>"
    desc = " ".join(str(lc.description or "").replace('"', "").replace("\\", "").split())
    if not desc:
        return label
    if not desc.isascii():
        return f"{email.header.Header(desc, 'utf-8').encode()} {label}"
    return f'"{desc}" {label}'


def _fields(head: bytes, eol: bytes) -> list[bytes]:
    """Header fields with their continuation lines (RFC 5322 section 2.2.3), each without its last eol."""
    out: list[bytes] = []
    for line in head.split(b"\n"):
        line = line.rstrip(b"\r")
        if out and line[:1] in (b" ", b"\t"):
            out[-1] += eol + line
        else:
            out.append(line)
    return [f for f in out if f]


def _name(field: bytes) -> str:
    return field.split(b":", 1)[0].strip().decode("ascii", "replace").lower()


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
    post = "NO" if lc.posting_policy == "announce" else f"<mailto:{replies.address(lc)}>"
    added = [
        ("List-Id", list_id(lc)),
        ("List-Post", post),
        ("List-Help", f"<mailto:{replies.address(lc, 'request')}?subject=help>"),
        ("List-Subscribe", f"<mailto:{replies.address(lc, 'join')}>"),
        ("List-Unsubscribe", f"<mailto:{replies.address(lc, 'leave')}>"),
        ("Precedence", "list"),
        (LOOP_HEADER, replies.address(lc)),
    ]
    fields += [f"{n}: {v}".encode("utf-8") for n, v in added]
    return eol.join(fields) + eol + eol + body


def been_here(lc, m) -> bool:
    """True if the message already went through this list (loop protection)."""
    me = replies.address(lc).lower()
    if any(str(v).strip().lower() == me for v in (m.get_all(LOOP_HEADER) or ())):
        return True
    label = f"<{lc.name}.{lc.domain}>"
    return label in mail.header_text(m, "List-Id").lower()


def _is(addr: str | None, group) -> bool:
    return bool(addr) and addr.lower() in {a.lower() for a in group}


def decide(lc, store, msg: bytes, m, envelope_sender: str | None) -> Decision:
    """The posting policy's verdict for one post (see the module docstring)."""
    writer = mail.author(m)
    candidates = [a for a in ((writer[1] if writer else None), envelope_sender) if a]
    privileged = any(_is(a, tuple(lc.owners) + tuple(lc.moderators)) for a in candidates)
    if len(msg) > lc.max_message_size:
        return Decision("hold", f"message is {len(msg)} bytes, the limit is {lc.max_message_size}")
    policy = lc.posting_policy
    if policy == "open" or privileged:
        return Decision("accept")
    member = any(_member(store, a) for a in candidates)
    if policy == "members_only" and member:
        return Decision("accept")
    if policy == "moderated" and member:
        return Decision("hold", "the list is moderated")
    reason = ("only owners and moderators post to this announce list" if policy == "announce"
              else "the poster is not a member")
    return Decision(lc.non_member_action, reason)


def _member(store, address: str) -> bool:
    try:
        return store.get_member(address) is not None
    except ValueError:
        return False


def fanout_meta(site, lc, store, *, message_id: str | None, origin: dict | None = None) -> dict:
    """Metadata of an ``out`` qfile: one delivery per ``enabled`` member, now.

    ``verp_mode: signed``: each member's signed VERP envelope sender;
    ``xverp``: ``L-bounces@D`` and ``xverp: True`` (see :mod:`.delivery`).
    """
    xverp = lc.verp_mode == "xverp"
    plain = replies.address(lc, "bounces")
    if xverp and not lc.accept_unsigned_verp:
        log.warning("verp_mode xverp without accept_unsigned_verp: bounces to the unsigned VERP "
                    "addresses Postfix makes will be refused at RCPT %s", kv(list=plain))
    deliveries = [{"rcpt": m.address,
                   "sender": plain if xverp else verp.member_bounce_address(site, lc, m.address)}
                  for m in store.members("enabled")]
    meta = {k: v for k, v in (origin or {}).items()
            if k in ("envelope_sender", "mta_queue_id", "client_address", "arrival")}
    meta.update(list=replies.address(lc), role="post", kind="post", message_id=message_id,
                deliveries=deliveries, done=[], recipients_count=len(deliveries))
    if xverp:
        meta["xverp"] = True
    return meta


def queue_post(site, lc, msg: bytes, origin: dict | None = None, *, qid: str | None = None) -> str | None:
    """Decorate ``msg`` and put it in ``out`` for every enabled member; returns the first qfile id.

    Up to :data:`FANOUT_SINGLE` deliveries make one ``out`` qfile; more are split
    into qfiles of :data:`FANOUT_CHUNK` (``part``/``parts`` in their metadata):
    the qfile metadata rewritten (fsync'd) after each hand-over stays small, and
    the runner's delivery threads (or several runner slices) share a big post.
    Returns None when the list has no enabled member.
    """
    store = open_store(site, replies.address(lc))
    m = mail.headers(msg)
    meta = fanout_meta(site, lc, store, message_id=mail.header_text(m, "Message-ID") or None, origin=origin)
    deliveries = meta.pop("deliveries")
    if not deliveries:
        log.info("post for a list without enabled members %s", kv(list=meta["list"]))
        return None
    arrival = (origin or {}).get("arrival")
    arrival = arrival if isinstance(arrival, (int, float)) else None
    board = Switchboard.for_site(site, "out")
    data = decorate(lc, msg)
    size = len(deliveries) if len(deliveries) <= FANOUT_SINGLE else FANOUT_CHUNK
    parts = [deliveries[i:i + size] for i in range(0, len(deliveries), size)]
    first = None
    for n, part in enumerate(parts):
        # The first part keeps the in-qfile's id (a replay after a crash rewrites it, not a
        # copy); the window between the first and the last enqueue is not covered.
        part_id = board.enqueue(data, {**meta, "deliveries": part, "part": n + 1, "parts": len(parts)},
                                qid=qid if n == 0 else None, arrival=arrival)
        first = first or part_id
    return first


def hold(site, lc, store, msg: bytes, m, meta: dict, reason: str) -> str:
    """Make a ``held_message`` pending record and notify the moderators; returns the token."""
    writer = mail.author(m)
    payload = {
        "message": base64.b64encode(msg).decode("ascii"),
        "author": writer[1] if writer else None,
        "envelope_sender": meta.get("envelope_sender"),
        "subject": mail.header_text(m, "Subject"),
        "message_id": mail.header_text(m, "Message-ID") or None,
        "reason": reason,
        "reply_ok": mail.auto_generated(m, meta.get("envelope_sender")) is None,
        "arrival": meta.get("arrival"),
    }
    rec = store.add_pending("held_message", payload, site.conf.pending.held_message)
    confirm = replies.confirm_address(lc, rec.token)
    body = texts.HELD.format(list=replies.address(lc), author=payload["author"] or "(unknown)",
                             subject=payload["subject"] or "(no subject)", reason=reason, confirm=confirm,
                             token=rec.token)
    replies.to_owners(site, lc, f"confirm {rec.token}", body, samples=[msg], kind="held_notice",
                      moderators=True, reply_to=confirm)
    log.info("post held %s", kv(list=replies.address(lc), token=rec.token, reason=repr(reason)))
    return rec.token


def reject_notice(site, lc, to: str | None, subject: str, reason: str, reply_ok: bool) -> None:
    """Tell the author why their post was refused, unless answering could loop (RFC 3834)."""
    if not to or not reply_ok:
        return
    body = texts.REJECTED.format(list=replies.address(lc), subject=subject or "(no subject)", reason=reason)
    replies.send(site, lc, to, f"Your message to {replies.address(lc)} was rejected", body, kind="reject")


def handle_post(site, lc, qf) -> str:
    """Process one post from ``in``: returns what was done (``queued``, ``held``, ``rejected``,
    ``discarded``, ``loop``). The caller finishes ``qf`` afterwards."""
    store = open_store(site, replies.address(lc))
    m = mail.headers(qf.msg)
    if been_here(lc, m):
        log.info("loop: post already went through the list %s", kv(list=replies.address(lc), qfile=qf.id))
        return "loop"
    envelope_sender = qf.meta.get("envelope_sender")
    decision = decide(lc, store, qf.msg, m, envelope_sender)
    if decision.action == "accept":
        queue_post(site, lc, qf.msg, qf.meta, qid=qf.id)
        return "queued"
    if decision.action == "hold":
        hold(site, lc, store, qf.msg, m, qf.meta, decision.reason)
        return "held"
    if decision.action == "reject":
        writer = mail.author(m)
        reject_notice(site, lc, writer[1] if writer else envelope_sender, mail.header_text(m, "Subject"),
                      decision.reason, mail.auto_generated(m, envelope_sender) is None)
        log.info("post rejected %s", kv(list=replies.address(lc), qfile=qf.id, reason=repr(decision.reason)))
        return "rejected"
    log.info("post discarded %s", kv(list=replies.address(lc), qfile=qf.id, reason=repr(decision.reason)))
    return "discarded"


def moderate(site, lc, token: str, action: str, reason: str = "") -> str:
    """Act on a held post: ``approve`` (fan out now), ``reject`` (notice to the author) or ``discard``.

    Returns a line for the moderator. Raises :class:`listgate.store.UnknownToken`
    for an unknown or expired token, ValueError for an unknown action.
    """
    if action not in ("approve", "reject", "discard"):
        raise ValueError(f"unknown moderation action {action!r}")
    store = open_store(site, replies.address(lc))
    # The record goes only if the follow-up mail was queued: a failure leaves the post held.
    with store.transaction():
        rec = store.confirm_pending(token, "held_message")
        p = rec.payload
        msg = base64.b64decode(p.get("message", ""))
        if action == "approve":
            qid = queue_post(site, lc, msg, {"envelope_sender": p.get("envelope_sender"),
                                             "arrival": p.get("arrival")})
            result = f"approved: {p.get('subject') or '(no subject)'} (qfile {qid})"
        elif action == "reject":
            reject_notice(site, lc, p.get("author") or p.get("envelope_sender"), p.get("subject", ""),
                          reason or "rejected by a moderator", bool(p.get("reply_ok")))
            result = f"rejected: {p.get('subject') or '(no subject)'}"
        else:
            result = f"discarded: {p.get('subject') or '(no subject)'}"
    log.info("held post %s %s", action, kv(list=replies.address(lc), token=token))
    return result


