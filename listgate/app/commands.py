"""Email commands (``L-request``, ``L-join``, ``L-leave``) and confirmations (``L-confirm+TOKEN``).

Commands come in the Subject and the first lines of the first text/plain
part (quoted lines, and everything after a signature separator or ``end``,
are ignored; at most :data:`MAX_COMMANDS` are run):

``subscribe``, ``unsubscribe``, ``change-address NEW`` (also ``change address
NEW``), ``digest on|mime|plain|off``, ``help``, ``confirm TOKEN``. Whatever needs consent makes a pending
record and sends a confirmation to the address concerned (the requester for
subscribe/unsubscribe, the new address for a change of address), so a forged
``From`` cannot subscribe or remove anybody. ``L-join``/``L-leave`` mean
subscribe/unsubscribe.

``digest`` switches the requester's own delivery mode (:mod:`.digests`) at
once, without a confirmation: it loses nothing and the member is told in the
reply, so a forged ``From`` is noticed and undone with one more command.

A confirmation (a message to ``L-confirm+TOKEN@D``, or ``confirm TOKEN`` in a
Subject) completes the pending record through
:func:`listgate.app.subscriptions.complete`: ``subscription``,
``unsubscription``, ``change_of_address``, ``re_enable`` and
``held_message`` (moderators: ``approve``/``reject``/``discard``; the
replier must be an owner or moderator). ``probe`` tokens are for bounces only.

A subscription or change of address to a domain that takes no mail (null
MX, NXDOMAIN, no MX and no address: :func:`.subscriptions.deliverable`) is
refused with the reason; when the DNS cannot answer, the request raises
:class:`~listgate.dns.DnsUnknown` and the runner tries it again later.

Auto-generated mail (RFC 3834, see :func:`.mail.auto_generated`) never gets a
reply and never confirms anything: an autoresponder answering a confirmation
request must not subscribe its owner.

Confirmation requests and replies are rate-limited per address and per list
(:mod:`.ratelimit`): past the limit a command is neither answered nor acted on.
"""
from __future__ import annotations

import re

from .. import addresses, clock
from ..dns import DnsUnknown
from ..log import events
from ..store import AlreadyMember, NotAMember, StoreError, StoreUnavailable, UnknownToken, open_store
from ..store.tokens import TOKEN_RE
from . import digests, mail, notices, posting, ratelimit, texts
from .subscriptions import complete, deliverable

log = events("listgate.app.commands")

MAX_COMMANDS = 10
_TOKEN_IN = re.compile(r"\b([a-z2-7]{26})\b")


def parse_commands(subject: str, text: str) -> list[tuple[str, list[str]]]:
    """``[(command, args), ...]`` from the Subject and body text, in order.

    Lines that are empty or quoted (``>``) are skipped; a signature separator
    (``-- ``) or ``end`` stops; ``Re:``/``Fwd:`` prefixes of the Subject are dropped.
    """
    lines = [re.sub(r"^\s*((re|aw|fwd?|sv)\s*:\s*)+", "", subject, flags=re.I)]
    for line in text.splitlines():
        if line.rstrip() == "--" or line.startswith("-- "):
            break
        lines.append(line)
    found: list[tuple[str, list[str]]] = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith(">"):
            continue
        words = line.split()
        cmd = words[0].lower().rstrip(":")
        args = words[1:]
        if cmd == "end":
            break
        if cmd == "change" and args and args[0].lower() in ("address", "address:"):
            cmd, args = "change-address", args[1:]
        found.append((cmd, args))
        if len(found) >= MAX_COMMANDS:
            break
    return found


class Context:
    """One command message: list, store, requester, and the lines of the result reply."""

    def __init__(self, site, lc, qf):
        self.site, self.lc, self.qf = site, lc, qf
        self.store = open_store(site, notices.address(lc))
        self.m = mail.headers(qf.msg)
        writer = mail.author(self.m)
        self.requester = writer[1] if writer else None
        self.display = writer[0] if writer else ""
        self.auto = mail.auto_generated(self.m, qf.meta.get("envelope_sender"))
        self.results: list[str] = []
        self.message_id = mail.header_text(self.m, "Message-ID") or None

    def sent(self, address: str, line: str) -> None:
        """Note a confirmation sent; to the requester it is the answer itself, no extra reply."""
        if (address or "").lower() != (self.requester or "").lower():
            self.results.append(line)

    def reply(self) -> bool:
        """Send the result reply (if there are results and the requester may get mail); whether sent."""
        if not self.results or self.requester is None or self.auto:
            return False
        if not ratelimit.may_send(self.site, self.lc, self.store, self.requester):
            return False
        notices.reply(self.site, self.lc, self.requester, "results", kind="reply", in_reply_to=self.message_id,
                      results="\n".join(self.results))
        return True


def _valid(address: str) -> bool:
    return addresses.split_address(address) is not None and " " not in address and len(address) <= 320


def _reachable(ctx: Context, what: str, address: str) -> bool:
    """False (with the reason in the reply) when ``address``'s domain takes no mail. Raises
    :class:`DnsUnknown` when the DNS cannot say: the runner retries the request later; one that
    has waited ``runner.retry_giveup`` goes ahead unchecked (the confirmation still has to come back)."""
    verdict = deliverable(ctx.site, address)
    if verdict.dead:
        ctx.results.append(_line(ctx, "cmd_undeliverable", command=what, address=address, reason=verdict.reason))
        log.info("subscription_refused", list=notices.address(ctx.lc), address=address, dns=verdict.status)
        return False
    if verdict.status == "unknown":
        arrival = ctx.qf.meta.get("arrival")
        if not isinstance(arrival, (int, float)) or clock.now() - arrival < ctx.site.conf.runner.retry_giveup:
            raise DnsUnknown(verdict.reason)
        log.warning("dns_unknown_going_ahead", "DNS still unknown, going ahead", list=notices.address(ctx.lc),
                    address=address)
    return True


def _line(ctx: Context, name: str, **fields) -> str:
    """One line of the reply: fragment ``name`` of :mod:`listgate.app.texts`."""
    return texts.render(name, ctx.lc, **fields).body.rstrip("\n")


def _limited(ctx: Context, address: str) -> str:
    return _line(ctx, "rate_limited", address=address)


def subscribe(ctx: Context, address: str | None = None) -> None:
    address = address or ctx.requester
    if not address or not _valid(address):
        ctx.results.append(_line(ctx, "cmd_no_address", command="subscribe"))
        return
    if not _reachable(ctx, "subscribe", address):
        return
    member = ctx.store.get_member(address)
    if member is not None and member.delivery_status != "by_bounce":  # by_bounce: confirming re-enables
        ctx.results.append(_line(ctx, "cmd_already_member", command="subscribe", address=address))
        return
    if not ratelimit.may_send(ctx.site, ctx.lc, ctx.store, address):
        ctx.results.append(f"subscribe: {_limited(ctx, address)}")
        return
    rec = ctx.store.add_pending("subscription", {"address": address, "display_name": ctx.display},
                                ctx.site.conf.pending.user_confirmation)
    notices.confirmation(ctx.site, ctx.lc, address, rec.token, f"subscribe {address} to {notices.address(ctx.lc)}",
                         in_reply_to=ctx.message_id)
    ctx.sent(address, _line(ctx, "cmd_confirmation_sent", command="subscribe", address=address))


def unsubscribe(ctx: Context, address: str | None = None) -> None:
    address = address or ctx.requester
    if not address or not _valid(address) or ctx.store.get_member(address) is None:
        ctx.results.append(_line(ctx, "cmd_not_member", command="unsubscribe", address=address or "you"))
        return
    if not ratelimit.may_send(ctx.site, ctx.lc, ctx.store, address):
        ctx.results.append(f"unsubscribe: {_limited(ctx, address)}")
        return
    rec = ctx.store.add_pending("unsubscription", {"address": address}, ctx.site.conf.pending.user_confirmation)
    notices.confirmation(ctx.site, ctx.lc, address, rec.token,
                         f"unsubscribe {address} from {notices.address(ctx.lc)}", in_reply_to=ctx.message_id)
    ctx.sent(address, _line(ctx, "cmd_confirmation_sent", command="unsubscribe", address=address))


def change_address(ctx: Context, new: str | None) -> None:
    old = ctx.requester
    if not new or not _valid(new):
        ctx.results.append(_line(ctx, "cmd_change_address_usage"))
        return
    if not old or ctx.store.get_member(old) is None:
        ctx.results.append(_line(ctx, "cmd_not_member", command="change-address", address=old or "you"))
        return
    if ctx.store.get_member(new) is not None:
        ctx.results.append(_line(ctx, "cmd_already_member", command="change-address", address=new))
        return
    if not _reachable(ctx, "change-address", new):
        return
    if not ratelimit.may_send(ctx.site, ctx.lc, ctx.store, new):
        ctx.results.append(f"change-address: {_limited(ctx, new)}")
        return
    rec = ctx.store.add_pending("change_of_address", {"old": old, "new": new},
                                ctx.site.conf.pending.user_confirmation)
    notices.confirmation(ctx.site, ctx.lc, new, rec.token,
                         f"move the subscription to {notices.address(ctx.lc)} of {old} to {new}",
                         in_reply_to=ctx.message_id)
    ctx.results.append(_line(ctx, "cmd_confirmation_sent", command="change-address", address=new))


def digest(ctx: Context, word: str | None) -> None:
    """``digest on|mime|plain|off``: the requester takes posts as a MIME or plain digest, or one by one."""
    mode = digests.MODE_WORDS.get((word or "").lower())
    if mode is None:
        ctx.results.append(_line(ctx, "cmd_digest_usage"))
        return
    try:
        digests.set_mode(ctx.store, ctx.requester or "", mode)
    except (NotAMember, ValueError):
        ctx.results.append(_line(ctx, "cmd_not_member", command="digest", address=ctx.requester or "you"))
        return
    ctx.results.append(_line(ctx, "cmd_digest_mode", address=ctx.requester, mode={
        "regular": "posts one by one", "mime_digest": "the MIME digest",
        "plain_digest": "the plain text digest"}[mode]))


def help_text(lc) -> str:
    return texts.render("help", lc, join=notices.address(lc, "join"), leave=notices.address(lc, "leave")).body


def handle_request(site, lc, qf) -> str:
    """Run the commands of one ``L-request``/``L-join``/``L-leave`` message; returns a short
    outcome for the log: ``WHAT:COMMANDS``, WHAT ``commands_replied`` (a result reply sent),
    ``confirmation_sent`` (the confirmation request is the answer) or ``commands_not_replied``
    (no reply: rate limit), e.g. ``commands_replied:help`` (never the reply text itself)."""
    ctx = Context(site, lc, qf)
    if ctx.auto:
        log.info("command_ignored", "command mail ignored", list=notices.address(lc), qfile=qf.id, why=ctx.auto)
        return "ignored"
    role = qf.meta.get("role")
    names: list[str] = []   # the commands run, for the outcome
    if role == "join":
        names.append("subscribe")
        subscribe(ctx)
    elif role == "leave":
        names.append("unsubscribe")
        unsubscribe(ctx)
    else:
        cmds = parse_commands(mail.header_text(ctx.m, "Subject"), mail.command_text(qf.msg))
        unknown, handled = [], 0
        for cmd, args in cmds:
            handled += 1
            names.append(cmd)
            if cmd in ("subscribe", "join"):
                subscribe(ctx)
            elif cmd in ("unsubscribe", "leave", "signoff"):
                unsubscribe(ctx)
            elif cmd in ("change-address", "changeaddress"):
                change_address(ctx, addresses.bare(args[0]) if args else None)
            elif cmd == "digest":
                digest(ctx, args[0] if args else None)
            elif cmd == "help":
                ctx.results.append(help_text(lc))
            elif cmd == "confirm" and args and TOKEN_RE.match(args[0].lower()):
                return confirm(site, lc, qf, args[0].lower(), ctx)
            else:
                handled -= 1
                names[-1] = "unknown"
                unknown.append(" ".join([cmd] + args)[:80])
        if not handled:
            # Only unknown lines (or none): one helpful answer, naming the first of them.
            if unknown:
                ctx.results.append(_line(ctx, "cmd_unknown", command=unknown[0]))
            ctx.results.append(help_text(lc))
            names.append("help")
    replied = ctx.reply()
    what = "commands_replied" if replied else "confirmation_sent" if not ctx.results else "commands_not_replied"
    return f"{what}:{','.join(dict.fromkeys(names)) or 'none'}"


def _moderation_action(ctx: Context) -> tuple[str, str]:
    """``(approve|reject|discard, reason)`` from a moderator's reply.

    The first line (outside quotes and signature) that starts with a keyword
    decides; a reply with none approves (replying is how the notice says to approve).
    """
    for cmd, args in parse_commands("", mail.command_text(ctx.qf.msg)):
        if cmd in ("approve", "approved", "ok", "yes", "accept"):
            return "approve", ""
        if cmd in ("reject", "rejected", "no", "deny"):
            return "reject", " ".join(args)
        if cmd in ("discard", "delete", "drop"):
            return "discard", ""
    return "approve", ""


def _privileged(ctx: Context) -> bool:
    return any(posting.is_staff(ctx.lc, a) for a in (ctx.requester, ctx.qf.meta.get("envelope_sender")))


def confirm(site, lc, qf, token: str, ctx: Context | None = None) -> str:
    """Complete pending record ``token`` (``L-confirm+TOKEN`` or ``confirm TOKEN``); returns a summary."""
    ctx = ctx or Context(site, lc, qf)
    if ctx.auto:
        log.info("confirmation_ignored", "confirmation from an auto-generated message ignored",
                 list=notices.address(lc), qfile=qf.id, why=ctx.auto)
        return "ignored"
    token = token.lower()
    rec = ctx.store.peek_pending(token)
    if rec is None or rec.type == "probe":
        ctx.results.append(texts.render("unknown_token", lc).body)
        ctx.reply()
        return "unknown token"
    lname = notices.address(lc)
    try:
        if rec.type == "held_message":
            if not _privileged(ctx):
                log.warning("moderation_reply_ignored", "moderation reply from a non-moderator ignored", list=lname,
                            sender=ctx.requester)
                return "not a moderator"
            ctx.results.append(complete(site, lc, rec, moderation=_moderation_action(ctx)))
        else:
            return complete(site, lc, rec)
    except UnknownToken:
        ctx.results.append(texts.render("unknown_token", lc).body)
    except (AlreadyMember, NotAMember) as exc:
        ctx.results.append(f"confirm: {exc}")
    except StoreUnavailable:
        raise
    except StoreError as exc:
        ctx.results.append(f"confirm: {exc}")
    ctx.reply()
    return "; ".join(r.splitlines()[0] for r in ctx.results) or rec.type


def handle_confirm(site, lc, qf) -> str:
    """A message to ``L-confirm+TOKEN@D``: the token is the address extension."""
    token = (qf.meta.get("extension") or "").lower()
    if not TOKEN_RE.match(token):
        subject = mail.header_text(mail.headers(qf.msg), "Subject").lower()
        found = _TOKEN_IN.search(subject)
        token = found.group(1) if found else token
    return confirm(site, lc, qf, token)
