"""Classification over the real bounce corpus in ``shared/corpus/bounces``.

Every message is classified (zero crashes allowed); agreement with
``EXPECTED.tsv`` is printed (run with ``-s`` to see it) and must stay above
the thresholds below. Disagreements are understood, not special-cased: no
file name appears in this module.

Mapping from the corpus classes (README.md, "EXPECTED.tsv columns") to ours:

* ``permanent`` from **flufl.bounce**: the detector put the address in its
  permanent set, i.e. the report said the delivery *failed* (DSN
  ``Action: failed``), whatever the status class → ``hard | policy | soft``
  (``soft`` is exactly "a temporary failure that was given up on": flufl does
  not separate it).
* ``permanent`` from **sisimai**: the expected status is 5.x.x →
  ``hard | policy``. Two readings of its tuple widen that, both from the
  README's caveats, not from individual rows: ``reason=expired`` is a
  given-up temporary failure → ``soft`` too; and a status whose detail is
  900 or more (``5.0.9xx``) is sisimai's own invented code for a message
  that carries no status code at all, so its permanence is sisimai's guess:
  ``soft`` is accepted there too.
  Likewise a row with a reason (per recipient) naming a passing condition (mailbox or
  system full, too many connections, speeding: RFC 3463 section 3.3) →
  ``soft`` too.
* ``temporary`` → ``soft | delayed`` (a warning is ``delayed``, a message
  returned after retries is ``soft``).
* ``autoreply`` → ``autoreply``.
* ``not-a-bounce`` → nothing scored: no failures, or only ``delivered`` /
  ``relayed`` / ``expanded`` / ``complaint`` / ``autoreply``.
* ``unknown`` → not counted (the sources assert nothing).

A message agrees when the set of its failure classes is inside the mapped
set (a message with no failures counts as the class "none").
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from listgate.bounce.classify import CLASSES, Classification, classify

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "bounces"
# Our own messages (tests/data/bounces, sources in its SOURCES.md): EXPECTED.tsv
# with the shared corpus's columns plus root_cause (issue 14's numbering),
# listgate_class (the exact class expected) and mta. They must all agree.
NEW_CORPUS = Path(__file__).resolve().parent / "data" / "bounces"
ROOT_CAUSES = {"1": "SMTP stage", "2": "blocking vocabulary and status codes", "3": "transient is transient",
               "4": "one classification path"}

NOT_SCORED = {"none", "delivered", "relayed", "expanded", "complaint", "autoreply"}
FLUFL_MAP = {
    "permanent": {"hard", "policy", "soft"},
    "temporary": {"soft", "delayed"},
    "autoreply": {"autoreply"},
    "not-a-bounce": NOT_SCORED,
}
SISIMAI_MAP = {
    "permanent": {"hard", "policy"},
    "temporary": {"soft", "delayed"},
    "autoreply": {"autoreply"},
    "not-a-bounce": NOT_SCORED,
}
# sisimai reasons that name a refusal of the *message* (policy) and of the
# *address* (hard): used for the policy-safety figures.
SISIMAI_POLICY_REASONS = {"blocked", "policyviolation", "spamdetected", "virusdetected", "securityerror",
                          "badreputation", "requireptr", "authfailure", "contenterror", "notcompliantrfc"}
SISIMAI_ADDRESS_REASONS = {"userunknown", "hostunknown", "hasmoved"}
# sisimai reasons for a condition that passes (its "hardbounce=false" family):
# a full mailbox or system, too many connections, sending too fast. RFC 3463
# section 3.3 calls X.2.2 transient even in a 5xx, so ``soft`` agrees there.
SISIMAI_TRANSIENT_REASONS = {"mailboxfull", "systemfull", "toomanyconn", "speeding", "expired"}

# Thresholds, set at or a little below what this classifier measures (see the
# printed figures; measured with the 532-message corpus: class agreement
# 417/428 = 97.4%, issue 14's target being 97%; earlier 375/386 = 97.2%,
# flufl address recall and precision 133/133, message-refusal rows classed
# hard 3/44) so that a regression fails while the honest disagreements stay
# allowed. The known disagreements, each a judgement call rather than a bug:
# * bounces with no status code, no address a detector knows and no words we
#   can read as a cause (Japanese-only texts, an MMS gateway's "no valid
#   recipients", Exim's "malformed address" about our own header): `unknown`,
#   which goes to the owners — the safe side;
# * delay warnings sisimai counts as final (a Gmail "THIS IS A WARNING
#   MESSAGE ONLY", OpenSMTPD's "only a temporary failure report", an
#   OpenSMTPD DSN with Action: delayed): we say `delayed`;
# * a mailing-list manager's "you are not a member" reply: not a delivery
#   report at all, so `not-a-bounce`;
# * one "not a bounce" file that plainly reports a rejected delivery
#   ("Mailbox full") to a VERP address: we say `soft`.
MIN_CLASS_AGREEMENT = 0.97
MIN_FLUFL_ADDRESS_RECALL = 0.95
MIN_FLUFL_ADDRESS_PRECISION = 0.95
# Policy safety: of the sisimai rows whose reason is a message refusal, at
# most this share may be classed hard (scored, could disable a member).
MAX_POLICY_AS_HARD = 0.15
# ... and of the rows whose reason is a dead address (user/host unknown),
# at most this share may be classed policy (weight 0: never removed).
MAX_ADDRESS_AS_POLICY = 0.05


def _rows():
    lines = (CORPUS / "EXPECTED.tsv").read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    assert header[:3] == ["path", "expected_addresses", "expected_class"], header
    for line in lines[1:]:
        cols = line.split("\t")
        cols += [""] * (5 - len(cols))
        yield cols[0], {a for a in cols[1].split(",") if a}, cols[2], cols[3], cols[4]


def _allowed(path: str, expected: str, source: str) -> set[str] | None:
    if expected == "unknown":
        return None
    if path.startswith("flufl.bounce/"):
        return FLUFL_MAP[expected]
    allowed = set(SISIMAI_MAP[expected])
    if expected == "permanent":
        if "reason=expired" in source:
            allowed.add("soft")
        if re.search(r"status=5\.\d+\.9\d\d", source):
            allowed.add("soft")
        reasons = set(re.findall(r"reason=(\w+)", source))
        if reasons & SISIMAI_TRANSIENT_REASONS:   # per recipient: a full mailbox beside a dead one
            allowed.add("soft")
    return allowed


@pytest.mark.skipif(not (CORPUS / "EXPECTED.tsv").exists(), reason="bounce corpus not present")
def test_corpus_agreement(capsys):
    rows = list(_rows())
    assert len(rows) >= 300
    results: dict[str, Classification] = {}
    crashes = []
    for path, *_ in rows:
        try:
            results[path] = classify((CORPUS / path).read_bytes())
        except Exception as exc:  # classify must never raise
            crashes.append((path, repr(exc)))
    assert not crashes, crashes

    agree = Counter()
    total = Counter()
    disagreements = []
    tp = fp = fn = 0
    policy_rows = policy_as_hard = address_rows = address_as_policy = 0
    flufl_failed = flufl_as_policy = 0
    for path, addresses, expected, source, _notes in rows:
        result = results[path]
        assert isinstance(result, Classification)
        got = {f.bounce_class for f in result.failures} or {"none"}
        assert got <= set(CLASSES) | {"none"}, (path, got)
        assert result.kind in ("dsn", "arf", "autoreply", "non-standard", "not-a-bounce")
        allowed = _allowed(path, expected, source)
        if allowed is not None:
            total[expected] += 1
            if got <= allowed:
                agree[expected] += 1
            else:
                disagreements.append(f"{path}: expected {expected}, got {sorted(got)} ({result.kind})")
        if path.startswith("flufl.bounce/") and addresses:
            found = {f.address.lower() for f in result.failures if f.address}
            tp += len(found & addresses)
            fp += len(found - addresses)
            fn += len(addresses - found)
        if path.startswith("flufl.bounce/") and expected == "permanent" and addresses:
            flufl_failed += 1
            flufl_as_policy += "policy" in got
        if path.startswith("sisimai") and expected == "permanent":
            reasons = set(re.findall(r"reason=(\w+)", source))
            if reasons and reasons <= SISIMAI_POLICY_REASONS:
                policy_rows += 1
                policy_as_hard += "hard" in got
            if reasons and reasons <= SISIMAI_ADDRESS_REASONS:
                address_rows += 1
                address_as_policy += "policy" in got

    class_agreement = sum(agree.values()) / sum(total.values())
    recall = tp / (tp + fn)
    precision = tp / (tp + fp)
    kinds = Counter(r.kind for r in results.values())
    classes = Counter(c for r in results.values() for c in {f.bounce_class for f in r.failures} or {"none"})
    with capsys.disabled():
        print(f"\ncorpus: {len(rows)} messages, 0 crashes; kinds {dict(kinds)}")
        print(f"classes seen: {dict(classes)}")
        print("class agreement: " + ", ".join(f"{k} {agree[k]}/{total[k]}" for k in sorted(total))
              + f"; overall {sum(agree.values())}/{sum(total.values())} = {class_agreement:.1%}")
        print(f"flufl.bounce rows, addresses: recall {tp}/{tp + fn} = {recall:.1%}, "
              f"precision {tp}/{tp + fp} = {precision:.1%}")
        print(f"policy safety (sisimai): message-refusal rows classed hard {policy_as_hard}/{policy_rows}; "
              f"dead-address rows classed policy {address_as_policy}/{address_rows}; "
              f"flufl.bounce failed-address rows classed policy {flufl_as_policy}/{flufl_failed}")
        for line in disagreements:
            print("  disagrees: " + line)
    assert class_agreement >= MIN_CLASS_AGREEMENT
    assert recall >= MIN_FLUFL_ADDRESS_RECALL
    assert precision >= MIN_FLUFL_ADDRESS_PRECISION
    assert policy_rows and policy_as_hard / policy_rows <= MAX_POLICY_AS_HARD
    assert address_rows and address_as_policy / address_rows <= MAX_ADDRESS_AS_POLICY
    # flufl.bounce's permanent rows are dead addresses its detectors found; a
    # 'policy' class there (weight 0) would keep a dead address on the list for
    # ever -- e.g. a spam-filter header quoted from our own returned message.
    assert flufl_failed and flufl_as_policy / flufl_failed <= MAX_ADDRESS_AS_POLICY


@pytest.mark.skipif(not (CORPUS / "EXPECTED.tsv").exists(), reason="bounce corpus not present")
def test_corpus_with_verp_never_scores_autoreplies_or_non_bounces():
    """Through a VERP address (the engine's main path) the corpus's auto-replies
    and non-bounces must yield nothing scored, and real bounces stay bounces."""
    member = "member@example.org"
    for path, _addresses, expected, _source, _notes in _rows():
        result = classify((CORPUS / path).read_bytes(), verp_address=member)
        for failure in result.failures:
            assert failure.address == member
            assert failure.attribution == "verp"
        if expected == "autoreply":
            assert not result.is_bounce and not result.scored, path


def _new_rows():
    lines = (NEW_CORPUS / "EXPECTED.tsv").read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    assert header == ["path", "expected_addresses", "expected_class", "expectation_source", "notes",
                      "root_cause", "listgate_class", "mta"], header
    for line in lines[1:]:
        yield dict(zip(header, line.split("\t")))


def test_new_corpus_agrees_per_root_cause(capsys):
    """Our messages in several MTAs' real formats, one row per mechanism: each must
    give exactly ``listgate_class`` for its address, without VERP and through VERP."""
    rows = list(_new_rows())
    agree, total, mtas, wrong = Counter(), Counter(), {}, []
    for row in rows:
        raw = (NEW_CORPUS / row["path"]).read_bytes()
        cause = row["root_cause"]
        total[cause] += 1
        mtas.setdefault(cause, set()).add(row["mta"])
        plain = classify(raw)
        verp = classify(raw, verp_address="member@lists-member.example")
        got_plain = {f.bounce_class for f in plain.failures}
        got_verp = {f.bounce_class for f in verp.failures}
        addresses = {f.address for f in plain.failures}
        expected = row["listgate_class"]
        # the shared corpus's coarse column: each reports a failed delivery
        assert row["expected_class"] == "permanent", row["path"]
        if got_plain == got_verp == {expected} and row["expected_addresses"] in addresses | {""}:
            agree[cause] += 1
        else:
            reasons = [f.reason for f in plain.failures]
            wrong.append(f"{row['path']}: expected {expected}, got {sorted(got_plain)} / VERP {sorted(got_verp)}; "
                         f"addresses {sorted(map(str, addresses))}; {reasons}")
    with capsys.disabled():
        print(f"\nnew corpus ({NEW_CORPUS.name}): {len(rows)} messages")
        for cause in sorted(total):
            print(f"  root cause {cause} ({ROOT_CAUSES[cause]}): {agree[cause]}/{total[cause]} agree, "
                  f"MTAs {', '.join(sorted(mtas[cause]))}")
        for line in wrong:
            print("  disagrees: " + line)
    assert not wrong
    # each rule is shown on more than one MTA's wording
    assert all(len(m) >= 2 for m in mtas.values()), mtas
