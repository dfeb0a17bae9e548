"""``listgate classify FILE… [--json]``: what listgate concludes about a message, and why.

The admin's "why did this bounce count?" tool. For each file ('-' reads
standard input): the kind of message, each failing address with its class,
enhanced status code, attribution, the rule that decided, and the
diagnostic. With a site config ('listgate -c FILE classify ...' or
$LISTGATE_CONFIG), a message whose To / Delivered-To / X-Original-To is a
list's bounce address is also decoded as the engine would (signed member
VERP or probe token), the failures are attributed to that member, and the
list's weight for each class is shown. ``--verp ADDRESS`` gives the bounce
address the message reached, as the engine sees it: a member address
(``alice@example.com``), or with a site config a whole list bounce address
(``L-bounces+EXT@D``, decoded and checked as the engine does). The
classification is the engine's own call (:func:`listgate.bounce.classify.classify`
with the same VERP member), so what is shown is what the engine decides.
Nothing is recorded anywhere: this command only reads.

Exit status: 0; 1 if a file could not be read or the config is bad.
"""
from __future__ import annotations

import dataclasses
import os
import sys

from .. import config
from ..bounce import message as bm
from ..bounce.classify import FAILURE_CLASSES, classify
from .common import load_site, print_json

RECIPIENT_HEADERS = ("X-Original-To", "Delivered-To", "To")


def register(sub) -> None:
    p = sub.add_parser("classify", help="explain how listgate classifies bounce messages",
                       description=__doc__.split("\n\n")[1])
    p.add_argument("files", nargs="+", metavar="FILE", help="message file (RFC 5322; '-' for stdin)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.add_argument("--verp", metavar="ADDRESS",
                   help="classify as a bounce that reached this member's VERP address (the engine's path): "
                        "a member address, or (with a site config) a full list bounce address L-bounces+EXT@D")
    p.set_defaults(func=cmd_classify)


def _read(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    with open(path, "rb") as fh:
        return fh.read()


def _decode(site, rcpt: str, header: str) -> dict | None:
    """What list bounce address ``rcpt`` decodes to (as the engine decodes it), or None."""
    from .. import addresses, verp
    parsed = addresses.parse(rcpt, site.lists)
    if parsed is None or parsed.role != "bounces":
        return None
    info = {"recipient": rcpt, "header": header, "list": parsed.list_key, "kind": "plain",
            "member": None, "error": None}
    lc = site.lists[parsed.list_key]
    weights = lc.get("bounce_weights")
    info["weights"] = weights.as_dict() if weights is not None else None
    if not parsed.extension:
        return info
    try:
        decoded = verp.decode(site, lc, parsed.extension)
    except Exception as exc:  # unreadable key file, store unavailable: say so, go on
        info.update(kind="undecodable", error=str(exc))
        return info
    info["kind"] = decoded.kind
    info["error"] = decoded.error
    if decoded.kind in ("member", "unsigned"):
        info["member"] = decoded.member
    elif decoded.kind == "probe" and decoded.pending is not None:
        info["member"] = decoded.pending.payload.get("member")
    return info


def _verp_of(site, raw: bytes) -> dict | None:
    """The bounce address this message was sent to and what it decodes to, or None."""
    msg = bm.parse(raw)
    for name in RECIPIENT_HEADERS:
        for rcpt in bm.addresses_in(msg, name):
            info = _decode(site, rcpt, name)
            if info is not None:
                return info
    return None


def _given_verp(site, address: str) -> dict:
    """``--verp ADDRESS``: a list bounce address (decoded, needs a site) or a member address."""
    info = _decode(site, address, "--verp") if site is not None else None
    if info is not None:
        return info
    return {"recipient": address, "header": "--verp", "list": None, "kind": "member",
            "member": address, "error": None, "weights": None}


def _weight(verp_info: dict | None, bounce_class: str) -> float | None:
    weights = (verp_info or {}).get("weights") or {}
    value = weights.get(bounce_class)
    return float(value) if value is not None else None


def explain(raw: bytes, site=None, verp_address: str | None = None) -> dict:
    """Classification of ``raw`` plus VERP decoding as a JSON-able dict.

    ``verp_address``: the bounce address it reached (see ``--verp``); else,
    with a ``site``, the recipient headers are decoded.
    """
    if verp_address:
        verp_info = _given_verp(site, verp_address)
    else:
        verp_info = _verp_of(site, raw) if site is not None else None
    member = (verp_info or {}).get("member")
    kind = "probe" if (verp_info or {}).get("kind") == "probe" else "verp"
    result = classify(raw, verp_address=member, verp_kind=kind)
    failures = []
    for f in result.failures:
        item = dataclasses.asdict(f)
        item["scored"] = f.bounce_class in FAILURE_CLASSES
        item["weight"] = _weight(verp_info, f.bounce_class)
        failures.append(item)
    return {"is_bounce": result.is_bounce, "kind": result.kind, "message_id": result.message_id,
            "original_message_id": result.original_message_id, "failures": failures,
            "notes": list(result.notes), "verp": verp_info}


def _print_text(path: str, info: dict) -> None:
    what = "a bounce" if info["is_bounce"] else "not a bounce"
    print(f"{path}: {info['kind']} ({what})")
    if info["message_id"] or info["original_message_id"]:
        print(f"  message-id {info['message_id'] or '-'}, original {info['original_message_id'] or '-'}")
    verp = info["verp"]
    if verp:
        where = f"{verp['list']} bounces" if verp["list"] else "a member's VERP address"
        line = f"  sent to {verp['recipient']} ({verp['header']}): {where}, {verp['kind']}"
        if verp["member"]:
            line += f" -> member {verp['member']}"
        if verp["error"]:
            line += f" ({verp['error']})"
        print(line)
    if not info["failures"]:
        print("  no failures: nothing is scored")
    for f in info["failures"]:
        if not f["scored"]:
            counted = "not scored"
        elif f["weight"] is not None:
            counted = f"scored with weight {f['weight']:g}"
        else:
            counted = f"scored with the list's bounce_weights.{f['bounce_class']}"
        print(f"  {f['address'] or '(no address)'}: {f['bounce_class']} {f['status'] or '-'} "
              f"[{f['attribution']}] {counted}")
        print(f"    why: {f['reason']}")
        if f["diagnostic"]:
            print(f"    diagnostic: {f['diagnostic'][:300]}")
    for note in info["notes"]:
        print(f"  note: {note}")


def cmd_classify(args) -> int:
    site = load_site(args) if args.config or os.environ.get(config.ENV_VAR) else None
    status = 0
    out = []
    for path in args.files:
        try:
            raw = _read(path)
        except OSError as exc:
            print(f"listgate: {path}: {exc.strerror or exc}", file=sys.stderr)
            status = 1
            continue
        info = explain(raw, site, args.verp)
        if args.json:
            out.append({"file": path, **info})
        else:
            _print_text(path, info)
    if args.json:
        print_json(out)
    return status
