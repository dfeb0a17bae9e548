"""The bounce life cycle: attribute, score, probe, disable, remind, remove.

Mailman 2.1.5's scheme (DESIGN.md, "Bounce life cycle"), made stricter. One
:class:`BounceEngine` serves every front end (milter, ``listgate inject``,
runner). All time comes from :mod:`listgate.clock`. Reading a bounce (what
it says) is :mod:`listgate.bounce`'s; deciding what it means for a member is
here; what happens after the threshold (probes, disable, notices, removal)
is :mod:`listgate.app.probes`.

Rules, in the order a bounce meets them
---------------------------------------

* **Attribution**: routing decided at RCPT what the ``L-bounces+EXT``
  extension is (:func:`listgate.routing.decide_rcpt`; its ``verp`` result is
  passed in, nothing is decoded twice). A signed member VERP
  (``L-bounces+<member>.<key>.<mac>@D``) names the member, whatever address
  the DSN reports (forwarding changes it);
  a probe token names the probe; so does a DSN whose ``Original-Envelope-Id``
  is a probe ENVID we signed, or whose original Message-ID is a pending
  probe's. Otherwise each failing address of the classification (RFC 3464
  DSN, flufl.bounce detectors) is looked up among the members, and
  :mod:`listgate.app.attribution` says whether it may score them: a signed
  post ENVID naming them, or (members without VERP only) a returned original
  that is a post we sent them; anything else is recorded ``unverified``. Forged, retired-key or malformed VERP extensions attribute
  nothing (routing refuses them at RCPT; if one gets here, the message is
  handled as if it came to plain ``L-bounces@D``).
* **Not a bounce** (human reply, RFC 3834 auto-reply) is never scored:
  auto-replies are dropped, anything else is forwarded to the owners or
  discarded per ``bounce_unrecognized_goes_to_list_owner``. So is a bounce
  with no attributable failure ("unrecognised").
* **Record only**: ``bounce_processing: false``; members not ``enabled``
  (residual bounces); non-members; classes that are not failures (delayed,
  delivered, relayed, expanded, autoreply); classes of weight 0 (``policy``
  by default: the list's mail was refused, not the member's address — these
  never lead to a probe or a disable).
* **Site or domain incident** (:mod:`listgate.app.incidents`,
  :mod:`listgate.app.site_incidents`): recorded as ``incident``, not scored.
* **Scoring**: bounce info older than ``bounce_info_stale_after`` restarts the
  score; at most one increment per member per UTC day (``clock.day()``); the
  weight is ``bounce_weights[class]``; evidence is kept for scored bounces.
  While a probe is pending, and at the threshold: :mod:`listgate.app.probes`.
* **Reports for the postmaster** (:mod:`listgate.bounce.reports`): feedback
  reports that are not complaints (``auth-failure``, ``not-spam``, ``other``),
  SMTP TLS reports and DMARC aggregate reports (classification kind
  ``report``) are forwarded to the site's postmaster and change nothing for
  any member. A failure of class ``site`` (our MTA could not get the TLS,
  MTA-STS or DANE security it requires) is recorded, never scored; the
  postmaster is told once per destination domain and day.
* **Complaints** (ARF, RFC 5965): :mod:`listgate.app.complaints` (they act
  only when authenticated).

Durability and ordering
-----------------------

Every call runs in one ``store.transaction()``. Follow-up mail is collected
while the state changes are made and written to the ``virgin`` queue *inside*
the transaction, just before it commits. If the queue write fails
(:class:`~listgate.queue.QueueError`) nothing commits and the caller answers
4xx: the MTA retries the bounce later. If the process dies after the qfiles
are written but before the commit, the bounce is retried and the mail is
written again: a duplicate notice (or an extra probe whose token was never
stored, so a bounce of it is refused at RCPT) is the worst case; a notice is
never lost and no state claims a mail was sent that was not.
"""
from __future__ import annotations

from typing import Iterable

from .. import addresses, clock, messages, metrics, verp
from ..bounce.classify import Classification, Failure, classify
from ..log import events
from ..bounce.reports import postmaster_address
from ..config.schema import DAY
from ..store import Member, NotAMember, open_store
from . import attribution, complaints, incidents, notices, probes
from .bounce_run import BounceAction, BounceOutcome, Run

__all__ = ["BounceEngine", "BounceOutcome", "BounceAction", "FAILURE_RANK"]

log = events("listgate.app.bounces")

# Which failure decides when one message reports several for one address
# (the same order classification uses to reduce a VERP'd report).
FAILURE_RANK = ("hard", "policy", "soft", "complaint", "unknown", "site",
                "delayed", "relayed", "expanded", "delivered", "autoreply", "report")
# Not failures of the address: recorded, never scored (DESIGN.md, "Bounce life cycle" 2).
IGNORED_CLASSES = ("delayed", "delivered", "relayed", "expanded", "autoreply", "site", "report")


def _top(failures: Iterable[Failure]) -> Failure | None:
    """The failure that decides for one address (hard beats soft beats ... autoreply)."""
    def rank(f: Failure) -> int:
        return FAILURE_RANK.index(f.bounce_class) if f.bounce_class in FAILURE_RANK else len(FAILURE_RANK)
    items = sorted(failures, key=rank)
    return items[0] if items else None


def _find_member(store, address: str) -> Member | None:
    """The member ``address`` names under the list's case rule; on a case-sensitive list, a
    unique match without case as a fallback.

    Local parts are case-sensitive in principle (RFC 5321 section 2.4), but
    MTAs and DSN writers fold them (VERP addresses come back lower-cased): on
    a list that keeps case, a unique case-insensitive match is the member.
    Two members differing only in case make it ambiguous: no attribution.
    """
    member = store.get_member(address)
    if member is not None or not store.case_sensitive_local:
        return member
    try:
        wanted = addresses.match_key(address)
    except ValueError:
        return None
    found = [m for m in store.members() if addresses.match_key(m.key) == wanted]
    return found[0] if len(found) == 1 else None


class BounceEngine:
    """Scoring and the life cycle for every list of ``site`` (docs/ARCHITECTURE.md, "Bounce engine").

    Each public call commits its store changes in one transaction and writes
    its follow-up mail to the ``virgin`` queue before returning. Raises
    :class:`~listgate.store.StoreUnavailable` or
    :class:`~listgate.queue.QueueError` when it cannot: front ends answer 4xx.
    """

    def __init__(self, site):
        self.site = site

    # -- inbound bounces ------------------------------------------------------
    def handle_bounce(self, lc, msg: bytes, address: addresses.ListAddress, *, verp_result=None,
                      envelope_sender: str | None, mta_queue_id: str | None = None) -> BounceOutcome:
        """Handle mail that reached ``L-bounces[+EXT]@D`` (``address``, role ``bounces``).

        ``msg`` is the raw message. ``verp_result``: what routing decided the
        extension is (the :class:`~listgate.verp.VerpResult` of the recipient's
        :class:`~listgate.routing.RcptDecision`, ``decision.verp``); required
        when ``address`` has an extension (ValueError otherwise): the engine
        never decodes a VERP address itself. A probe token live at RCPT is
        still checked unspent here, in the transaction. Returns what happened
        per address.
        """
        verp_member = probe_token = probe_member = None
        verp_note = ""
        if address.extension:
            if verp_result is None:
                raise ValueError(f"no routing decision for the VERP extension of {address.list_key}")
            decoded = verp_result
            if decoded.kind in ("member", "unsigned"):
                verp_member = decoded.member
            elif decoded.kind == "probe":
                probe_token = decoded.token
                probe_member = decoded.pending.payload.get("member") if decoded.pending else None
            elif decoded.error == "unknown-token":
                # A used or expired probe token: single use, so it attributes nothing
                # (a second bounce of one probe must not disable or score twice).
                probe_token = decoded.token
            else:
                verp_note = f"VERP extension refused ({decoded.error})"
        rcpt = addresses.make(address.name, address.domain, "bounces", address.extension)
        result = classify(msg, envelope_recipient=rcpt, verp_address=verp_member or probe_member,
                          verp_kind="probe" if probe_member else "verp")
        run = Run(self, lc, result.message_id)
        run.outcome.classification = result
        with run.store.transaction():
            self._site_problem(run, result, msg, rcpt, envelope_sender)
            if not result.is_bounce:
                self._not_a_bounce(run, result, msg, rcpt, envelope_sender)
            elif probe_token:
                probes.probe_bounce(run, probe_token, _top(result.failures), msg)
            elif verp_member:
                self._verp_bounce(run, verp_member, result, msg)
            else:
                original = attribution.read_original(msg)
                token = (verp.envid_probe_token(self.site, lc, original.envid)
                         or probes.probe_by_message_id(run, result.original_message_id))
                if token:
                    probes.probe_bounce(run, token, _top(result.failures), msg)
                else:
                    self._plain_bounce(run, result, msg, rcpt, envelope_sender, verp_note, original)
            run.flush()
        top = _top(result.failures)
        metrics.inc("bounces", source="mail",
                    bounce_class=top.bounce_class if top else "unknown" if result.is_bounce else "not_a_bounce")
        log.info("bounce", list=run.key, queue_id=mta_queue_id, outcome=run.outcome.summary())
        return run.outcome

    def register_failure(self, lc, address: str, bounce_class: str, status: str | None, diagnostic: str, *,
                         attribution: str = "smtp", message: bytes | None = None,
                         probe_token: str | None = None) -> BounceOutcome:
        """A failure the runner saw itself (a 5xx when handing mail to the MTA).

        ``address`` the recipient, ``bounce_class`` one of the classification
        classes, ``status`` the enhanced status code (RFC 3463) or None,
        ``diagnostic`` the SMTP reply text; ``message`` what was being sent
        (kept as evidence; a short report is made up when None).
        ``probe_token``: the message was a probe, so this is a probe bounce.
        """
        failure = Failure(address=address, bounce_class=bounce_class, status=status,
                          diagnostic=diagnostic or "", attribution=attribution,
                          reason="reported by the runner at hand-over to the MTA")
        evidence = message or (
            f"Subject: delivery failure at hand-over\nContent-Type: text/plain; charset=utf-8\n\n"
            f"Recipient: {address}\nStatus: {status or '-'}\nDiagnostic: {diagnostic}\n").encode("utf-8")
        run = Run(self, lc)
        with run.store.transaction():
            if probe_token:
                probes.probe_bounce(run, probe_token, failure, evidence)
            else:
                member = _find_member(run.store, address)
                if member is None:
                    self._non_member(run, address, failure)
                else:
                    self._member_failure(run, member, failure, evidence)
            run.flush()
        metrics.inc("bounces", bounce_class=bounce_class, source="handover")
        return run.outcome

    # -- confirmations and periodic work ----------------------------------------
    def re_enable(self, lc, token: str) -> Member:
        """Confirm a ``re_enable`` token: the member is enabled, bounce info cleared.

        Raises :class:`~listgate.store.UnknownToken` (unknown, used or expired
        token) or :class:`~listgate.store.NotAMember` (removed meanwhile). A
        member whose delivery was since changed by a person (``by_user``,
        ``by_admin``) keeps that status; only the bounce info is cleared.
        """
        run = Run(self, lc)
        with run.store.transaction():
            record = run.store.confirm_pending(token, "re_enable")
            member = run.store.get_member(record.payload.get("member", ""))
            if member is None:
                raise NotAMember(f"{record.payload.get('member')} is no longer a member of {run.key}")
            if member.delivery_status == "by_bounce":
                member.delivery_status = "enabled"
                member.status_changed_at = run.now
            probes.clear_bounce_info(member)
            run.store.save_member(member)
            run.record(member.key, "re_enabled", None, bounce_class="none", attribution="confirm")
        return member

    def run_periodic(self, lc) -> list[str]:
        """Disabled-member notices and removals that are due; returns one line per action.

        Expired probes need nothing here: bounces are not scored while a probe
        is pending and the score was reset when it was sent, so at expiry the
        member is enabled with scoring from zero. Eviction of expired pending
        records (all types) is the runner's job.
        """
        key = messages.list_key(lc)
        store = open_store(self.site, key)
        interval = lc.bounce_you_are_disabled_warnings_interval
        done: list[str] = []
        for member in store.members("by_bounce"):
            if member.notices_left is None or member.last_notice_at is None:
                continue  # disabled by a person with status by_bounce: not in this life cycle
            if clock.now() - member.last_notice_at < interval:
                continue
            run = Run(self, lc)
            with run.store.transaction():
                # Re-read under the write lock: another runner may have acted.
                current = run.store.get_member(member.key)
                if (current is None or current.delivery_status != "by_bounce" or current.notices_left is None
                        or current.last_notice_at is None or run.now - current.last_notice_at < interval):
                    continue
                if current.notices_left > 0:
                    probes.send_disabled_notice(run, current)
                    run.store.save_member(current)
                    run.record(current.key, "notice_sent", None, bounce_class="none", attribution="periodic",
                               detail=f"{current.notices_left} notices left")
                    line = f"notice to {current.key} ({current.notices_left} left)"
                else:
                    probes.remove(run, current, "no re-enable confirmation after the last disabled notice",
                                 "periodic")
                    line = f"removed {current.key}"
                run.flush()
            done.append(line)
        return done

    # -- the rules ------------------------------------------------------------
    def _not_a_bounce(self, run: Run, result: Classification, msg: bytes, rcpt: str,
                      envelope_sender: str | None) -> None:
        if result.kind == "autoreply":
            run.record(None, "ignored", None, bounce_class="autoreply",
                       detail="auto-reply (RFC 3834) to a bounce address")
            return
        if result.kind == "report":
            failure = _top(result.failures)
            reason = failure.reason if failure else "a report for the postmaster"
            run.send(notices.to_postmaster(run.lc, postmaster_address(self.site), msg, recipient=rcpt,
                                           envelope_sender=envelope_sender or "", reason=reason),
                     [{"rcpt": postmaster_address(self.site), "sender": ""}], "postmaster_forward")
            run.record(None, "postmaster", failure, bounce_class="report", detail=reason)
            return
        self._unrecognized(run, msg, rcpt, envelope_sender, "not a bounce (a human reply?): "
                           + "; ".join(result.notes[:3]), bounce_class="unknown")

    def _site_problem(self, run: Run, result: Classification, msg: bytes, rcpt: str,
                      envelope_sender: str | None) -> None:
        """Class ``site`` failures: tell the postmaster once per destination domain and day."""
        for failure in result.failures:
            if failure.bounce_class != "site":
                continue
            domain = incidents.domain_of(failure.address or "") or "-"
            if run.store.remember("site_problem", domain, DAY):
                postmaster = postmaster_address(self.site)
                run.send(notices.to_postmaster(run.lc, postmaster, msg, recipient=rcpt,
                                               envelope_sender=envelope_sender or "", reason=failure.reason),
                         [{"rcpt": postmaster, "sender": ""}], "postmaster_notice")

    def _unrecognized(self, run: Run, msg: bytes, rcpt: str, envelope_sender: str | None, reason: str,
                      *, bounce_class: str = "unknown", failure: Failure | None = None) -> None:
        if run.lc.bounce_unrecognized_goes_to_list_owner:
            run.send(notices.unrecognized(run.lc, msg, recipient=rcpt, envelope_sender=envelope_sender or "",
                                          reason=reason), run.to_owners(), "forward")
            action = "forwarded"
        else:
            action = "discarded"
        run.record(None, action, failure, bounce_class=bounce_class, detail=reason)

    def _verp_bounce(self, run: Run, member_address: str, result: Classification, msg: bytes) -> None:
        failure = _top(result.failures) or Failure(
            address=member_address, bounce_class="unknown", status=None, diagnostic="",
            attribution="verp", reason="bounce to a member VERP address without a parsable failure")
        member = _find_member(run.store, member_address)
        if member is None:
            run.record(member_address, "non_member", failure, attribution="verp")
            return
        self._member_failure(run, member, failure, msg, attribution="verp")

    def _plain_bounce(self, run: Run, result: Classification, msg: bytes, rcpt: str,
                      envelope_sender: str | None, verp_note: str, original: attribution.Original) -> None:
        by_address: dict[str, list[Failure]] = {}
        spelt: dict[str, str] = {}      # one address under the list's case rule -> its first spelling
        for f in result.failures:
            if f.address:
                try:
                    same = addresses.match_key(f.address, run.store.case_sensitive_local)
                    by_address.setdefault(spelt.setdefault(same, addresses.normalize(f.address)), []).append(f)
                except ValueError:
                    pass  # not an address: nothing to attribute
        if not by_address:
            reason = "no failing address found" + (f"; {verp_note}" if verp_note else "")
            self._unrecognized(run, msg, rcpt, envelope_sender, reason, failure=_top(result.failures))
            return
        envid_address = verp.envid_member(self.site, run.lc, original.envid, list(by_address))
        for address, failures in sorted(by_address.items()):
            failure = _top(failures)
            member = _find_member(run.store, address)
            if member is None:
                self._non_member(run, address, failure)
            elif address == envid_address:
                self._member_failure(run, member, failure, msg, attribution="envid",
                                     sample=attribution.summary(failure, "envid"))
            elif failure.bounce_class == "complaint" or not self._plain_may_score(run, member, failure, original):
                self._member_failure(run, member, failure, msg, unverified=failure.bounce_class != "complaint")
            else:
                self._member_failure(run, member, failure, msg, attribution="post",
                                     sample=attribution.summary(failure, "post"))

    def _plain_may_score(self, run: Run, member: Member, failure: Failure, original) -> bool:
        """Whether a plain-address bounce naming ``member`` may score them (:mod:`.attribution`)."""
        if run.lc.verp_mode != "signed":
            return True                     # xverp: unsigned VERP by choice, forgeable anyway
        if attribution.gets_verp(run, member):
            return False
        return attribution.sent_to(run, member, original)

    def _non_member(self, run: Run, address: str, failure: Failure) -> None:
        run.record(address, "non_member", failure)
        if failure is not None and failure.bounce_class in ("hard", "soft", "unknown"):
            # A confirmation request to this address bounced: nobody can confirm it.
            from .subscriptions import cancel_for_bounce
            cancel_for_bounce(run, address)

    def _member_failure(self, run: Run, member: Member, failure: Failure, msg: bytes,
                        attribution: str | None = None, *, unverified: bool = False,
                        sample: bytes | None = None) -> None:
        """Score, ignore or record ``failure`` of ``member``; ``msg`` is kept as evidence.

        A probe attaches ``sample`` when given (a summary, for bounces that did not
        reach the member's VERP address: never a message an outsider chose), else
        ``msg``. ``unverified``: a plain-address bounce that may not score
        (:mod:`listgate.app.attribution`): recorded only, after the same checks."""
        lc = run.lc
        cls = failure.bounce_class
        if not lc.bounce_processing:
            run.record(member.key, "recorded", failure, attribution=attribution,
                       detail="bounce processing is off for this list")
            return
        if member.delivery_status != "enabled":
            run.record(member.key, "residual", failure, attribution=attribution)
            return
        if cls == "complaint":
            complaints.complaint(run, member, failure, msg, attribution)
            return
        if cls in IGNORED_CLASSES:
            run.record(member.key, "ignored", failure, attribution=attribution)
            return
        if unverified:      # never counted towards a domain incident either: anyone can send it
            run.record(member.key, "unverified", failure, attribution=attribution,
                       detail=f"not scored: no VERP, ENVID or post of ours proves it: {failure.diagnostic}")
            return
        if incidents.site_incident(run, member, failure, msg) or incidents.domain_incident(run, member, failure, msg):
            run.record(member.key, "incident", failure, attribution=attribution)
            return
        weight = float(lc.bounce_weights.get(cls, 0.0) or 0.0)
        if weight <= 0:
            run.record(member.key, "recorded", failure, attribution=attribution,
                       detail=f"weight of class {cls} is 0: {failure.diagnostic}")
            return
        if probes.outstanding_probe(run, member.key):
            run.record(member.key, "probe_outstanding", failure, attribution=attribution)
            return
        if member.last_bounce_at is not None and run.now - member.last_bounce_at > lc.bounce_info_stale_after:
            member.bounce_score = 0.0  # stale bounce info: start over (Mailman's bounce_info_stale_after)
        today = clock.day(run.now)
        if member.last_bounce_day == today:
            run.record(member.key, "same_day", failure, attribution=attribution)
            return
        member.bounce_score += weight
        member.last_bounce_day = today
        member.last_bounce_at = run.now
        run.store.add_evidence(member.key, msg, run.now)
        if lc.bounce_notify_owner_on_bounce_increment:
            run.send(notices.owner_member_notice(lc, member.address, "scored",
                                                 f"score {member.bounce_score:g} of {lc.bounce_score_threshold:g}: "
                                                 f"{cls} {failure.status or ''} {failure.diagnostic}", [msg]),
                     run.to_owners(), "owner_notice")
        if member.bounce_score >= lc.bounce_score_threshold:
            probes.send_probe(run, member, sample or msg)
            run.store.save_member(member)
            run.record(member.key, "probe_sent", failure, attribution=attribution)
        else:
            run.store.save_member(member)
            run.record(member.key, "scored", failure, attribution=attribution,
                       detail=f"score {member.bounce_score:g}: {failure.diagnostic}")
