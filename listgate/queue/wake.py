"""The wake-up note ``listgate queue flush`` leaves for running runners: ``QUEUE_DIR/retry/.flushed``.

A runner does not take every ``retry`` qfile on every pass (a rename and a
directory fsync each): it remembers the earliest ``retry_at`` it saw and skips
the queue until then, unless a new qfile arrived
(:meth:`listgate.runner.loop.Runner._pass_retry`). A flush rewrites
``retry_at`` inside qfiles that keep their names, which that memory cannot
see; so after changing them it writes a new random token here (written to a
temporary name, then renamed). A runner reads the token before it lists the
queue and looks at every retry qfile again when it differs from the one it
read last: a flush done after that read changes the token again, so no
flush is missed, by any runner slice. ``Switchboard`` ignores names
starting with a dot.
"""
from __future__ import annotations

import errno
import os
import secrets

from .files import temp_name, unlink_quietly
from .names import QueueError

NAME = ".flushed"


def poke(queue_dir: str, queue: str = "retry") -> None:
    """Leave a new token in ``queue_dir/queue/.flushed``. Raises QueueError when it cannot be written."""
    directory = os.path.join(queue_dir, queue)
    tmp = temp_name(directory, NAME.lstrip("."))
    try:
        with open(tmp, "w", encoding="ascii") as fh:
            fh.write(secrets.token_hex(16))
        os.replace(tmp, os.path.join(directory, NAME))
    except OSError as exc:
        unlink_quietly(tmp)
        raise QueueError(exc.errno or errno.EIO, f"cannot wake the runners ({directory}/{NAME}): "
                         f"{exc.strerror}") from None


def token(directory: str) -> str | None:
    """The token in ``directory/.flushed``; None when there is none (never flushed) or it cannot be read."""
    try:
        with open(os.path.join(directory, NAME), encoding="ascii", errors="replace") as fh:
            return fh.read(64)
    except OSError:
        return None
