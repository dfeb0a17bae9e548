"""The per-connection milter object (pymilter ``Milter.Base``).

Protocol (libmilter, as Postfix speaks it: MILTER_README "Milter protocol
stages"):

==============  ===========================================================
connect         no reply (P_NR_CONN): remember the client address
HELO, EOH       not sent (P_NOHELO, P_NOEOH)
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
"""
from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

import Milter

from .. import metrics
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
    def envfrom(self, mailfrom, *params):
        self._reset()
        self.site = self.sites.current()
        self.sender = bare(mailfrom)
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
        msg = b"".join(self.chunks)
        self.chunks = []
        qid = self.getsymval("i")
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
