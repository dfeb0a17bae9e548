"""The floor of a Python asyncio policy server: answers ``action=DUNNO`` to every request.

    python bench/null_policy.py PORT [--protocol]

On ``127.0.0.1:PORT``: read, count the complete requests (attribute lines
ending with an empty line, Postfix ``SMTPD_POLICY_README``), write one
``action=DUNNO`` answer for each. No parsing, no decision, no limits:
bench/policy.py's reference for what any asyncio policy service costs
Postfix, measured in the same run as listgate's. By default plain asyncio
streams (a coroutine per connection); ``--protocol``: an
:class:`asyncio.Protocol` per connection, the structure of listgate's server.
"""
from __future__ import annotations

import asyncio
import sys

ANSWER = b"action=DUNNO\n\n"


def _complete(rest: bytes) -> tuple[int, bytes]:
    """(requests completed in ``rest``, what is left of it)."""
    n = rest.count(b"\n\n")
    return n, (rest[rest.rindex(b"\n\n") + 2:] if n else rest)


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    rest = b""
    try:
        while data := await reader.read(65536):
            n, rest = _complete(rest + data)
            if n:
                writer.write(ANSWER * n)
                await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


class Null(asyncio.Protocol):
    def connection_made(self, transport) -> None:
        self.transport, self.rest = transport, b""

    def data_received(self, data: bytes) -> None:
        n, self.rest = _complete(self.rest + data)
        if n:
            self.transport.write(ANSWER * n)


async def main(port: int, protocol: bool) -> None:
    if protocol:
        server = await asyncio.get_running_loop().create_server(Null, "127.0.0.1", port, reuse_address=True,
                                                                backlog=1024)
    else:
        server = await asyncio.start_server(serve, "127.0.0.1", port, reuse_address=True, backlog=1024)
    print("ready", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), "--protocol" in sys.argv[2:]))
