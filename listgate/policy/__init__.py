"""Policy delegation front end (Postfix ``check_policy_service``, Exim ``${readsocket}``).

``protocol``: request parsing, the RCPT decision (:func:`listgate.routing.decide_rcpt`)
as an ``action=`` reply. ``server``: the asyncio :class:`PolicyServer`.
``listgate policy`` (``listgate.cli.policy_cmd``) runs it.
"""
from .protocol import ProtocolError, RequestParser, action_for, decide, format_reply
from .server import PolicyServer

__all__ = ["PolicyServer", "ProtocolError", "RequestParser", "action_for", "decide", "format_reply"]
