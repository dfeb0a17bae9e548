"""Helpers for the bounce engine tests: a list with members, bounce messages, the virgin queue.

Everything is real: a `listgate init` instance, its SQLite store, its qfile
queue, the real classifier and VERP codec. Time is the frozen test clock.
"""
from __future__ import annotations

import email
import email.policy
from dataclasses import dataclass
from pathlib import Path

from listgate import addresses, clock, routing, verp
from listgate.app.bounces import BounceEngine
from listgate.config import Site
from listgate.queue import Switchboard
from listgate.store import open_store

from policy_helpers import write_list

DAY = 86400
T0 = 1_800_000_000.0 + 4 * 3600      # 2027-01-15 12:00 UTC: midday, so +hours stays on one UTC day
DOMAIN = "lists.example.org"
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "bounces"


@dataclass
class Env:
    site: Site
    engine: BounceEngine

    @property
    def lc(self):
        return self.site.get_list("demo")

    @property
    def store(self):
        return open_store(self.site, f"demo@{DOMAIN}")

    def member(self, address: str):
        return self.store.get_member(address)

    def verp_rcpt(self, member: str) -> addresses.ListAddress:
        """The ListAddress of ``member``'s signed VERP bounce address."""
        return addresses.parse(verp.member_bounce_address(self.site, self.lc, member), self.site.lists)

    def probe_rcpt(self, token: str) -> addresses.ListAddress:
        return addresses.parse(verp.probe_bounce_address(self.lc, token), self.site.lists)

    def plain_rcpt(self) -> addresses.ListAddress:
        return addresses.parse(f"demo-bounces@{DOMAIN}", self.site.lists)

    def bounce(self, msg: bytes, rcpt: addresses.ListAddress, sender: str = ""):
        """Hand ``msg`` to the engine as a front end does: with routing's decision on ``rcpt``."""
        text = addresses.make(rcpt.name, rcpt.domain, rcpt.role, rcpt.extension)
        decision = routing.decide_rcpt(self.site, text, sender=sender)
        return self.engine.handle_bounce(self.lc, msg, rcpt, verp_result=decision.verp, envelope_sender=sender,
                                         mta_queue_id="4ABCD")

    def verp_bounce(self, member: str, status: str = "5.1.1", diagnostic: str = "550 5.1.1 User unknown"):
        return self.bounce(dsn(member, status, diagnostic), self.verp_rcpt(member))

    def virgin(self, kind: str | None = None) -> list:
        """QFiles in the virgin queue (FIFO), optionally only those of ``kind``."""
        board = Switchboard(self.site.queue_dir, "virgin")
        items = [board.peek(qid) for qid in board.ids()]
        return [q for q in items if q is not None and (kind is None or q.meta.get("kind") == kind)]

    def actions(self, outcome) -> list[tuple]:
        return [(a.address, a.action) for a in outcome.actions]

    def pending_probes(self, member: str) -> list:
        return [r for r in self.store.pending("probe") if r.payload.get("member") == member]


def make_env(site: Site, members=("jane@example.com",), **list_keys) -> Env:
    """Configure list demo with ``list_keys``, add ``members``, freeze the clock at T0."""
    clock.freeze(T0)
    site = write_list(site, "demo", DOMAIN, **list_keys)
    env = Env(site, BounceEngine(site))
    for m in members:
        env.store.add_member(m)
    return env


def dsn(rcpt: str, status: str = "5.1.1", diagnostic: str = "550 5.1.1 User unknown", *,
        action: str = "failed", original_message_id: str = "<post-1@lists.example.org>",
        reporting_mta: str = "mx.example.com", envid: str | None = None, list_id: str | None = None) -> bytes:
    """An RFC 3464 delivery status notification for one recipient, as an MTA writes it.

    ``envid``: the ``Original-Envelope-Id`` (RFC 3464 section 2.2.1); ``list_id``:
    a ``List-Id`` on the returned headers."""
    envid_line = f"Original-Envelope-Id: {envid}\n" if envid else ""
    list_id_line = f"List-Id: {list_id}\n" if list_id else ""
    boundary = "dsn-boundary-1234"
    return (
        f"From: MAILER-DAEMON@{reporting_mta}\n"
        f"To: demo-bounces@{DOMAIN}\n"
        f"Subject: Undelivered Mail Returned to Sender\n"
        f"Message-ID: <dsn-{abs(hash((rcpt, status, diagnostic))) % 10**9}@{reporting_mta}>\n"
        f"Date: Fri, 15 Jan 2027 12:00:00 +0000\n"
        f"Auto-Submitted: auto-replied\n"
        f"MIME-Version: 1.0\n"
        f"Content-Type: multipart/report; report-type=delivery-status; boundary=\"{boundary}\"\n\n"
        f"--{boundary}\nContent-Type: text/plain\n\n"
        f"This is the mail system at host {reporting_mta}.\n\n<{rcpt}>: {diagnostic}\n\n"
        f"--{boundary}\nContent-Type: message/delivery-status\n\n"
        f"{envid_line}Reporting-MTA: dns; {reporting_mta}\n\n"
        f"Final-Recipient: rfc822; {rcpt}\nOriginal-Recipient: rfc822; {rcpt}\n"
        f"Action: {action}\nStatus: {status}\nDiagnostic-Code: smtp; {diagnostic}\n\n"
        f"--{boundary}\nContent-Type: text/rfc822-headers\n\n"
        f"From: someone@example.net\nTo: demo@{DOMAIN}\nSubject: a post\n"
        f"Message-ID: {original_message_id}\n{list_id_line}\n"
        f"--{boundary}--\n"
    ).encode("utf-8")


def policy_dsn(rcpt: str) -> bytes:
    """The list's mail refused as spam: a 5.7.1 content rejection, not a bad address."""
    return dsn(rcpt, "5.7.1", "554 5.7.1 Message rejected as spam by content filter")


def human_reply(to: str) -> bytes:
    return (f"From: Jane <jane@example.com>\nTo: {to}\nSubject: Re: a post\n"
            f"Message-ID: <reply-1@example.com>\nDate: Fri, 15 Jan 2027 12:00:00 +0000\n\n"
            f"Thanks, that was useful!\n").encode("utf-8")


def corpus_file(rel: str) -> bytes:
    return (CORPUS / rel).read_bytes()


def parse(qfile) -> email.message.EmailMessage:
    return email.message_from_bytes(qfile.msg, policy=email.policy.default)


def attachments(msg) -> list:
    return [p for p in msg.iter_attachments()]
