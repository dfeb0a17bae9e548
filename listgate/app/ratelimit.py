"""How much mail email commands may make a list send (issue 20: forged ``-request`` mail).

A forged ``L-request`` message (``From: victim``, "unsubscribe", "confirm
<made-up token>") makes the list write to the victim: confirmation requests
and command replies. Both are limited (``commands`` in the site file):

* at most ``max_replies_per_address`` to one address per ``replies_window``
  (per list), and
* at most ``max_replies_per_list`` from one list per ``replies_window``, to
  anyone (0 turns a limit off).

Each sent mail takes one slot, a fact the store remembers for the window
(``store.remember(kind, "ADDRESS #n", window)``: the window runs from each
slot's first use). Past the limit nothing is sent, the command is not acted
on (no pending record is made), and the burst is logged once per address (or
list) and window.
"""
from __future__ import annotations


from ..log import events
from . import notices

log = events("listgate.app.ratelimit")


def may_send(site, lc, store, address: str) -> bool:
    """Take a slot for one command reply or confirmation request to ``address``; False past a limit.

    Raises :class:`~listgate.store.StoreUnavailable` when the store cannot be written (the runner retries).
    """
    conf = site.conf.commands
    window = conf.replies_window
    who = address.strip().lower()
    if not _take(store, "reply_to", who, conf.max_replies_per_address, window):
        _burst(store, "address", who, lc, conf.max_replies_per_address, window)
        return False
    if not _take(store, "reply_from_list", "", conf.max_replies_per_list, window):
        _burst(store, "list", notices.address(lc), lc, conf.max_replies_per_list, window)
        return False
    return True


def _take(store, kind: str, key: str, limit: int, window: float) -> bool:
    if limit <= 0:
        return True
    return any(store.remember(kind, f"{key} #{n}", window) for n in range(limit))


def _burst(store, what: str, key: str, lc, limit: int, window: float) -> None:
    if store.remember("reply_burst", f"{what} {key}", window):
        log.warning("rate_limited", "command replies rate-limited", list=notices.address(lc), per=what, to=key,
                    limit=limit, window=int(window))
