"""The one DNS resolver of listgate (dnspython), and the mail-domain verdict built on it.

:class:`Resolver` is made once per loaded configuration (``Site.resolver``)
from the site's ``dns`` section: ``nameservers`` (empty: those of
``/etc/resolv.conf``), ``port``, ``timeout`` (seconds per server) and
``attempts`` (rounds over the servers). Answers are cached by dnspython's
:class:`dns.resolver.Cache` on the resolver object, each for its TTL;
negative answers (NXDOMAIN, no data) for the SOA's negative TTL,
``min(SOA TTL, SOA MINIMUM)`` (RFC 2308 section 5). A timeout, SERVFAIL or
REFUSED from every server, or a malformed reply, is :data:`UNKNOWN`: callers
never refuse anything on it, they retry later or carry on.

Lookups block for up to ``timeout * attempts`` seconds, so they are made only
by the runner and the command line: never by the milter, the policy server
or the LMTP server while a client waits (RCPT or end of message).
"""
from __future__ import annotations

from dataclasses import dataclass

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
from .log import events

log = events("listgate.dns")

OK, NXDOMAIN, NODATA, UNKNOWN = "ok", "nxdomain", "nodata", "unknown"


class DnsUnknown(Exception):
    """A decision needs a DNS answer that cannot be had now (timeout, SERVFAIL): try again later."""


@dataclass(frozen=True)
class Answer:
    """One lookup: ``status`` ok | nxdomain | nodata | unknown, the ``records`` (dnspython rdata), ``error``."""

    status: str
    records: tuple = ()
    error: str = ""


@dataclass(frozen=True)
class MailDomain:
    """Whether mail can be delivered to a domain (RFC 5321 section 5.1, RFC 7505).

    ``status``: ``ok`` (MX hosts, or an address record as the implicit MX),
    ``null_mx`` (a single ``MX 0 .``: the domain accepts no mail, RFC 7505
    section 3), ``nxdomain`` (the domain does not exist), ``no_address`` (no
    MX and no A/AAAA), or ``unknown`` (no answer now). ``reason``: a sentence
    for a reply or a log.
    """

    domain: str
    status: str
    reason: str = ""

    @property
    def dead(self) -> bool:
        """True when the DNS says no mail can reach the domain (never for unknown)."""
        return self.status in ("null_mx", "nxdomain", "no_address")


class Resolver:
    """The site's resolver (see the module docstring); thread-safe (dnspython's resolver and cache are)."""

    def __init__(self, conf):
        res = dns.resolver.Resolver(configure=not conf.nameservers)
        if conf.nameservers:
            res.nameservers = list(conf.nameservers)
        res.port = conf.port
        res.timeout = float(conf.timeout)
        res.lifetime = float(conf.timeout) * conf.attempts
        res.retry_servfail = False          # a SERVFAIL is an answer: unknown, not a reason to spin
        res.cache = dns.resolver.Cache()
        self._res = res

    def query(self, name: str, rdtype: str) -> Answer:
        """Look up ``rdtype`` records of ``name`` (absolute; no search list). Never raises."""
        try:
            ans = self._res.resolve(name, rdtype, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return Answer(NXDOMAIN)
        except dns.exception.DNSException as exc:
            # Timeout / LifetimeTimeout, NoNameservers (SERVFAIL, REFUSED), YXDOMAIN, bad replies
            log.info("dns_no_answer", "DNS lookup without an answer", name=name, type=rdtype, error=str(exc)[:200])
            return Answer(UNKNOWN, error=f"{type(exc).__name__}: {exc}"[:300])
        if ans.rrset is None:
            return Answer(NODATA)
        return Answer(OK, tuple(ans.rrset))

    def txt(self, name: str) -> Answer:
        """TXT records of ``name``; ``records`` are the strings of each record joined (RFC 7208 section 3.3),
        as text (undecodable octets replaced)."""
        ans = self.query(name, "TXT")
        if ans.status != OK:
            return ans
        return Answer(OK, tuple(b"".join(r.strings).decode("utf-8", "replace") for r in ans.records))

    def dkim_txt(self, name: bytes, timeout: int = 5) -> bytes | None:
        """dkimpy's ``dnsfunc``: the first TXT record of ``name`` as bytes, None when there is none."""
        ans = self.query(name.decode("ascii", "replace").rstrip("."), "TXT")
        if ans.status != OK or not ans.records:
            return None
        return b"".join(ans.records[0].strings)

    def mail_domain(self, domain: str) -> MailDomain:
        """Whether ``domain`` can receive mail: MX, then A and AAAA (RFC 5321 section 5.1)."""
        domain = domain.rstrip(".").lower()
        try:
            dns.name.from_text(domain)
        except dns.exception.DNSException as exc:
            return MailDomain(domain, "nxdomain", f"{domain} is not a valid domain name ({exc})")
        mx = self.query(domain, "MX")
        if mx.status == UNKNOWN:
            return MailDomain(domain, "unknown", f"the DNS did not answer for {domain} ({mx.error})")
        if mx.status == NXDOMAIN:
            return MailDomain(domain, "nxdomain", f"the domain {domain} does not exist (NXDOMAIN)")
        if mx.status == OK:
            if len(mx.records) == 1 and mx.records[0].exchange == dns.name.root:
                return MailDomain(domain, "null_mx", f"{domain} publishes a null MX: it accepts no mail (RFC 7505)")
            return MailDomain(domain, "ok")
        unknown = None
        for rdtype in ("A", "AAAA"):
            ans = self.query(domain, rdtype)
            if ans.status == OK:
                return MailDomain(domain, "ok")     # the implicit MX
            if ans.status == UNKNOWN:
                unknown = ans
        if unknown is not None:
            return MailDomain(domain, "unknown", f"the DNS did not answer for {domain} ({unknown.error})")
        return MailDomain(domain, "no_address",
                          f"{domain} has no MX and no address record: mail cannot be delivered there (RFC 5321 section 5.1)")
