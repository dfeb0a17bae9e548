"""Queue runners: posts, email commands and confirmations, delivery, periodic tasks.

One job per module:

* :mod:`.loop` — :class:`~.loop.Runner`: takes qfiles from ``in``, ``virgin``,
  ``out`` and ``retry`` (optionally one hash slice of them), dispatches them,
  schedules periodic tasks, stops cleanly on SIGTERM;
* :mod:`.mail` — reading headers of untrusted mail, RFC 3834 auto-reply rules;
* :mod:`.posts` — posting policy, moderation holds, decoration, loop protection;
* :mod:`.commands` — ``L-request``/``L-join``/``L-leave`` commands and
  ``L-confirm+TOKEN`` confirmations;
* :mod:`.replies` — confirmations, replies and notices into ``virgin``;
* :mod:`.delivery` — SMTP fan-out to the re-injection listener with a
  per-recipient envelope sender, durable progress, retry and 5xx bounces;
* :mod:`.tasks` — periodic tasks (bounce engine, pending eviction, retries);
* :mod:`.serve` — ``listgate serve``: milter, policy server and runner as
  supervised child processes.
"""
