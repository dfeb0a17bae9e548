"""The per-connection milter object (pymilter ``Milter.Base``).

Protocol (libmilter, as Postfix speaks it: MILTER_README "Milter protocol
stages"):

==============  ===========================================================
connect         no reply (P_NR_CONN): remember the client name and address
HELO            no reply (P_NR_HELO): remember the HELO/EHLO name
EOH             not sent (P_NOEOH)
MAIL FROM       no reply (P_NR_MAIL): start a new transaction, reset state,
                take the current configuration (hot reload)
RCPT TO         :func:`listgate.routing.decide_rcpt`: ``pass`` leaves the
                recipient alone, ``reject``/``tempfail`` answer with routing's
                code, ``accept``/``discard`` mark a list recipient
DATA            no list recipient: ACCEPT (headers and body are not sent)
header, body    no reply (P_NR_HDR, P_NR_BODY): collect the message; header
                leading space kept (P_HDR_LEADSPC) so it is stored as sent
end of message  :func:`listgate.inject.store_message` first (durable), then
                ``delrcpt`` each list recipient; DISCARD when no recipient
                remains, ACCEPT otherwise; ``451 4.3.0`` when it cannot store
==============  ===========================================================

Only the DELRCPT action is negotiated. The MTA's queue id comes from the
``i`` macro at end of message (Postfix's default ``milter_end_of_data_macros``).

A milter never sees the ``Received:`` field Postfix's smtpd writes for this
hop (Postfix hands it the header fields the client sent, plus those cleanup
adds, such as a missing ``Date:``); the LMTP front end and Exim's pipe get the
message with it. So the milter writes that hop's trace field itself
(:func:`received_field`) before storing the message: from the HELO name and
the client's name and address, by ``j`` (``$myhostname``, a connect macro by
default), ``id`` the queue id ``i``, ``with`` ESMTP plus ``S`` for TLS
(``{tls_version}``) and ``A`` for SMTP AUTH (``{auth_type}``) (RFC 3848),
both MAIL FROM macros (INSTALL's ``milter_mail_macros``).
"""
from __future__ import annotations

import email.utils
import ipaddress
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

import Milter

from .. import clock, metrics
from ..addresses import split_address
from ..inject import NotStored, Routed, bare, store_message
from ..log import events
from ..routing import decide_rcpt

log = events("listgate.milter")

NEEDED_ACTIONS = Milter.DELRCPT
TEMPFAIL_REPLY = ("451", "4.3.0", "listgate cannot store this message now, try again later")


class SiteSource:
    """Thread-safe ``current() -> Site`` over a :class:`listgate.config.Watcher`.

    libmilter runs one thread per connection; the lock keeps two of them from
    reloading the same change at once.
    """

    def __init__(self, watcher):
        self._watcher = watcher
        self._lock = threading.Lock()

    def current(self):
        with self._lock:
            return self._watcher.current()


# What may stand in a Received: field as a name the client gave (HELO) or DNS did: no
# space, parenthesis, semicolon or control character can reach the header.
_NAME_JUNK = re.compile(r"[^A-Za-z0-9.:_\[\]-]")


def _address_literal(address: str) -> str:
    """``[192.0.2.1]`` or ``[IPv6:2001:db8::1]`` (RFC 5321 section 4.1.3)."""
    try:
        return f"[IPv6:{address}]" if ipaddress.ip_address(address).version == 6 else f"[{address}]"
    except ValueError:
        return f"[{_NAME_JUNK.sub('', address)}]"


def received_field(*, helo: str | None, client_name: str | None, client_address: str | None, by: str,
                   queue_id: str | None, tls: bool, auth: bool, recipients: list[str]) -> bytes:
    """The ``Received:`` trace field of RFC 5321 section 4.4 for the hop Postfix's smtpd made, CRLF-terminated.

    ``from HELO (NAME [ADDR])`` (NAME as Postfix gives it: ``unknown`` when unverified),
    ``by`` this host, ``with`` ESMTP/ESMTPS/ESMTPA/ESMTPSA (RFC 3848), ``id`` the
    MTA's queue id, ``for <RCPT>`` when there is one recipient, then the date
    (:mod:`listgate.clock`). Without a client address (a local submission, a
    DSN of Postfix's own) neither ``from`` nor ``with``. Names are stripped of anything
    that could break out of the field.
    """
    parts = []
    if client_address:
        literal = _address_literal(client_address)
        name = _NAME_JUNK.sub("", client_name or "")
        info = f"{name} {literal}" if name and not name.startswith("[") else literal
        parts.append(f"from {_NAME_JUNK.sub('', helo or '') or literal} ({info})")
    parts.append(f"by {_NAME_JUNK.sub('', by) or 'localhost'} (Postfix, listgate milter)"
                 + (f" with ESMTP{'S' if tls else ''}{'A' if auth else ''}" if client_address else "")
                 + (f" id {_NAME_JUNK.sub('', queue_id)}" if queue_id else ""))
    if len(recipients) == 1:
        parts.append(f"for <{recipients[0]}>")
    stamp = "\r\n\t".join(parts) + "; " + email.utils.format_datetime(clock.now_dt())
    return ("Received: " + stamp + "\r\n").encode("utf-8", "surrogateescape")


def _reply_text(text: str | None) -> str:
    # libmilter silently drops a reply whose text has a lone '%' (smfi_setreply)
    return (text or "").replace("%", "%%").replace("\r", " ").replace("\n", " ")


class CoreThreads:
    """Python-made threads that run the shared core's calls for libmilter's threads.

    libmilter makes a thread per connection outside Python, and pymilter gives
    each a thread state of its own making; a store driver that calls back into
    Python from C with ``PyGILState_Ensure`` (psycopg's libpq notice receiver,
    which fires when a PostgreSQL server goes away) may not run on such a
    thread (Python C API, "Non-Python created threads": the two ways of
    holding the GIL do not mix) and crashed the milter. So every call that may
    reach the store runs here. ``run(fn, *args, **kw)`` returns what ``fn``
    returns or raises what it raises; ``close()`` at exit.
    """

    def __init__(self, workers: int = 8):
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="listgate-core")

    def run(self, fn, *args, **kw):
        return self._pool.submit(fn, *args, **kw).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class ListgateMilter(Milter.Base):
    """One SMTP connection. Class attribute ``sites`` provides ``current() -> Site``;
    ``core`` (a :class:`CoreThreads`, None in tests that call the methods directly)
    runs the calls that may reach the store."""

    sites: ClassVar[object] = None
    core: ClassVar[CoreThreads | None] = None

    def _core(self, fn, *args, **kw):
        return self.core.run(fn, *args, **kw) if self.core is not None else fn(*args, **kw)

    def __init__(self):
        self.client_address: str | None = None
        self.client_name: str | None = None
        self.helo: str | None = None
        self.internal = False
        self._reset()

    def _reset(self) -> None:
        """Forget the transaction: called at MAIL, abort and after end of message."""
        self.site = None
        self.sender: str | None = None
        self.routed: list[Routed] = []
        self.others = 0          # recipients listgate leaves to the MTA
        self.chunks: list[bytes] = []
        self.in_body = False
        self.tls = self.auth = False

    # -- negotiation ---------------------------------------------------------
    def negotiate(self, opts):
        rc = super().negotiate(opts)
        if rc == Milter.CONTINUE:
            opts[0] = self._actions = self._actions & NEEDED_ACTIONS
        return rc

    # -- envelope ------------------------------------------------------------
    @Milter.noreply
    def connect(self, hostname, family, hostaddr):
        self.client_name = hostname
        if family in (socket.AF_INET, socket.AF_INET6) and hostaddr:
            # libmilter gives (ip, port[, flow, scope]); some harnesses the bare ip
            self.client_address = hostaddr if isinstance(hostaddr, str) else hostaddr[0]
            # Postfix presents mail that did not come through smtpd (its own
            # DSNs through non_smtpd_milters, local submission) as port 0.
            self.internal = not isinstance(hostaddr, str) and len(hostaddr) > 1 and hostaddr[1] == 0
        else:
            self.client_address = None  # unix socket or unknown: mail from a local submission
        return Milter.CONTINUE

    @Milter.noreply
    def hello(self, hostname):
        self.helo = hostname
        return Milter.CONTINUE

    @Milter.noreply
    def envfrom(self, mailfrom, *params):
        self._reset()
        self.site = self.sites.current()
        self.sender = bare(mailfrom)
        # MAIL FROM macros (INSTALL's milter_mail_macros): this transaction's TLS and SASL state
        self.tls = bool(self.getsymval("{tls_version}"))
        self.auth = bool(self.getsymval("{auth_type}"))
        return Milter.CONTINUE

    def envrcpt(self, to, *params):
        if self.site is None:  # an MTA that skipped MAIL FROM
            self.site = self.sites.current()
        rcpt = bare(to)
        parts = split_address(rcpt)
        # Only our domains' recipients may reach the store: other mail keeps the decision on
        # libmilter's thread. A hop for every recipient took figure b (no list recipient,
        # listgate vs null milter) from 1.02 to 0.92 (BENCHMARKS.md, "Quiet reruns").
        if parts is not None and parts[1] in self.site.domains:
            d = self._core(decide_rcpt, self.site, rcpt, sender=self.sender, client_address=self.client_address)
        else:
            d = decide_rcpt(self.site, rcpt, sender=self.sender, client_address=self.client_address)
        if d.action == "pass":
            self.others += 1
            return Milter.CONTINUE
        if d.action in ("accept", "discard"):
            self.routed.append(Routed(to, d))
            return Milter.CONTINUE
        if d.action == "reject" and self.internal and not self.sender:
            # Postfix's own DSN to a bounce address we no longer honour (expired
            # probe, retired key, deleted list): refusing it would leave the
            # original message deferred with "bounce failed" at every queue run.
            # Take the recipient and drop it instead.
            log.info("internal_dsn_dropped", "internal DSN to a refused address dropped", rcpt=bare(to), why=d.text)
            self.routed.append(Routed(to, d._replace(action="discard")))
            return Milter.CONTINUE
        if d.action == "reject":
            self.setreply(str(d.code or "550"), d.dsn or None, _reply_text(d.text))
            return Milter.REJECT
        # tempfail (the store is unavailable), or an action this version does not know
        self.setreply(str(d.code or TEMPFAIL_REPLY[0]), d.dsn or TEMPFAIL_REPLY[1],
                      _reply_text(d.text or TEMPFAIL_REPLY[2]))
        return Milter.TEMPFAIL

    def data(self):
        # Nothing for listgate in this transaction: the MTA stops sending us
        # headers and body (ACCEPT at DATA accepts the message for this milter only).
        return Milter.CONTINUE if self.routed else Milter.ACCEPT

    # -- content -------------------------------------------------------------
    @Milter.noreply
    @Milter.decode("bytes")
    def header(self, name, value):
        sep = b":" if self._protocol & Milter.P_HDR_LEADSPC else b": "
        line = name.encode("ascii", "surrogateescape") + sep + value
        # Folded fields arrive with bare LF between their lines; the body arrives
        # with CRLF (SMTP's line end): store the whole message with CRLF.
        self.chunks.append(line.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + b"\r\n")
        return Milter.CONTINUE

    @Milter.noreply
    def body(self, chunk):
        if not self.in_body:
            self.chunks.append(b"\r\n")
            self.in_body = True
        self.chunks.append(chunk)
        return Milter.CONTINUE

    def eom(self):
        started = time.perf_counter()
        try:
            return self._end_of_message()
        except Exception:
            log.exception("end_of_message_failed", queue_id=self.getsymval("i"))
            self.setreply(*TEMPFAIL_REPLY)
            return Milter.TEMPFAIL
        finally:
            self._reset()
            metrics.observe("eom", time.perf_counter() - started)

    def _end_of_message(self):
        if not self.routed:
            return Milter.ACCEPT
        if not self.in_body:
            self.chunks.append(b"\r\n")
        qid = self.getsymval("i")
        trace = received_field(helo=self.helo, client_name=self.client_name,
                               client_address=None if self.internal else self.client_address,
                               by=self.getsymval("j") or self.site.conf.hostname, queue_id=qid,
                               tls=self.tls, auth=self.auth, recipients=[bare(r.rcpt) for r in self.routed])
        msg = trace + b"".join(self.chunks)
        self.chunks = []
        try:
            self._core(store_message, self.site, msg, self.sender or "", self.routed, mta_queue_id=qid,
                       client_address=self.client_address, client_name=self.client_name)
        except NotStored as exc:
            log.warning("tempfail", queue_id=qid, error=exc)
            self.setreply(*TEMPFAIL_REPLY)
            return Milter.TEMPFAIL
        if not self.others:
            return Milter.DISCARD
        for rcpt in dict.fromkeys(r.rcpt for r in self.routed):
            self.delrcpt(rcpt)
        return Milter.ACCEPT

    def abort(self):
        self._reset()
        return Milter.CONTINUE

    def close(self):
        return Milter.CONTINUE


ListgateMilter = Milter.header_leading_space(ListgateMilter)
