"""The LMTP front end (``listgate lmtp``): see :mod:`listgate.lmtp.server` (protocol) and
:mod:`listgate.lmtp.daemon` (socket, life cycle)."""
from .daemon import LmtpServer

__all__ = ["LmtpServer"]
