"""systemd readiness notification (``Type=notify``) without a library.

The protocol (sd_notify(3)): send one datagram of newline-separated
``KEY=VALUE`` assignments to the ``AF_UNIX`` ``SOCK_DGRAM`` socket named by
``$NOTIFY_SOCKET``; a name starting with ``@`` is in the abstract namespace
(the ``@`` stands for a leading NUL byte). Without ``NOTIFY_SOCKET`` (not run
by systemd, or ``Type=simple``) every call is a no-op.

Daemons call :func:`ready` once they are listening (milter socket bound,
policy server accepting, runner started), :func:`stopping` when SIGTERM
arrives, and may report :func:`status` lines shown by ``systemctl status``.
"""
from __future__ import annotations

import os
import socket
from .log import events

ENV_VAR = "NOTIFY_SOCKET"
log = events("listgate.sdnotify")


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"`` or ``"STATUS=...\\nREADY=1"``).

    Returns True when a datagram was sent, False when there is no
    ``NOTIFY_SOCKET`` or it cannot be used (unsupported address family such
    as ``vsock:``, socket gone): readiness reporting must never take a mail
    daemon down, so errors are logged, not raised.
    """
    address = os.environ.get(ENV_VAR)
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        log.warning("sd_notify_unsupported", "only unix socket paths are supported", variable=ENV_VAR, address=address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
    except OSError as exc:
        log.warning("sd_notify_failed", "sd_notify failed", address=os.environ.get(ENV_VAR), error=exc)
        return False
    return True


def ready(status: str | None = None) -> bool:
    """Tell systemd the service is up (``READY=1``, with ``MAINPID`` of this process)."""
    lines = ["READY=1", f"MAINPID={os.getpid()}"]
    if status:
        lines.append(f"STATUS={status}")
    return notify("\n".join(lines))


def stopping(status: str | None = None) -> bool:
    """Tell systemd the service is shutting down (``STOPPING=1``)."""
    return notify("STOPPING=1" + (f"\nSTATUS={status}" if status else ""))


def status(text: str) -> bool:
    """A one-line status for ``systemctl status`` (newlines are replaced)."""
    return notify("STATUS=" + text.replace("\n", " "))
