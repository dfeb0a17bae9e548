"""A stand-in milter that records what Postfix shows it (run as a subprocess).

    python recording_milter.py SOCKET EVENTS_FILE DOMAIN [MODE_FILE]

It appends one JSON line per callback to EVENTS_FILE (``connect``, ``from``,
``rcpt``, ``eom`` with the ``i`` and ``{client_addr}`` macros), and at end of
message removes every recipient in DOMAIN (what listgate's milter does with
list recipients). If MODE_FILE exists and holds ``tempfail`` or ``reject``,
end of message answers that instead (``reject``: 550 5.1.1). It lets harness tests check what the INSTALL
snippets route through a milter without depending on listgate's own milter.
libmilter keeps process-wide state, hence a subprocess rather than a thread.
"""
from __future__ import annotations

import json
import os
import sys

import Milter


def main(socket_spec: str, events_file: str, domain: str, mode_file: str | None = None) -> None:
    def record(**event) -> None:
        with open(events_file, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(event) + "\n")

    class Recorder(Milter.Base):
        def __init__(self):
            self.rcpts: list[str] = []

        def connect(self, hostname, family, hostaddr):
            record(event="connect", hostname=hostname, addr=str(hostaddr))
            return Milter.CONTINUE

        def envfrom(self, mailfrom, *params):
            self.rcpts = []
            record(event="from", sender=mailfrom, queue_id=self.getsymval("i"),
                   client_addr=self.getsymval("{client_addr}"))
            return Milter.CONTINUE

        def envrcpt(self, rcpt, *params):
            self.rcpts.append(rcpt)
            record(event="rcpt", rcpt=rcpt, client_addr=self.getsymval("{client_addr}"))
            return Milter.CONTINUE

        def eom(self):
            mode = ""
            if mode_file and os.path.exists(mode_file):
                with open(mode_file, encoding="utf-8") as fh:
                    mode = fh.read().strip()
            record(event="eom", queue_id=self.getsymval("i"), rcpts=self.rcpts, mode=mode)
            if mode == "tempfail":
                return Milter.TEMPFAIL
            if mode == "reject":
                self.setreply("550", "5.1.1", "not a valid bounce address")
                return Milter.REJECT
            for rcpt in self.rcpts:
                if rcpt.strip("<>").lower().endswith("@" + domain):
                    self.delrcpt(rcpt)
            return Milter.CONTINUE

    Milter.factory = Recorder
    Milter.set_flags(Milter.DELRCPT)
    record(event="listening")
    Milter.runmilter("recording-milter", socket_spec, 60)


if __name__ == "__main__":
    main(*sys.argv[1:])
