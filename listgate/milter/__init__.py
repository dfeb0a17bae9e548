"""The milter front end (pymilter): list and bounce mail taken inline at SMTP time.

* :mod:`listgate.milter.app` — :class:`~listgate.milter.app.ListgateMilter`,
  one object per SMTP connection: RCPT decisions from
  :func:`listgate.routing.decide_rcpt`, end of message through
  :func:`listgate.inject.store_message`.
* :mod:`listgate.milter.daemon` — :func:`~listgate.milter.daemon.run`: the
  libmilter socket (mode, stale socket), flags, exception policy, main loop.

Our package cannot be the top-level ``milter``: pymilter owns ``milter`` and
``Milter``.
"""
