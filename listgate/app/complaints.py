"""Spam complaints (ARF feedback reports, RFC 5965): they act only when authenticated.

A complaint of type ``abuse``, ``fraud`` or ``virus`` naming a member takes the
list's ``complaint_action`` (``disable``: delivery ``by_admin``; a complaint
says nothing about the address, so the bounce notices and removal do not
apply; ``unsubscribe``: the member is removed) only when an outsider could
not have made it (issue 20, defect 3):

* it reached the member's signed VERP address (feedback loops send reports
  to the envelope sender of the reported message), or
* its attached original is the member's own copy of a post of ours: its
  ``Return-Path`` is the member's signed VERP address, or its
  ``List-Unsubscribe`` the member's signed one-click token
  (:func:`listgate.app.attribution.quotes_their_copy`). A post's ``List-Id``
  and ``Message-ID`` alone are not enough: every member and every archive
  reader knows them.

Otherwise nothing changes for the member: the complaint is recorded as
``complaint_unverified`` and the owners are told, with the report attached.
With ``complaint_action: record`` every complaint is only recorded.

Called by :class:`listgate.app.bounces.BounceEngine` inside its transaction,
with its per-call context ``run`` (see :mod:`listgate.app.probes`).
"""
from __future__ import annotations

from ..bounce.classify import Failure
from ..store import Member
from . import attribution, notices


def complaint(run, member: Member, failure: Failure, msg: bytes, attributed_by: str | None) -> None:
    """Act on ``member``'s complaint per ``complaint_action`` if authenticated (module docstring)."""
    lc = run.lc
    action = lc.complaint_action
    if action == "record":
        run.record(member.key, "complaint", failure, attribution=attributed_by)
        return
    if attributed_by != "verp" and not attribution.quotes_their_copy(run, member, msg):
        what = (f"nothing done: the report did not come to {member.address}'s VERP address and does not "
                f"quote their own copy of a post (complaint_action {action} needs one or the other)")
        run.send(notices.owner_complaint(lc, member.address, what, msg), run.to_owners(), "owner_notice")
        run.record(member.key, "complaint_unverified", failure, attribution=attributed_by,
                   detail="unauthenticated complaint: recorded, owners told")
        return
    if action == "disable":
        member.delivery_status = "by_admin"
        member.status_changed_at = run.now
        run.store.save_member(member)
        what = "delivery disabled (by_admin)"
    else:
        run.store.remove_member(member.key)
        what = "member unsubscribed"
    run.send(notices.owner_complaint(lc, member.address, what, msg), run.to_owners(), "owner_notice")
    run.record(member.key, "complaint", failure, attribution=attributed_by or "original", detail=what)
