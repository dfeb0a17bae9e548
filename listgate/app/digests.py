"""Digests: posts collected and sent as one message, MIME (RFC 2046) or plain text (RFC 1153).

A member's ``delivery_mode`` (:data:`listgate.store.DELIVERY_MODES`) says how
they take posts: ``regular`` one by one (:func:`listgate.app.posting.queue_post`
leaves digest members out of the fan-out), ``mime_digest`` or ``plain_digest``.
Members switch with ``digest on|mime|plain|off`` to ``L-request``
(:mod:`listgate.app.commands`) or ``listgate members set LIST ADDRESS --digest
mime|plain|off``; :func:`set_mode` is the one place that changes it.

Collecting: every accepted post (decorated as the regular members get it) is
kept in the list's store (:meth:`ListStore.collect_digest`) while an enabled
member takes digests, keyed by its ``in`` qfile id, so an ``in`` qfile replayed
after a crash is collected once.

Sending (:func:`run`, from the runner's periodic tasks): a digest is due when
the collected posts reach the list's ``digest_size_threshold`` (octets) or
``digest_period`` (seconds) has passed since the last digest (since the oldest
post before the first). Numbering as Mailman 2.1 with
``digest_volume_frequency`` yearly: issues count up within a volume, and the
first digest of a new (UTC) year starts the next volume at issue 1.

Durability: a crash while building or sending neither loses a collected post
nor sends one twice. The store and the queue cannot commit together, so the
sending runs in four steps, each one repeatable, and the ``out`` qfile
becomes visible to a runner only after the store recorded the issue sent:

1. claim (one store transaction): the posts not yet in a digest go into the
   issue, numbered now, under a claim that is the ``out`` qfile id of the MIME
   digest (the plain one's id is derived from it, :func:`qfile_ids`);
2. stage: for each format not staged yet, build it from the claimed posts and
   write it durably as ``out/ID.staged`` (:meth:`Switchboard.enqueue` with
   ``staged=True``: no runner takes it), one delivery per digest member with
   the member's signed VERP envelope sender (the fan-out rule of
   :func:`listgate.app.posting.fanout_meta`, so digest bounces score like
   post bounces);
3. sent (one store transaction): the claimed posts go, the claim is sent;
4. release: each ``ID.staged`` becomes ``ID.qf`` (one rename).

A crash before 3 leaves the claim not sent: the next run stages what is
missing (same numbers, same posts, what was staged is kept) and goes on. A
crash after 3 leaves staged files: the next run releases the last claim's
before anything else (a rename of a file that is no longer there does
nothing). Posts collected meanwhile wait for the next issue.
"""
from __future__ import annotations

import email
import email.charset
import email.utils
from datetime import datetime, timezone
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import compat32

from .. import clock
from ..addresses import list_key
from ..log import events
from ..queue import Switchboard, new_id
from ..store import DigestPost, DigestState, Member, NotAMember, open_store
from . import mail, posting
from .notices import address

log = events("listgate.app.digests")

# the words of the ``digest`` command and of ``listgate members set --digest``
MODE_WORDS = {"on": "mime_digest", "mime": "mime_digest", "plain": "plain_digest", "off": "regular",
              "regular": "regular"}
FORMATS = (("mime", "mime_digest"), ("plain", "plain_digest"))
# RFC 1153 section 3: 70 hyphens end the preamble, 30 hyphens end each message
RULE70, RULE30 = "-" * 70, "-" * 30
# RFC 1153 section 3: the header fields a plain digest keeps, in this order
PLAIN_FIELDS = ("Date", "From", "Subject", "To", "Cc", "Message-ID", "Keywords", "Summary")
# quoted-printable UTF-8: readable as it is, unlike compat32's default base64
_UTF8 = email.charset.Charset("utf-8")
_UTF8.body_encoding = email.charset.QP


def takes_digest(member: Member) -> bool:
    return member.delivery_mode != "regular"


def set_mode(store, address_: str, mode: str) -> Member:
    """Set member ``address_``'s delivery mode to ``mode`` (one of ``DELIVERY_MODES``, or a word
    of :data:`MODE_WORDS`); returns the member. Raises NotAMember, ValueError for an unknown mode."""
    mode = MODE_WORDS.get(mode, mode)
    with store.transaction():
        member = store.get_member(address_)
        if member is None:
            raise NotAMember(f"{address_} is not a member of {store.list_key}")
        member.delivery_mode = mode
        store.save_member(member)       # ValueError for a mode that is not one of DELIVERY_MODES
    return member


def collect(store, message: bytes, key: str) -> bool:
    """Keep post ``message`` (as decorated for the list) for the next digest, while an enabled
    member takes digests; True if it was collected now (False: nobody takes digests, or the
    post with ``key`` is collected already). Raises StoreUnavailable."""
    if not any(takes_digest(m) for m in store.members("enabled")):
        return False
    return store.collect_digest(key, message, clock.now())


def next_numbers(state: DigestState, now: float) -> tuple[int, int]:
    """(volume, issue) of the next digest: a new volume each UTC year (Mailman's yearly frequency)."""
    if state.volume == 0:
        return 1, 1
    if state.last_sent is not None and _year(state.last_sent) != _year(now):
        return state.volume + 1, 1
    return state.volume, state.issue + 1


def _year(ts: float) -> int:
    return datetime.fromtimestamp(ts, tz=timezone.utc).year


def due(lc, state: DigestState, posts: list[DigestPost], now: float) -> str | None:
    """Why a digest of ``posts`` is due now (``size`` / ``period``), or None."""
    if not posts:
        return None
    if sum(len(p.message) for p in posts) >= lc.digest_size_threshold:
        return "size"
    since = state.last_sent if state.last_sent is not None else posts[0].at
    if now - since >= lc.digest_period:
        return "period"
    return None


def qfile_ids(claim: str) -> dict[str, str]:
    """The ``out`` qfile ids of an issue's MIME and plain digests: the claim, and the claim with
    its random part's last bit flipped (same arrival and writer, so a valid, distinct id)."""
    head, _, rand = claim.rpartition("-")
    return {"mime": claim, "plain": f"{head}-{int(rand, 16) ^ 1:08x}"}


def run(site, lc) -> list[str]:
    """Send the list's digest if one is due, after finishing an issue a crash interrupted.

    Returns one line per digest issue sent. Raises StoreUnavailable / QueueError
    (what was done stays done: the next run goes on from there).
    """
    store = open_store(site, list_key(lc))
    board = Switchboard.for_site(site, "out")
    state = store.digest_state()
    done = []
    if state.claim is not None and not state.sent:
        done.append(_send(site, lc, store, board, state, "resumed"))
    elif state.claim is not None:
        _release(board, state.claim)
    now = clock.now()
    state = store.digest_state()
    why = due(lc, state, store.digest_posts(), now)
    if why is None:
        return done
    volume, issue = next_numbers(state, now)
    if store.claim_digest(new_id(now), volume, issue, now):
        done.append(_send(site, lc, store, board, store.digest_state(), why))
    return done


def _send(site, lc, store, board, state: DigestState, why: str) -> str:
    """Steps 2 to 4 of the module docstring for the claim of ``state`` (not sent yet)."""
    posts = store.digest_posts(state.claim)
    ids = qfile_ids(state.claim)
    staged = []
    for fmt, mode in FORMATS:
        if board.is_staged(ids[fmt]):
            staged.append(f"{fmt} staged before")
            continue
        meta = posting.fanout_meta(site, lc, store, message_id=_message_id(lc, state, fmt), modes=(mode,))
        if not meta["deliveries"]:
            continue
        msg = (mime_digest if fmt == "mime" else plain_digest)(lc, state, posts)
        meta.update(kind="digest", digest={"format": fmt, "volume": state.volume, "issue": state.issue,
                                           "posts": len(posts)}, part=1, parts=1)
        board.enqueue(posting.decorate(lc, msg), meta, qid=ids[fmt], arrival=state.claimed_at, staged=True)
        staged.append(f"{fmt} to {len(meta['deliveries'])}")
    store.digest_sent(state.claim)
    _release(board, state.claim)
    line = (f"digest vol {state.volume} issue {state.issue}: {len(posts)} post(s) ({why}); "
            + (", ".join(staged) or "no digest member"))
    log.info("digest_sent", list=address(lc), volume=state.volume, issue=state.issue, posts=len(posts), why=why,
             formats=", ".join(staged))
    return line


def _release(board, claim: str) -> None:
    for qid in qfile_ids(claim).values():
        board.release_staged(qid)


# -- the two formats --------------------------------------------------------------------

def _title(lc, state: DigestState) -> str:
    return f"{lc.name} Digest, Vol {state.volume}, Issue {state.issue}"


def _message_id(lc, state: DigestState, fmt: str) -> str:
    """The same Message-ID for an issue built again after a crash."""
    return f"<digest.{fmt}.{state.claim}@{lc.domain}>"


def _envelope(msg, lc, state: DigestState, fmt: str) -> None:
    msg["From"] = address(lc, "request")
    msg["To"] = address(lc)
    msg["Subject"] = _title(lc, state)
    msg["Date"] = email.utils.formatdate(state.claimed_at, usegmt=True)
    msg["Message-ID"] = _message_id(lc, state, fmt)


def _topics(lc, posts: list[DigestPost]) -> list[str]:
    """The table of contents: ``N. subject (author)`` with the list's subject prefix taken off."""
    prefix = (lc.subject_prefix or "").strip()
    lines = []
    for n, post in enumerate(posts, 1):
        head = mail.headers(post.message)
        subject = mail.header_text(head, "Subject") or "(no subject)"
        if prefix and subject.startswith(prefix):
            subject = subject[len(prefix):].strip() or "(no subject)"
        writer = mail.author(head)
        who = (writer[0] or writer[1]) if writer else "unknown"
        lines.append(f"{n:4d}. {subject} ({who})")
    return lines


def _masthead(lc, state: DigestState, posts: list[DigestPost]) -> str:
    return (f"Send {address(lc)} submissions to\n\t{address(lc)}\n\n"
            f"To stop receiving the digest (and get posts one by one), send \"digest off\" to\n"
            f"\t{address(lc, 'request')}\n"
            f"(\"digest plain\" or \"digest mime\" chooses its format). You can reach the person\n"
            f"managing the list at\n\t{address(lc, 'owner')}\n\n"
            f"When replying, please edit your Subject line so it is more specific\n"
            f"than \"Re: Contents of {_title(lc, state)}\".\n\n"
            "Today's Topics:\n\n" + "\n".join(_topics(lc, posts)) + "\n")


def mime_digest(lc, state: DigestState, posts: list[DigestPost]) -> bytes:
    """The MIME digest: multipart/mixed of the masthead and table of contents (text/plain) and a
    multipart/digest (RFC 2046 section 5.1.5) of one message/rfc822 part per post, as collected."""
    outer = MIMEMultipart("mixed")
    _envelope(outer, lc, state, "mime")
    outer.attach(MIMEText(_masthead(lc, state, posts), "plain", _UTF8))
    inner = MIMEMultipart("digest")
    for post in posts:
        inner.attach(MIMEMessage(email.message_from_bytes(post.message, policy=compat32)))
    outer.attach(inner)
    return outer.as_bytes(policy=compat32.clone(linesep="\n"))


def _stuffed(text: str) -> str:
    """``text`` with every line of 30 or more hyphens stuffed with ``- `` (RFC 934 section 2), so
    no line of a post reads as an RFC 1153 separator."""
    return "\n".join("- " + line if len(line) >= 30 and not line.strip("-") else line
                     for line in text.splitlines())


def plain_digest(lc, state: DigestState, posts: list[DigestPost]) -> bytes:
    """The plain text digest (RFC 1153): masthead and table of contents, 70 hyphens, then per post
    its :data:`PLAIN_FIELDS`, a blank line, its first text/plain part and 30 hyphens; then the
    trailer ``End of ... Digest ...`` underlined with asterisks. UTF-8 text/plain."""
    chunks = [_masthead(lc, state, posts), RULE70]
    for post in posts:
        head = mail.headers(post.message)
        fields = [f"{name}: {mail.header_text(head, name)}" for name in PLAIN_FIELDS if head.get(name) is not None]
        body = _stuffed(mail.command_text(post.message).replace("\r\n", "\n")).rstrip("\n")
        chunks.append("\n".join(fields) + "\n\n" + (body or "[this post has no text/plain part; see the "
                                                           "MIME digest]") + "\n")
        chunks.append(RULE30)
    end = f"End of {_title(lc, state)}"
    chunks.append(f"{end}\n{'*' * len(end)}\n")
    msg = MIMEText("\n\n".join(chunks), "plain", _UTF8)
    _envelope(msg, lc, state, "plain")
    return msg.as_bytes(policy=compat32.clone(linesep="\n"))
