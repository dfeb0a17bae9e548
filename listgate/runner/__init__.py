"""The queue runner: the queue loop, delivery and periodic tasks; decisions are the list application's.

One job per module:

* :mod:`.loop` — :class:`~.loop.Runner`: takes qfiles from ``in``, ``virgin``,
  ``out`` and ``retry`` (optionally one hash slice of them), hands each
  ``in`` qfile to the list application (:mod:`listgate.app`: posts, commands,
  confirmations, owner mail), schedules periodic tasks, stops cleanly on SIGTERM;
* :mod:`.duplicates` — a retried SMTP transaction's second copy is dropped;
* :mod:`.delivery` — SMTP fan-out to the re-injection listener with a
  per-recipient envelope sender, durable progress, retry, and 5xx at
  hand-over reported to the bounce life cycle;
* :mod:`.tasks` — periodic tasks (bounce life cycle, pending eviction), when due.

The supervisor of ``listgate serve`` is :mod:`listgate.serve`.
"""
