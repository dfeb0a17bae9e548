"""The bounce life cycle after the threshold: probes, disable, disabled notices, removal.

Called by :class:`listgate.app.bounces.BounceEngine` inside its store
transaction, with its per-call context ``run`` (``run.lc``, ``run.store``,
``run.site``, ``run.now``, ``run.record(...)`` to record an event,
``run.send(...)`` to queue mail at commit). Rules (DESIGN.md, "Bounce life cycle"):

* **Threshold** (``score >= bounce_score_threshold``): a probe goes to the
  member, envelope sender and ``From`` ``L-bounces+TOKEN@D`` with a fresh
  ``probe`` pending record (lifetime ``pending.probe``), the last bounce
  attached; the score is reset.
* **Outstanding probe**: while a member's probe is pending, their other
  bounces are recorded (``probe_outstanding``), not scored: the probe
  decides. This is what makes "no probe bounce: scoring starts from zero" hold
  when the probe expires, with nothing to do at expiry.
* **Probe bounce** (hard, soft or unknown class; by VERP token, DSN, or
  :meth:`~listgate.app.bounces.BounceEngine.register_failure` with
  ``probe_token``): the token is confirmed (single use), the member is
  disabled ``by_bounce`` and gets notice 1 of ``bounce_you_are_disabled_warnings``
  with a ``re_enable`` token (``L-confirm+TOKEN@D``);
  :meth:`~listgate.app.bounces.BounceEngine.run_periodic` sends one more every
  ``..._interval`` (refreshing the token's lifetime so it outlives the next
  notice), and removes the member one interval after the last. With 0
  warnings the member gets one last notice and is removed at once. A probe
  refused for policy (5.7.x) does not disable: policy bounces never do.
* **Probe delivered**: probes go out with ``NOTIFY=SUCCESS,FAILURE`` and a
  signed ``ENVID`` carrying the token (RFC 3461; ``listgate.runner.delivery``).
  A ``delivered``, ``relayed`` or ``expanded`` DSN for the probe (by its VERP
  token, its ENVID or its Message-ID) spends the token at once: the member
  stays enabled, scoring starts over, the event is ``probe_delivered``.
* **Sample**: the probe attaches the bounce that crossed the threshold only
  if it reached the member's VERP address; otherwise a text summary of it
  (:func:`listgate.app.attribution.summary`), never a message an outsider chose.
"""
from __future__ import annotations

from .. import messages, metrics, verp
from ..bounce.classify import Failure
from ..config.schema import DAY
from ..store import Member, UnknownToken
from . import notices, site_incidents

# A probe bounce of these classes disables; a policy refusal of the probe does not.
PROBE_FAILURE_CLASSES = ("hard", "soft", "unknown")
# A success DSN (RFC 3464 Action, asked for with NOTIFY=SUCCESS, RFC 3461) closes the probe at once.
PROBE_SUCCESS_CLASSES = ("delivered", "relayed", "expanded")


def outstanding_probe(run, member_key: str) -> bool:
    """Whether ``member_key`` has a pending probe (their other bounces are then not scored)."""
    return any(r.payload.get("member") == member_key for r in run.store.pending("probe"))


def probe_by_message_id(run, original_message_id: str | None) -> str | None:
    """The token of the pending probe a DSN quotes by Message-ID (a probe bounce without VERP)."""
    if not original_message_id:
        return None
    wanted = original_message_id.strip()
    for record in run.store.pending("probe"):
        if record.payload.get("message_id") == wanted:
            return record.token
    return None


def send_probe(run, member: Member, sample: bytes) -> None:
    """Queue a probe to ``member`` with a fresh ``probe`` pending record; the score starts over."""
    lc = run.lc
    message_id = messages.new_message_id(lc.domain)
    record = run.store.add_pending("probe", {"member": member.key, "address": member.address,
                                             "message_id": message_id, "score": member.bounce_score},
                                   run.site.conf.pending.probe)
    probe_address = verp.probe_bounce_address(lc, record.token)
    msg = notices.probe(lc, member.address, probe_address, score=member.bounce_score,
                        sample=sample, message_id=message_id)
    run.send(msg, [{"rcpt": member.address, "sender": probe_address}], "probe",
             {"probe_token": record.token})
    member.bounce_score = 0.0
    metrics.inc("probes")


def probe_bounce(run, token: str, failure: Failure | None, msg: bytes) -> None:
    """A bounce of probe ``token`` (``failure``: the one that decides, None if none was parsable).

    Spends the token (single use, checked here, under the transaction's lock: a
    token routing found live at RCPT may have been spent since) and disables
    the member; a policy refusal or a class that is not a failure does not.
    """
    record = run.store.peek_pending(token)
    member_key = record.payload.get("member") if record is not None and record.type == "probe" else None
    failure = failure or Failure(
        address=member_key, bounce_class="unknown", status=None, diagnostic="",
        attribution="probe", reason="bounce to a probe address without a parsable failure")
    if member_key is None:
        run.record(failure.address, "probe_unknown", failure, attribution="probe",
                   detail="probe token unknown, used or expired")
        return
    if not run.lc.bounce_processing:
        run.record(member_key, "recorded", failure, attribution="probe",
                   detail="bounce processing is off for this list")
        return
    if failure.bounce_class in PROBE_SUCCESS_CLASSES:
        try:
            run.store.confirm_pending(token, "probe")
        except UnknownToken:
            run.record(member_key, "probe_unknown", failure, attribution="probe")
            return
        run.record(member_key, "probe_delivered", failure, attribution="probe",
                   detail=f"the probe was {failure.bounce_class} (success DSN): the member stays enabled")
        return
    if failure.bounce_class not in PROBE_FAILURE_CLASSES:
        action = "probe_policy" if failure.bounce_class == "policy" else "ignored"
        run.record(member_key, action, failure, attribution="probe")
        return
    if site_incidents.covering(run.store, run.lc, member_key) is not None:
        # The site's failure, not the member's: the probe says nothing (it stays pending).
        run.record(member_key, "incident", failure, attribution="probe")
        return
    try:
        run.store.confirm_pending(token, "probe")  # single use: a second bounce finds nothing
    except UnknownToken:
        run.record(member_key, "probe_unknown", failure, attribution="probe")
        return
    member = run.store.get_member(member_key)
    if member is None:
        run.record(member_key, "non_member", failure, attribution="probe")
        return
    if member.delivery_status != "enabled":
        run.record(member_key, "residual", failure, attribution="probe")
        return
    run.store.add_evidence(member.key, msg, run.now)
    disable(run, member, failure)


def disable(run, member: Member, failure: Failure) -> None:
    """Disable ``member`` ``by_bounce`` after their probe bounced: notice 1 (or removal with 0 warnings)."""
    lc = run.lc
    metrics.inc("disabled")
    member.delivery_status = "by_bounce"
    member.status_changed_at = run.now
    member.bounce_score = 0.0
    reason = f"the probe bounced ({failure.bounce_class} {failure.status or ''} {failure.diagnostic})".strip()
    warnings = lc.bounce_you_are_disabled_warnings
    if warnings == 0:
        run.send(notices.removed_notice(lc, member.address), run.to_member(member.address), "removed_notice")
        run.record(member.key, "disabled", failure, attribution="probe")
        remove(run, member, reason, "probe")
        return
    record = run.store.add_pending("re_enable", {"member": member.key}, token_lifetime(lc, warnings))
    member.re_enable_token = record.token
    member.notices_left = warnings
    send_disabled_notice(run, member)
    run.store.save_member(member)
    if lc.bounce_notify_owner_on_disable:
        evidence = [m for _, m in run.store.evidence(member.key)]
        run.send(notices.owner_member_notice(lc, member.address, "disabled", reason, evidence),
                 run.to_owners(), "owner_notice")
    run.record(member.key, "disabled", failure, attribution="probe")


def token_lifetime(lc, notices_left: int) -> float:
    # Until the removal that follows the remaining notices, plus a day of slack
    # for a periodic run that comes late.
    return (notices_left + 1) * lc.bounce_you_are_disabled_warnings_interval + DAY


def send_disabled_notice(run, member: Member) -> None:
    """Next disabled notice; refreshes (or, if lost, remakes) the re-enable token."""
    lc = run.lc
    total = lc.bounce_you_are_disabled_warnings
    member.notices_left = max(0, (member.notices_left or 0) - 1)
    lifetime = token_lifetime(lc, member.notices_left)
    try:
        if not member.re_enable_token:
            raise UnknownToken("no token")
        run.store.repend(member.re_enable_token, lifetime)
    except UnknownToken:
        member.re_enable_token = run.store.add_pending("re_enable", {"member": member.key}, lifetime).token
    member.last_notice_at = run.now
    removal_in = (member.notices_left + 1) * lc.bounce_you_are_disabled_warnings_interval
    run.send(notices.disabled_notice(lc, member.address, member.re_enable_token,
                                     notice=total - member.notices_left, notices=total, removal_in=removal_in),
             run.to_member(member.address), "disabled_notice")


def remove(run, member: Member, reason: str, attribution: str) -> None:
    """Remove ``member`` for bouncing; their re-enable token goes, the owners are told if configured."""
    lc = run.lc
    evidence = [m for _, m in run.store.evidence(member.key)]  # removal deletes it
    if member.re_enable_token:
        try:
            run.store.confirm_pending(member.re_enable_token, "re_enable")
        except UnknownToken:
            pass
    run.store.remove_member(member.key)
    metrics.inc("removed")
    if lc.bounce_notify_owner_on_removal:
        run.send(notices.owner_member_notice(lc, member.address, "removed", reason, evidence),
                 run.to_owners(), "owner_notice")
    run.record(member.key, "removed", None, bounce_class="none", attribution=attribution, detail=reason)


def clear_bounce_info(member: Member) -> None:
    """Forget ``member``'s score, notices and re-enable token (a confirmed re-enable)."""
    member.bounce_score = 0.0
    member.last_bounce_day = None
    member.last_bounce_at = None
    member.notices_left = None
    member.last_notice_at = None
    member.re_enable_token = None
