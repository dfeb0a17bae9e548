"""Hand ``out``, ``virgin`` and ``retry`` qfiles to the MTA's re-injection listener.

A qfile to deliver carries ``deliveries`` (a list of ``{"rcpt", "sender"}``)
and ``done`` (indices already handed over). :meth:`Deliverer.deliver` sends
the message over one persistent SMTP connection (``site.conf.reinject``) and:

* ``verp_mode: signed`` (qfiles without ``xverp``): one transaction per
  recipient, ``MAIL FROM`` the recipient's own envelope sender (a signed VERP
  address, a probe address, a list bounce address);
* ``xverp`` qfiles (lists with ``verp_mode: xverp``): batches of up to
  :data:`XVERP_BATCH` recipients per transaction with the Postfix ``XVERP``
  parameter (Postfix VERP_README): Postfix then gives each recipient the
  envelope sender ``L-bounces+local=domain@D``. That costs one transaction per
  batch instead of one per member, but the address is not signed, so the list
  must set ``accept_unsigned_verp`` and anyone can forge a bounce for a member
  (routing cannot tell). The re-injection client must be in Postfix's
  ``smtpd_authorized_verp_clients``.

Progress is durable: after every hand-over the recipient's index is appended
to the qfile's progress file with :meth:`Switchboard.record_done` (one
line, then one fdatasync, not a rewrite of the qfile) before this thread's
next transaction. After a crash the qfile comes back (``Switchboard.recover``
folds the progress into its ``done``) and only recipients not in ``done`` are
sent. A recipient whose transaction the MTA committed but whose line was not
yet written gets the post twice: that window cannot be closed without
two-phase commit with the MTA. How many such windows there can be:

* The runner killed (SIGKILL, OOM killer, a crash of Python): at most one
  duplicate per kill. The MTA commits a transaction when it answers the final
  dot (RFC 5321 section 4.1.1.4; Postfix's cleanup has fsync'd the queue file
  by then), and a progress line survives the death of the process as soon as
  write(2) has returned (it is in the kernel's page cache, which ``recover``
  reads). :data:`listgate.runner.smtp.COMMIT_GATE` lets one transaction per
  process at a time through that window: a thread takes it before it sends
  the final dot (the envelope goes before, in parallel with the other
  threads) and gives it back once the line is written. Without it, four
  delivery threads duplicated up to four (12 duplicates for 9 kills in
  ``bench/kill_storm.py``). An XVERP batch is one transaction: all of its
  recipients.
* The machine crashing (power loss, kernel panic): at most one duplicate per
  delivery thread (``runner.loop.DELIVERY_WORKERS``, 4) per runner process.
  The fdatasync of the line (:meth:`Switchboard.sync_done`) happens after the
  gate is given back, so the threads' syncs overlap each other and the next
  transaction's commit at the MTA (concurrent fdatasyncs share the file
  system's journal commit) instead of adding to the serial part; a thread
  sends no final dot before its previous line is durable, so each thread has
  at most one line written but not durable, or one transaction in the gate.
  (Before, when the gate also covered the fdatasync, this bound was one.)

The serial part per transaction is then the MTA's commit (its queue-file
fsync) and writing one line: fan-out throughput is at most one over the
MTA's commit latency (``BENCHMARKS.md``, "Fan-out and the commit gate").

DSN requests (RFC 3461), when the listener offers ``DSN`` (Postfix's smtpd
does unless ``smtpd_discard_ehlo_keywords`` hides it; INSTALL, "DSN"): a
probe goes out with ``ENVID=`` its signed probe id
(:func:`listgate.verp.probe_envid`) and ``NOTIFY=SUCCESS,FAILURE``, so a
success DSN closes it within minutes; a post to one member (``verp_mode:
signed``) with ``ENVID=`` its signed post id (:func:`listgate.verp.post_envid`)
and ``NOTIFY=FAILURE,DELAY``. Both set ``ORCPT=rfc822;`` the member's
address (ASCII addresses), so DSNs name the address we sent to even after
forwarding. Values are xtext (RFC 3461 section 4). XVERP batches get none.

Replies (RFC 5321 section 4.2.1): 2xx → done; 5xx for a recipient → done,
reported to :meth:`BounceEngine.register_failure` (with ``probe_token`` for a
probe qfile: the probe bounced); 4xx, or the listener unreachable → the
recipient is deferred: the deferred ones move to ``retry`` with exponential
backoff from ``runner.retry_backoff``; after ``runner.retry_giveup`` since the
first deferral they are given up and reported as ``soft`` failures. A 5xx naming our
own MTA's tables is the member's or a site incident's by the rule of
:class:`listgate.app.site_incidents.HandoverRefusals` (:mod:`listgate.runner.verdicts`);
a post back from ``retry`` skips recipients who are no longer members. A 5xx to
``MAIL FROM`` is our fault, not the members': the qfile goes to ``shunt``
with its progress kept, for ``listgate queue unshunt`` after the fix.
"""
from __future__ import annotations

import re
import smtplib
from dataclasses import dataclass, field

from .. import clock, messages, metrics
from ..bounce.status import reply_status
from ..log import events
from ..app import posting, signing, site_incidents
from ..queue import finite_time
from .smtp import Connection, Unreachable, _options, dsn_options
from .verdicts import Verdicts, failure_class  # noqa: F401  (failure_class: its home before)

log = events("listgate.runner.delivery")

XVERP_BATCH = 500
# Backoff doubles per deferral from runner.retry_backoff, at most this many doublings.
MAX_BACKOFF_DOUBLINGS = 5
_EOL = re.compile(rb"\r?\n")


@dataclass
class Result:
    """What happened to one qfile: counts, and where the qfile went."""

    delivered: int = 0
    failed: int = 0
    deferred: int = 0
    gave_up: int = 0
    disposition: str = "finished"       # finished | retry | shunt
    errors: list[str] = field(default_factory=list)


def wire_form(msg: bytes) -> bytes:
    """``msg`` with CRLF line ends, as SMTP requires (RFC 5321 section 2.3.8).

    smtplib converts bare LF only for ``str`` messages; qfiles hold bytes, and
    generated mail is written with LF.
    """
    return _EOL.sub(b"\r\n", msg)


def _text(resp) -> str:
    if isinstance(resp, bytes):
        return resp.decode("utf-8", "replace")
    return str(resp or "")


def retry_delay(site, retries: int) -> float:
    """Seconds before retry number ``retries`` (1-based): ``retry_backoff * 2**(retries-1)``, capped."""
    return site.conf.runner.retry_backoff * (2 ** min(max(retries - 1, 0), MAX_BACKOFF_DOUBLINGS))


class Deliverer(Verdicts):
    """Sends qfiles; one per runner process (it owns the SMTP connection).

    ``engine`` is a :class:`listgate.app.bounces.BounceEngine` (made on first
    need when not given).
    """

    def __init__(self, site, engine=None, connection: Connection | None = None):
        self.site = site
        self._engine = engine
        self.conn = connection or Connection(site.conf.reinject)

    @property
    def engine(self):
        if self._engine is None:
            from ..app.bounces import BounceEngine
            self._engine = BounceEngine(self.site)
        return self._engine

    def close(self) -> None:
        self.conn.close()

    # -- one transaction -------------------------------------------------------
    def _transaction(self, sender: str, rcpts: list[str], msg: bytes, xverp: bool,
                     utf8: bool = False, dsn: tuple[list[str], list[str]] = ([], [])) -> dict[str, tuple[int, str]]:
        """Send once; returns ``{rcpt: (code, text)}`` for every recipient.

        ``dsn``: :func:`dsn_options`, used only when the listener offers ``DSN``.

        Raises :class:`Unreachable` when the listener is gone (after one reconnect),
        ``smtplib.SMTPSenderRefused`` for a refused ``MAIL FROM``.

        A session the listener closed is reopened and the transaction sent again at
        once (once): a dropped connection, or 421 at any stage (RFC 5321 sections
        3.8 and 4.2.2: the server is closing the transmission channel; Postfix
        answers the command after its ``smtpd_timeout`` with ``421 4.4.2 ... timeout
        exceeded``). A 421 again on the new session is a 4xx reply like any other.
        """
        for attempt in (1, 2):
            smtp = self.conn.get()
            again = attempt == 1
            try:
                mail_opts = _options(smtp, msg, rcpts + [sender], xverp, utf8)
                rcpt_opts: list[str] = []
                if smtp.has_extn("dsn"):
                    mail_opts, rcpt_opts = mail_opts + dsn[0], dsn[1]
                refused = smtp.sendmail(sender, rcpts, msg, mail_opts, rcpt_opts)
            except smtplib.SMTPRecipientsRefused as exc:
                replies = {r: (c, _text(t)) for r, (c, t) in exc.recipients.items()}
                closing = next((ct for ct in replies.values() if ct[0] == 421), None)
                if closing is None:
                    return replies
                if again:
                    self._reopen("RCPT", 421)
                    continue
                # smtplib stops at the 421: no DATA went out, for the RCPTs it sent or not
                return {r: replies.get(r, closing) for r in rcpts}
            except smtplib.SMTPNotSupportedError as exc:
                # RFC 6531 section 3.5: non-ASCII address without SMTPUTF8 support
                return {r: (553, f"5.6.7 {exc}") for r in rcpts}
            except (smtplib.SMTPServerDisconnected, OSError) as exc:
                # If the drop came after the final dot was accepted, this
                # recipient may get the message twice (see the module docstring).
                if not again:
                    self.conn.drop()
                    raise Unreachable(str(exc)) from None
                self._reopen("dropped", exc)
                continue
            except smtplib.SMTPResponseException as exc:  # MAIL (SMTPSenderRefused), DATA, the final dot
                if again and exc.smtp_code == 421:
                    self._reopen(type(exc).__name__, exc.smtp_code)
                    continue
                if isinstance(exc, smtplib.SMTPSenderRefused):
                    raise
                return {r: (exc.smtp_code, _text(exc.smtp_error)) for r in rcpts}
            except (smtplib.SMTPException, UnicodeError) as exc:
                return {r: (451, f"4.3.0 {exc}") for r in rcpts}
            result = {r: (250, "2.0.0 ok") for r in rcpts}
            result.update({r: (c, _text(t)) for r, (c, t) in refused.items()})
            return result
        raise Unreachable("unreachable")  # not reached

    def _reopen(self, stage: str, why) -> None:
        log.info("reinject_reconnect", "re-injection session closed by the listener, reconnecting", stage=stage,
                 reply=why)
        self.conn.drop()

    # -- one qfile ---------------------------------------------------------------
    def deliver(self, sb, qf, should_stop=None) -> Result:
        """Deliver every recipient of ``qf`` not yet in ``done``; finish, retry or shunt it.

        ``sb`` is the :class:`Switchboard` ``qf`` was dequeued from.
        ``should_stop()`` is asked between transactions: when true, delivery
        stops with progress recorded and ``disposition == "stopped"`` (the
        caller releases the qfile). Raises only ``QueueError`` (cannot record
        progress: the caller puts the qfile back, nothing is lost).
        """
        meta = dict(qf.meta)
        deliveries = meta.get("deliveries") or []
        done: list[int] = list(meta.get("done") or [])
        done_set = set(done)
        failed = dict(meta.get("failed") or {})
        xverp = bool(meta.get("xverp"))
        lc = self.site.get_list(meta["list"]) if meta.get("list") else None
        todo = [i for i in range(len(deliveries)) if i not in done_set]
        gone = self._not_members(lc, meta, deliveries, todo)
        todo = [i for i in todo if i not in gone]
        wire = wire_form(qf.msg)
        res = Result()
        deferred: dict[int, str] = {}
        # Site incidents (app.site_incidents): recipients they cover wait, paused.
        open_incidents = site_incidents.open_incidents(self._store(lc), lc) if lc is not None else {}
        paused: dict[int, str] = {}

        def pause(indices) -> None:
            for i in indices:
                paused[i] = "paused by a site incident"
        if open_incidents:   # the trial after a pause: not the address the evidence names
            todo = [todo[k] for k in site_incidents.trial_order(open_incidents, [deliveries[i]["rcpt"] for i in todo])]
        trials: set[str] = set()
        held = [i for i in todo if site_incidents.held_for_trial(open_incidents, deliveries[i]["rcpt"], trials)]
        pause(held)
        todo = [i for i in todo if i not in paused]

        def record(indices: list[int]) -> None:
            new = [i for i in indices if i not in done_set]
            # appended only: sb.sync_done below, once the gate is given back
            sb.record_done(qf, new, {str(i): failed[str(i)] for i in new if str(i) in failed}, sync=False)
            done_set.update(new)
            done.extend(new)
            meta["done"] = done
            meta["failed"] = failed

        if gone:
            record(sorted(gone))
        refusals = site_incidents.HandoverRefusals()

        def member_failures(items) -> list[int]:
            """5xx refusals that are the members' own (also those naming our tables, once the
            listener took others): reported; the indices recorded as failed."""
            scored = []
            for i, rcpt, code, text, _ in items:
                if self._report_failure(lc, meta, rcpt, code, text):
                    failed[str(i)] = f"{code} {text}"[:300]
                    res.failed += 1
                    scored.append(i)
                else:
                    deferred[i] = f"{code} {text}"
            return scored

        batch = XVERP_BATCH if xverp else 1
        pos = 0
        site_failure = None
        while pos < len(todo):
            if should_stop is not None and should_stop():
                res.disposition = "stopped"
                return res
            chunk = todo[pos:pos + batch]
            pos += len(chunk)
            sender = deliveries[chunk[0]].get("sender") or ""
            rcpts = [deliveries[i]["rcpt"] for i in chunk]
            data = wire if xverp else self._recipient_bytes(meta, lc, rcpts[0], wire)
            try:  # the gate taken before the final dot is given back once the outcome is written
                try:
                    replies = self._transaction(sender, rcpts, data, xverp, bool(meta.get("smtputf8")),
                                                dsn_options(self.site, lc, meta, rcpts[0]))
                except Unreachable as exc:
                    for i in todo[pos - len(chunk):]:
                        deferred[i] = f"4.4.1 {exc}"
                    res.errors.append(str(exc))
                    break
                except smtplib.SMTPSenderRefused as exc:
                    if exc.smtp_code // 100 == 4:
                        for i in todo[pos - len(chunk):]:
                            deferred[i] = f"{exc.smtp_code} {_text(exc.smtp_error)}"
                        break
                    reason = f"envelope sender {sender} refused: {exc.smtp_code} {_text(exc.smtp_error)}"
                    log.error("delivery_stopped", qfile=qf.id, list=meta.get("list"), reason=reason)
                    meta["done"], meta["failed"] = done, failed
                    sb.move(qf, "shunt", reason=reason, meta=meta)
                    res.disposition = "shunt"
                    res.errors.append(reason)
                    return res
                finished: list[int] = []
                site_failure = None
                for i, rcpt in zip(chunk, rcpts):
                    code, text = replies.get(rcpt, (250, ""))
                    metrics.delivery(code)
                    reason = site_incidents.handover_site_reason(code, text, reply_status(code, text)) \
                        if code // 100 == 5 else None
                    if code // 100 == 2:
                        res.delivered += 1
                        finished.append(i)
                        finished += member_failures(refusals.accept())
                        self._cleared(lc, open_incidents, rcpt)
                    elif reason is not None and lc is not None and site_incidents.address_refusal(
                            reply_status(code, text)):
                        # one address our tables refuse: the member's, unless corroborated (HandoverRefusals)
                        broad = refusals.refuse(rcpt, text, (i, rcpt, code, text, reason))
                        if broad:
                            site_failure = broad
                            pause([item[0] for item in broad])
                    elif reason is not None and lc is not None:
                        site_failure = [(i, rcpt, code, text, reason)]
                        pause([i])
                    elif code // 100 == 5:
                        finished.extend(member_failures([(i, rcpt, code, text, None)]))
                    else:
                        deferred[i] = f"{code} {text}"
                if finished:
                    record(finished)
            finally:
                self.conn.end_commit()
            # Durable before this thread's next final dot (module docstring: power loss). Threads
            # syncing at once share the journal commit; the gate no longer waits for it.
            sb.sync_done(qf)
            if site_failure is not None:
                try:
                    self._site_failure(lc, site_failure)
                except Exception as exc:  # StoreUnavailable, QueueError: the recipients wait all the same
                    log.error("site_incident_not_recorded", "cannot record site incident", list=meta.get("list"),
                              error=exc)
                pause(todo[pos:])   # the rest of this qfile waits for the incident to clear
                break
        self._settle(sb, qf, lc, refusals, member_failures, record, pause, deferred, site_failure is not None)
        res.deferred = len(deferred) + len(paused)
        if deferred or paused:
            return self._defer(sb, qf, meta, deliveries, deferred, lc, res, paused)
        sb.finish(qf)
        log.info("delivered", qfile=qf.id, list=meta.get("list"), sent=res.delivered, failed=res.failed or None)
        return res

    def _recipient_bytes(self, meta, lc, rcpt: str, wire: bytes) -> bytes:
        """The bytes ``rcpt`` is sent: a post gets its member's own one-click unsubscribe fields
        (:func:`listgate.app.posting.add_unsubscribe_headers`); anything else, and an ``xverp``
        batch (one message for many members: the ``mailto:`` form only), goes as it is. Whatever
        signs the final message (DKIM) signs what this returns: a post queued with ``sign_each``
        (:func:`listgate.app.posting.queue_post`) is signed here, per copy, with the ARC
        intake results recorded then. Raises :class:`~listgate.app.signing.DkimKeyError`."""
        if lc is None or meta.get("kind") != "post":
            return wire
        data = posting.add_unsubscribe_headers(wire, self.site, lc, rcpt)
        if "sign_each" in meta:
            data = signing.sign(self.site, lc, data, results=meta["sign_each"] or None)
        return data

    def _store(self, lc):
        from ..store import open_store
        return open_store(self.site, messages.list_key(lc))

    def _cleared(self, lc, open_incidents: dict, rcpt: str) -> None:
        """A 2xx at hand-over to ``rcpt``: incidents covering it (whose pause has ended) clear,
        or count it as their trial (``site_incidents.clear``)."""
        for scope in (site_incidents.ALL, site_incidents.scope_of(rcpt)):
            if scope in open_incidents:
                del open_incidents[scope]
                site_incidents.clear(self.site, lc, scope, f"delivery to {rcpt} accepted at hand-over")

    def _defer(self, sb, qf, meta, deliveries, deferred: dict[int, str], lc, res: Result,
               paused: dict[int, str] | None = None) -> Result:
        """Move the ``deferred`` (4xx, unreachable) and ``paused`` (site incident) recipients to
        ``retry``. Paused time never counts toward ``retry_giveup``; at give-up, recipients our own
        MTA kept refusing or never answered for open a site incident and wait, the others are
        reported as ``soft`` failures."""
        now = clock.now()
        paused = dict(paused or {})
        first = meta.get("first_deferred_at") or now
        retries = int(meta.get("retries") or 0) + 1
        if deferred and now - first >= self.site.conf.runner.retry_giveup:
            ours = {}
            for i, why in deferred.items():
                code = int(why[:3]) if why[:3].isdigit() else 451
                text = why[4:] if why[:3].isdigit() else why
                # Never answered, or a refusal naming our own MTA's tables: the site's. (A 4xx
                # for one recipient while others were taken is that recipient's.)
                if lc is not None and (not why[:3].isdigit() or site_incidents.names_our_mta(text)):
                    ours[i] = f"{code} {text}"
                    continue
                self._report_failure(lc, meta, deliveries[i]["rcpt"], code,
                                     f"{text} (gave up after {retries - 1} retries)", bounce_class="soft")
            if ours:
                site_incidents.open_incident(
                    self.site, lc, self._store(lc), site_incidents.ALL,
                    f"our MTA did not take mail for {self.site.conf.runner.retry_giveup:g} seconds",
                    [f"{deliveries[i]['rcpt']}: {why}" for i, why in ours.items()][:20], None)
                paused.update(ours)
            res.gave_up, res.deferred = len(deferred) - len(ours), len(paused)
            log.warning("gave_up", qfile=qf.id, list=meta.get("list"), recipients=res.gave_up,
                        paused=len(paused) or None)
            deferred = {}
            if not paused:
                sb.finish(qf)
                return res
        new_meta = {k: v for k, v in meta.items() if k not in ("done", "failed")}
        if deferred:
            new_meta.update(first_deferred_at=first, retries=retries,
                            retry_at=now + retry_delay(self.site, retries),
                            last_error=next(iter(deferred.values()))[:300])
        else:
            # Only paused: the incident's pause ends at resume_at; the give-up clock starts over.
            incidents = site_incidents.open_incidents(self._store(lc), lc).values() if lc is not None else ()
            new_meta.pop("first_deferred_at", None)
            new_meta.update(retry_at=min([x.resume_at for x in incidents if x.paused], default=now + retry_delay(
                self.site, 1)), last_error=next(iter(paused.values())), paused=True)
        new_meta.update(deliveries=[deliveries[i] for i in sorted({**deferred, **paused})], done=[])
        sb.move(qf, "retry", reason=new_meta["last_error"], meta=new_meta)
        res.disposition = "retry"
        log.info("deferred", qfile=qf.id, list=meta.get("list"), recipients=len(deferred),
                 paused=len(paused) or None, retry_in=int(new_meta["retry_at"] - now))
        return res


def retry_at(qf) -> float:
    """When a ``retry`` qfile's backoff ends (POSIX seconds); 0 (now) when its
    ``retry_at`` is missing or not a finite number (a hand-edited qfile)."""
    value = qf.meta.get("retry_at")
    return float(value) if finite_time(value) else 0.0


def due(qf) -> bool:
    """True if a ``retry`` qfile's backoff has passed."""
    return retry_at(qf) <= clock.now()
