"""Test harness: a private Postfix on loopback and an SMTP sink.

    from harness import PostfixInstance, SmtpSink, UNKNOWN, SPAM_REFUSE

    with SmtpSink({"gone@members.test": UNKNOWN}) as sink, \\
         PostfixInstance(sink_port=sink.port, milter=site.conf.milter.socket,
                         policy=site.conf.policy.socket) as pf:
        pf.send("a@senders.test", ["x@members.test"], msg)
        sink.wait_for_message("x@members.test")

See :mod:`tests.harness.postfix` and :mod:`tests.harness.sink`.
"""
from .postfix import PostfixError, PostfixInstance, available, free_port, postfix_socket, render_snippet
from .sink import ACCEPT, SPAM_REFUSE, TEMPFAIL, UNKNOWN, Delivery, Refusal, SmtpSink

__all__ = ["PostfixError", "PostfixInstance", "available", "free_port", "postfix_socket", "render_snippet",
           "ACCEPT", "SPAM_REFUSE", "TEMPFAIL", "UNKNOWN", "Delivery", "Refusal", "SmtpSink"]
