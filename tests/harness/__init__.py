"""Test harness: a private Postfix on loopback and an SMTP sink.

    from harness import PostfixInstance, SmtpSink, UNKNOWN, SPAM_REFUSE

    with SmtpSink({"gone@members.test": UNKNOWN}) as sink, \\
         PostfixInstance(sink_port=sink.port, milter=site.conf.milter.socket,
                         policy=site.conf.policy.socket) as pf:
        pf.send("a@senders.test", ["x@members.test"], msg)
        sink.wait_for_message("x@members.test")

``PostfixInstance(site=site, sink_port=...)`` takes the milter and policy
sockets, the re-injection port and the list domain from a loaded listgate
Site. Helpers: ``send`` (SMTP to the public smtpd, or ``port=pf.reinject_port``),
``submit`` (local sendmail), ``flush``, ``queue``/``queue_ids``,
``wait_queue_empty``, ``wait_log``/``log_offset``, ``postconf``, ``set``
(postconf -e + reload), ``check``. Sink: ``wait_for``, ``wait_for_message``,
``messages_for``, ``refusals``, ``set_behaviour``.
``recording_milter.py`` is a stand-in milter for tests of the snippets.

See :mod:`harness.postfix` and :mod:`harness.sink`.
"""
from .postfix import PostfixError, PostfixInstance, available, free_port, postfix_socket, render_snippet
from .sink import ACCEPT, SPAM_REFUSE, TEMPFAIL, UNKNOWN, Delivery, Refusal, SmtpSink

__all__ = ["PostfixError", "PostfixInstance", "available", "free_port", "postfix_socket", "render_snippet",
           "ACCEPT", "SPAM_REFUSE", "TEMPFAIL", "UNKNOWN", "Delivery", "Refusal", "SmtpSink"]
