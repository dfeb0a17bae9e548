"""The floor of a Python asyncio policy server: answers ``action=DUNNO`` to every request.

    python bench/null_policy.py PORT

Plain asyncio streams on ``127.0.0.1:PORT``, one coroutine per connection:
read, count the complete requests (attribute lines ending with an empty line,
Postfix ``SMTPD_POLICY_README``), write one ``action=DUNNO`` answer for each.
No parsing, no decision, no limits: bench/policy.py's reference for what any
asyncio policy service costs Postfix, measured in the same run as listgate's.
"""
from __future__ import annotations

import asyncio
import sys

ANSWER = b"action=DUNNO\n\n"


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    rest = b""
    try:
        while data := await reader.read(65536):
            rest += data
            n = rest.count(b"\n\n")
            if n:
                rest = rest[rest.rindex(b"\n\n") + 2:]
                writer.write(ANSWER * n)
                await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(serve, "127.0.0.1", port, reuse_address=True, backlog=1024)
    print("ready", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
