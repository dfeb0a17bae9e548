"""Bounce classification rate over the corpus, against flufl.bounce alone, in one run.

    python bench/classify.py [--rounds N]

Rows (messages per second, best of N rounds over every corpus message):

* ``flufl all_failures``: the baseline — ``email.message_from_bytes`` +
  ``flufl.bounce.all_failures`` (what a Mailman-style runner does);
* ``classify``: :func:`listgate.bounce.classify.classify` on the raw bytes
  (ARF, DSN, detectors, auto-reply, status rules);
* ``classify, VERP``: the same with ``verp_address`` given, as the engine
  calls it for mail to a member's VERP address (bounces recognised by their
  headers skip the detectors);
* ``classify, VERP, bounces by headers``: only the messages the VERP fast
  path applies to.

The ratio column is each rate divided by the baseline's rate measured in
the same run. Needs the corpus beside the repository (``../shared``).
"""
from __future__ import annotations

import argparse
import email
import email.policy
import sys
import time
from pathlib import Path

import flufl.bounce

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from listgate.bounce import message as bm  # noqa: E402
from listgate.bounce.classify import _looks_like_bounce, classify  # noqa: E402

CORPUS = ROOT.parent / "shared" / "corpus" / "bounces"


def load() -> list[bytes]:
    rows = (CORPUS / "EXPECTED.tsv").read_text(encoding="utf-8").splitlines()[1:]
    return [(CORPUS / line.split("\t")[0]).read_bytes() for line in rows]


def flufl_only(raw: bytes) -> None:
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    try:
        flufl.bounce.all_failures(msg)
    except Exception:  # a detector crash counts as done: the baseline must not stop
        pass


def elapsed(func, messages: list[bytes]) -> float:
    start = time.perf_counter()
    for raw in messages:
        func(raw)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if not (CORPUS / "EXPECTED.tsv").exists():
        print(f"corpus not found at {CORPUS}", file=sys.stderr)
        return 1
    messages = load()
    header_bounces = [raw for raw in messages if _looks_like_bounce(bm.parse(raw))]
    member = "member@example.org"
    rows = [
        ("flufl all_failures (baseline)", messages, flufl_only),
        ("classify", messages, lambda raw: classify(raw)),
        ("classify, VERP", messages, lambda raw: classify(raw, verp_address=member)),
        ("classify, VERP, bounces by headers", header_bounces, lambda raw: classify(raw, verp_address=member)),
        ("baseline on the same subset", header_bounces, flufl_only),
    ]
    for _name, msgs, func in rows:   # warm-up: imports, regex compilation, page cache
        for raw in msgs[:20]:
            func(raw)
    # Rounds interleave the rows so that load from other processes hits all alike.
    best = [float("inf")] * len(rows)
    for _ in range(args.rounds):
        for i, (_name, msgs, func) in enumerate(rows):
            best[i] = min(best[i], elapsed(func, msgs))
    results = [(name, len(msgs), len(msgs) / best[i]) for i, (name, msgs, _f) in enumerate(rows)]
    base = results[0][2]
    subset_base = results[4][2]
    print(f"{'path':40} {'messages':>8} {'msg/s':>10} {'ratio':>7}")
    for i, (name, count, rate) in enumerate(results):
        ratio = rate / (subset_base if i == 3 else base)
        print(f"{name:40} {count:8d} {rate:10.0f} {ratio:7.2f}")
    print(f"(best of {args.rounds} rounds; ratio vs the baseline on the same messages, same run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
