"""The verdicts on refusals at hand-over, for :class:`listgate.runner.delivery.Deliverer`.

A 5xx for one recipient is reported to the bounce engine (scored as the member's);
a refusal that names our own MTA's tables is the member's or the site's by the rule of
:class:`listgate.app.site_incidents.HandoverRefusals`; a post back from ``retry`` is not
handed to recipients who are no longer members.
"""
from __future__ import annotations

from .. import messages
from ..app import site_incidents
from ..bounce.reports import postmaster_address
from ..bounce.status import reply_status
from ..log import events
from ..store import StoreUnavailable

log = events("listgate.runner.delivery")


def failure_class(status: str, text: str) -> str:
    """Bounce class of a 5xx at hand-over, by the classifier's rule
    (:func:`listgate.bounce.status.classify_failure`: 5.7.x spam/DMARC refusals are
    ``policy``, address failures ``hard``)."""
    from ..bounce.status import classify_failure
    cls = classify_failure("failed", status, text)[0]
    return cls if cls in ("hard", "soft", "policy") else "hard"


class Verdicts:
    """Mixin of :class:`~listgate.runner.delivery.Deliverer` (needs ``site``, ``conn``, ``engine``, ``_store``)."""

    def _site_failure(self, lc, items: list) -> None:
        """Open (refresh) the site incident for ``items``: ``(index, rcpt, code, text, reason)``."""
        _, rcpt, code, text, reason = items[0]
        log.warning("refused_site_incident", "refused at hand-over, site incident", list=messages.list_key(lc),
                    rcpt=rcpt, reply=f"{code} {text}"[:200], recipients=len(items))
        # The next try needs a new connection: after the admin's fix and `postfix reload`, the
        # smtpd serving this session keeps the old configuration until the session ends.
        self.conn.close()
        if len(items) > 1:
            reason += f" (refused: {', '.join(item[1] for item in items)})"
        site_incidents.open_incident(self.site, lc, self._store(lc), site_incidents.ALL, reason,
                                     [f"{r}: {c} {t}" for _, r, c, t, _ in items], None)

    def _settle(self, sb, qf, lc, refusals, member_failures, record, pause, deferred: dict, site_failure: bool) -> None:
        """The run's refusals naming our tables still without a verdict (``HandoverRefusals``): the
        members' if a recipient was accepted or the listener takes the postmaster; paused with a
        site incident if it refuses that too; deferred if it cannot be asked now."""
        items = refusals.settle()
        if not items:
            return
        if site_failure:             # this run opened a site incident: they wait with the rest
            pause([item[0] for item in items])
            return
        code = 250 if refusals.accepted else self.conn.takes_recipient(postmaster_address(self.site))
        if code is not None and code // 100 == 2:
            record(member_failures(items))
            sb.sync_done(qf)
        elif code is not None and code // 100 == 5:
            pause([item[0] for item in items])
            try:
                self._site_failure(lc, items)
            except Exception as exc:  # StoreUnavailable, QueueError: the recipients wait all the same
                log.error("site_incident_not_recorded", "cannot record site incident", list=messages.list_key(lc),
                          error=exc)
        else:
            for i, _, code, text, _ in items:
                deferred[i] = f"{code} {text}"

    def _not_members(self, lc, meta, deliveries, todo: list[int]) -> set[int]:
        """Recipients of a post back from ``retry`` who are no longer members (removed since the
        fan-out): not handed over. Only posts (notices go to owners and the postmaster, not
        members); only at a retry (fan-out chose members a moment ago). Store unavailable: all stay."""
        if lc is None or meta.get("kind") != "post" or "retry_at" not in meta or not todo:
            return set()
        try:
            store = self._store(lc)
            gone = {i for i in todo if store.get_member(deliveries[i]["rcpt"]) is None}
        except StoreUnavailable as exc:
            log.warning("membership_not_checked", "cannot check membership at retry", list=meta.get("list"),
                        error=exc)
            return set()
        for i in sorted(gone):
            log.info("not_a_member", "no longer a member, not handed over", list=meta.get("list"),
                     rcpt=deliveries[i]["rcpt"])
        return gone

    def _report_failure(self, lc, meta, rcpt: str, code: int, text: str, bounce_class: str | None = None) -> bool:
        """Tell the bounce engine; False if it cannot record it now (the recipient is retried)."""
        status = reply_status(code, text)
        if lc is None:
            log.warning("refused_non_list", "refused recipient of a non-list message", rcpt=rcpt,
                        reply=f"{code} {text}")
            return True
        try:
            self.engine.register_failure(lc, rcpt, bounce_class or failure_class(status, text), status,
                                         f"{code} {text}"[:1000], attribution="smtp",
                                         probe_token=meta.get("probe_token"))
        except Exception as exc:  # StoreUnavailable, QueueError, or a bug: never lose the recipient
            log.error("failure_not_registered", "cannot register failure, will retry", rcpt=rcpt, error=exc)
            return False
        log.info("refused", "refused at hand-over", list=meta.get("list"), rcpt=rcpt, status=status,
                 reply=f"{code} {text}"[:200])
        return True
