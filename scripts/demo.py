"""A short live demonstration of listgate on a private Postfix (README's first command).

Starts an SMTP sink standing in for the members' mail servers (one address
does not exist, one server refuses spam), a private Postfix on loopback
configured from INSTALL's snippets, and ``listgate serve`` on an instance made
by ``listgate init``; then walks through a post, the bounce life cycle over
simulated days, a spam refusal and a forged bounce, printing what happens.
Everything it started is stopped at the end; nothing outside a temporary
directory is touched.
"""
from __future__ import annotations

import os
import smtplib
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from harness import SPAM_REFUSE, UNKNOWN, available  # noqa: E402
from harness.stack import Stack  # noqa: E402

MEMBERS = ["alice@members.test", "bob@members.test", "carol@members.test",
           "dead@members.test", "picky@members.test"]
DEAD, PICKY = "dead@members.test", "picky@members.test"


def say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


def post(st: Stack, n: int, subject: str, spam: bool = False) -> str:
    mid = f"<demo-{n}-{time.time_ns()}@members.test>"
    msg = (f"From: Alice <alice@members.test>\r\nTo: {st.address()}\r\nSubject: {subject}\r\n"
           f"Message-ID: {mid}\r\n" + ("X-Spam-Flag: YES\r\n" if spam else "") + "\r\nHello list!\r\n").encode()
    st.send("alice@members.test", [st.address()], msg)
    st.settle()
    return mid


def main() -> int:
    if not available():
        print("the demo needs root and Postfix: run it with scripts/demo (it installs what is missing)")
        return 1
    with Stack(behaviours={DEAD: UNKNOWN, PICKY: SPAM_REFUSE}) as st:
        say(f"Postfix on 127.0.0.1:{st.pf.smtpd_port} (milter + policy from conf/postfix), "
            f"listgate serve from {st.site.path}")
        for m in MEMBERS:
            st.listgate("members", "add", st.list_name, m)
        say(f"list {st.list_key}: {len(MEMBERS)} members; {DEAD} does not exist, "
            f"{PICKY}'s server refuses spam")
        mid = post(st, 1, "Welcome")
        got = [m for m in MEMBERS if any(mid.encode() in d.data for d in st.sink.messages_for(m))]
        one = st.sink.messages_for("bob@members.test")[-1]
        say(f"post delivered to {len(got)} members, each with its own signed VERP envelope sender, "
            f"e.g. {one.mail_from}")
        st.wait_until(lambda: st.member(DEAD).bounce_score > 0, 60, what="first bounce")
        say(f"{DEAD}: Postfix's DSN came back through the milter: bounce score {st.member(DEAD).bounce_score:g}")
        threshold = st.lc.bounce_score_threshold
        first = list(reversed(st.store().events(address=DEAD)))
        told, t0 = len(first), first[0].at     # day 1 began with the first bounce

        def tell() -> None:
            """Say what the bounce life cycle did for DEAD since the last call, in the order it happened
            and on the (simulated) day it happened."""
            nonlocal told
            events = list(reversed(st.store().events(address=DEAD)))
            for e in events[told:]:
                what = {
                    "scored": f"bounce scored, {e.detail.partition(':')[0]} of {threshold:g}",
                    "probe_sent": f"score reached {threshold:g}: probe sent with the last bounce attached "
                                  "(score reset; still enabled, the probe decides)",
                    "probe_outstanding": "bounce recorded, not scored: a probe is outstanding",
                    "same_day": "bounce recorded, not scored: one score per day",
                    "disabled": f"the probe bounced: {DEAD} disabled by bounce, re-enable notice 1 of "
                                f"{st.lc.bounce_you_are_disabled_warnings} sent, owners notified",
                    "residual": "a bounce of a post sent before the disable: recorded, not scored",
                }.get(e.action, e.action)
                say(f"day {1 + int((e.at - t0) // 86400)}: {what}")
            told = len(events)

        day = 1
        while st.member(DEAD).delivery_status == "enabled" and day < 10:
            st.advance_days(1)
            day += 1
            post(st, day, f"Day {day} news")
            tell()
        st.wait_until(lambda: st.member(DEAD).delivery_status == "by_bounce", 60, what="disable")
        tell()
        while st.member(DEAD) is not None:
            before = st.member(DEAD).notices_left
            st.advance_days(7)
            day += 7
            st.wait_until(lambda: st.member(DEAD) is None or st.member(DEAD).notices_left != before,
                          60, what="reminder or removal")
            st.settle()
            m = st.member(DEAD)
            say(f"day {day}: " + ("member removed, owners notified" if m is None
                                  else f"reminder sent, {m.notices_left} left"))
        for n in range(3):
            post(st, 100 + n, f"Cheap pills {n}", spam=True)
            st.advance_days(1)
        m = st.member(PICKY)
        say(f"{PICKY} refused 3 spam posts (550 5.7.1): classified 'policy', score {m.bounce_score:g}, "
            f"still {m.delivery_status}")
        forged = st.address("bounces", "bob=members.test.kxxxx.aaaaaaaa")
        result = st.send("", [forged], b"Subject: bounce\r\n\r\n550 user unknown\r\n")
        if isinstance(result, smtplib.SMTPRecipientsRefused):
            code, text = result.recipients[forged]
            say(f"forged bounce to {forged}: refused at RCPT with {code} {text.decode()}")
        else:
            say(f"forged bounce to {forged}: UNEXPECTED {result!r}")
            return 1
        say("stopping Postfix, listgate and the sink")
    say("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
