"""A small authoritative DNS server on loopback for the tests (dnspython, UDP, one thread).

``ZoneServer(records, servfail=..., silent=...)``: ``records`` maps a name to
``[(rdtype, ttl, text), ...]``. A name in ``servfail`` is answered SERVFAIL,
one in ``silent`` never (the client times out). Any other name not listed is
NXDOMAIN, a listed name without the type asked is NOERROR without answers;
both carry the zone's SOA (negative TTL ``NEG_TTL``, RFC 2308). ``queries``
records every ``(name, type)`` asked, so tests can see what was cached.
"""
from __future__ import annotations

import socket
import threading

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

# Tests never ask the machine's resolver (loopback only): no domain checks, and a resolver
# on a loopback port where nothing answers. DNS tests run their own ZoneServer.
TEST_DNS = "dns:\n  check_domains: false\n  nameservers: [127.0.0.1]\n  port: 9\n  timeout: 1s\n  attempts: 1\n"

ZONE = "test."
NEG_TTL = 60


class ZoneServer:
    def __init__(self, records: dict, *, servfail=(), silent=(), neg_ttl: int = NEG_TTL):
        self.records = {self._key(n): list(v) for n, v in records.items()}
        self.servfail = {self._key(n) for n in servfail}
        self.silent = {self._key(n) for n in silent}
        self.neg_ttl = neg_ttl
        self.queries: list[tuple[str, str]] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="test-dns", daemon=True)

    @staticmethod
    def _key(name: str) -> str:
        return name.lower().rstrip(".") + "."

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def count(self, name: str, rdtype: str) -> int:
        return self.queries.count((self._key(name), rdtype))

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except (socket.timeout, OSError):
                continue
            try:
                reply = self.answer(dns.message.from_wire(data))
            except Exception:  # noqa: BLE001 - a malformed query gets no answer
                continue
            if reply is not None:
                self.sock.sendto(reply.to_wire(), peer)

    def _soa(self) -> dns.rrset.RRset:
        return dns.rrset.from_text(ZONE, self.neg_ttl, "IN", "SOA",
                                   f"ns.{ZONE} hostmaster.{ZONE} 1 3600 600 86400 {self.neg_ttl}")

    def answer(self, query: dns.message.Message):
        q = query.question[0]
        name, rdtype = q.name.to_text().lower(), dns.rdatatype.to_text(q.rdtype)
        self.queries.append((name, rdtype))
        if name in self.silent:
            return None
        reply = dns.message.make_response(query)
        reply.flags |= dns.flags.AA
        if name in self.servfail:
            reply.set_rcode(dns.rcode.SERVFAIL)
            return reply
        if name not in self.records:
            reply.set_rcode(dns.rcode.NXDOMAIN)
            reply.authority.append(self._soa())
            return reply
        found = [(ttl, text) for t, ttl, text in self.records[name] if t == rdtype]
        if not found:
            reply.authority.append(self._soa())
            return reply
        rrset = dns.rrset.from_text_list(name, min(t for t, _ in found), "IN", rdtype, [x for _, x in found])
        reply.answer.append(rrset)
        return reply


def txt(text: str) -> str:
    """A TXT record's presentation form: ``text`` in 255-octet quoted strings."""
    parts = [text[i:i + 200] for i in range(0, len(text), 200)] or [""]
    return " ".join('"' + p.replace("\\", "\\\\").replace('"', '\\"') + '"' for p in parts)


def dns_conf(port: int, timeout: float = 0.5, attempts: int = 1):
    """A ``dns`` site section pointing at a test server."""
    from listgate.config import Frozen
    return Frozen({"nameservers": ("127.0.0.1",), "port": port, "timeout": timeout, "attempts": attempts})
