"""The list application: what a list does with mail, whoever hands it over.

The front ends (milter, policy server, ``listgate inject``), the runner and
the CLI all call these modules for decisions; none of them decides itself.
The application sees the store only through :mod:`listgate.store`'s contract
(``open_store``, ``store/base.py`` and its exceptions), never a backend.

* :mod:`.posting` — the posting rule (who may post: at RCPT with the envelope
  sender, after DATA with ``From`` too), decoration and ``List-Id``, loop
  protection, fan-out into ``out``;
* :mod:`.moderation` — holds: the held post, the moderators' decision, expiry;
* :mod:`.commands` — ``L-request``/``L-join``/``L-leave`` commands and
  ``L-confirm+TOKEN`` replies;
* :mod:`.subscriptions` — :func:`~.subscriptions.complete`, the one place a
  confirmed pending record takes effect;
* :mod:`.bounces` — the bounce life cycle: attribution, scoring, domain
  incidents, complaints (:class:`~.bounces.BounceEngine`);
* :mod:`.probes` — after the threshold: probes, disable, disabled notices, removal;
* :mod:`.incidents` — failures that are not the members' own (domain incidents): not scored;
* :mod:`.notices` — every message the application writes (replies,
  confirmations, owner notices, bounce mail), with one owner notice and one
  ``List-Id``;
* :mod:`.mail` — reading untrusted mail (headers, author, command text,
  RFC 3834 auto-replies); :mod:`.texts` — the texts of replies and notices.

Reading what a bounce says (DSN, ARF, auto-replies, status codes) is
:mod:`listgate.bounce`'s; the queue loop and delivery are :mod:`listgate.runner`'s.
"""
