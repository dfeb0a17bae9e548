"""``listgate queue ls [QUEUE]``, ``queue show ID``, ``queue edit ID``, ``queue unshunt [--discard] [ID...]``,
``queue requeue ID...|--all``, ``queue flush [ID...]``.

Exit status: 0 done, 1 unknown queue/qfile, unparsable qfile or invalid edit,
75 (EX_TEMPFAIL) when a qfile could not be stored durably (full disk, read-only).
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
from datetime import datetime, timezone

from .. import clock
from ..queue import QUEUES, QFileFormatError, QueueError, Switchboard, qfile, wake
from ..queue.names import RESTING
from .common import fail, load_site, print_json

EX_TEMPFAIL = 75


EDIT_HELP = """\
Open a waiting qfile in $EDITOR (default vi) and store the result. While it is
open the qfile is taken out of its queue (ID.edit.PID), so no runner sends it
meanwhile. A qfile is plain text: the first line 'listgate-qfile 1', the
metadata as JSON, a line '--- message ---', then the message as received. The
edit is stored only if it still parses; otherwise the qfile stays as it was,
your edit is kept in a temporary file and the exit status is 1. A qfile a
runner holds (in progress) cannot be edited: try again once it is done."""


def register(sub) -> None:
    p = sub.add_parser("queue", help="inspect and repair qfile queues",
                       description="Inspect and repair qfile queues: ls, show, edit, unshunt, requeue, flush.")
    qsub = p.add_subparsers(dest="queue_command", metavar="ACTION", required=True)

    s = qsub.add_parser("ls", help="list the qfiles of one queue or of all queues (FIFO order)")
    s.add_argument("queue", nargs="?", choices=QUEUES, metavar="QUEUE", help=f"one of {', '.join(QUEUES)}")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_ls)

    s = qsub.add_parser("show", help="print a qfile's metadata and message")
    s.add_argument("id")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--json", action="store_true", help="metadata and message (UTF-8, undecodable bytes escaped) as JSON")
    g.add_argument("--raw", action="store_true", help="only the raw message bytes, exactly as stored")
    s.set_defaults(func=cmd_show)

    s = qsub.add_parser("edit", help="edit a waiting qfile with $EDITOR; no runner takes it meanwhile",
                        description=EDIT_HELP)
    s.add_argument("id")
    s.set_defaults(func=cmd_edit)

    s = qsub.add_parser("unshunt", help="move shunted qfiles back to the queue they came from")
    s.add_argument("ids", nargs="*", metavar="ID", help="only these qfiles (default: all of shunt)")
    s.add_argument("--discard", action="store_true", help="delete them instead")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_unshunt)

    s = qsub.add_parser("requeue", help="put qfiles of bad back into the queue they came from",
                        description="Put qfiles of the bad queue back into the queue they came from "
                                    "(from_queue; else out for a fan-out, in otherwise), attempts reset, "
                                    "the requeue recorded in their metadata (requeued). Files bad holds "
                                    "because they could not be parsed stay there: repair them with "
                                    "'listgate queue edit' first.")
    s.add_argument("ids", nargs="*", metavar="ID", help="these qfiles of bad")
    s.add_argument("--all", action="store_true", help="every qfile of bad")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_requeue)

    s = qsub.add_parser("flush", help="make the qfiles of retry due now (like postqueue -f)",
                        description="Make every qfile of the retry queue (or the named ones) due now: the "
                                    "runner sends them at its next pass instead of after their backoff. "
                                    "Their retry count and give-up time stay as they were.")
    s.add_argument("ids", nargs="*", metavar="ID", help="only these qfiles of retry")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_flush)


def _utc(ts) -> str:
    try:
        return datetime.fromtimestamp(float(ts), tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"


def _entry(sb: Switchboard, qid: str, state: str) -> dict:
    entry = {"id": qid, "queue": sb.name, "state": state}
    try:
        qf = sb.peek(qid)
    except (QFileFormatError, OSError) as exc:
        return {**entry, "error": str(exc)}
    if qf is None:  # finished or moved while we listed
        return {**entry, "state": "gone"}
    meta = qf.meta
    rcpts = meta.get("recipients")
    return {**entry, "arrival": meta.get("arrival"), "size": len(qf.msg), "list": meta.get("list"),
            "envelope_sender": meta.get("envelope_sender"),
            "recipients": len(rcpts) if isinstance(rcpts, list) else None,
            "attempts": meta.get("attempts"), "reason": meta.get("reason"), "from_queue": meta.get("from_queue")}


def cmd_ls(args) -> int:
    site = load_site(args)
    names = [args.queue] if args.queue else list(QUEUES)
    result: dict[str, list[dict]] = {}
    for name in names:
        if not os.path.lexists(os.path.join(site.queue_dir, name)):
            result[name] = []        # never made yet: nothing in it (a read creates nothing)
            continue
        sb = Switchboard.for_site(site, name)
        held = [_entry(sb, q, "held") for q in sb.held_ids()]
        waiting = [_entry(sb, q, "waiting") for q in sb.ids()]
        editing = [{"id": q, "queue": name, "state": "editing"} for q in sb.editing_ids()]
        result[name] = sorted(held + waiting + editing, key=lambda e: e["id"])
    if args.json:
        print_json(result)
        return 0
    for name, entries in result.items():
        if not entries and not args.queue:
            continue
        held = sum(e["state"] == "held" for e in entries)
        print(f"{name}: {len(entries)} qfile(s)" + (f", {held} in progress" if held else ""))
        for e in entries:
            if "error" in e:
                print(f"  {e['id']}  {e['state']:<7}  UNPARSABLE: {e['error']}")
                continue
            if e["state"] == "gone":
                continue
            if e["state"] == "editing":
                print(f"  {e['id']}  editing  (listgate queue edit has it open)")
                continue
            rcpts = "-" if e.get("recipients") is None else e["recipients"]
            line = (f"  {e['id']}  {e['state']:<7}  {_utc(e.get('arrival'))}  {e.get('size', 0):>8}B  "
                    f"list={e.get('list') or '-'}  from=<{e.get('envelope_sender') or ''}>  rcpts={rcpts}")
            if e.get("attempts"):
                line += f"  attempts={e['attempts']}"
            if e.get("reason"):
                line += f"  reason={e['reason']!r}"
            print(line)
    if not args.queue and not any(result.values()):
        print("all queues are empty")
    return 0


def _find(site, qid: str):
    for name in QUEUES:
        if not os.path.lexists(os.path.join(site.queue_dir, name)):
            continue                 # never made yet: nothing in it (a read creates nothing)
        sb = Switchboard.for_site(site, name)
        try:
            qf = sb.peek(qid)
        except QFileFormatError as exc:
            fail(f"qfile {qid} in queue {name} is unparsable: {exc}")
        if qf is not None:
            return qf
    fail(f"no qfile {qid} in any queue (see: listgate queue ls)")


def cmd_show(args) -> int:
    site = load_site(args)
    qf = _find(site, args.id)
    state = "in progress" if qf.path.endswith(".held") else "waiting"
    if args.raw:
        sys.stdout.buffer.write(qf.msg)
        return 0
    if args.json:
        print_json({"id": qf.id, "queue": qf.queue, "state": state, "path": qf.path, "meta": qf.meta,
                    "size": len(qf.msg), "message": qf.msg.decode("utf-8", "backslashreplace")})
        return 0
    out = sys.stdout
    out.write(f"qfile {qf.id}\nqueue {qf.queue} ({state}), arrived {_utc(qf.meta.get('arrival'))} UTC, "
              f"{len(qf.msg)} bytes, file {qf.path}\n")
    out.write(json.dumps(qf.meta, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    out.write("--- message ---\n")
    out.flush()
    sys.stdout.buffer.write(qf.msg)
    if not qf.msg.endswith(b"\n"):
        sys.stdout.buffer.write(b"\n")
    return 0


def cmd_edit(args) -> int:
    site = load_site(args)
    qid = args.id
    sb, original = _take_for_edit(site, qid)
    try:
        # a version 2 file (older releases) is handed over as plain version 1 text, without
        # its padding; one that does not parse is handed over as it is, to be repaired
        text = qfile.dumps(*qfile.loads(original))
    except QFileFormatError:
        text = original
    except BaseException:
        sb.end_edit(qid, None)
        raise
    keep = False
    fd, tmp = tempfile.mkstemp(prefix=f"listgate-{qid}-", suffix=".qf")  # mode 0600: it holds mail
    try:
        try:
            with open(fd, "wb") as fh:
                fh.write(text)
            edited = _run_editor(tmp)
        except BaseException:
            sb.end_edit(qid, None)
            raise
        if edited == text:
            sb.end_edit(qid, None)
            print(f"qfile {qid} unchanged")
            return 0
        try:
            sb.end_edit(qid, edited)
        except QFileFormatError as exc:
            keep = True
            fail(f"the edited qfile is not valid: {exc}\nqfile {qid} is unchanged; your edit is kept in {tmp}")
        except QueueError as exc:
            keep = True
            fail(f"{exc.strerror}\nqfile {qid} is unchanged; your edit is kept in {tmp}", EX_TEMPFAIL)
        print(f"qfile {qid} in queue {sb.name} updated")
        return 0
    finally:
        if not keep:
            os.unlink(tmp)


def _take_for_edit(site, qid: str) -> tuple[Switchboard, bytes]:
    """The queue holding waiting qfile ``qid`` and its bytes, taken for editing; exits 1
    (75 if the queue cannot be changed) with a clear message otherwise."""
    for name in QUEUES:
        sb = Switchboard.for_site(site, name)
        try:
            data = sb.take_for_edit(qid)
        except QFileFormatError as exc:
            fail(f"qfile {qid} in queue {name} cannot be edited: {exc}")
        except QueueError as exc:
            fail(exc.strerror, EX_TEMPFAIL)
        if data is not None:
            return sb, data
        if qid in sb.held_ids():
            fail(f"qfile {qid} is in progress in queue {name} (a runner holds it): try again once it is done")
        if qid in sb.editing_ids():
            fail(f"qfile {qid} in queue {name} is being edited already (listgate queue edit)")
    fail(f"no qfile {qid} in any queue (see: listgate queue ls)")


def _run_editor(path: str) -> bytes:
    """Run ``$EDITOR`` (default vi; split like a shell word list) on ``path``; its content
    afterwards. Exits 1 if the editor cannot be run or fails (the caller puts the qfile back)."""
    command = shlex.split(os.environ.get("EDITOR") or "vi") + [path]
    try:
        status = subprocess.run(command).returncode
    except OSError as exc:
        fail(f"cannot run the editor {command[0]!r} (set $EDITOR): {exc.strerror}; nothing changed")
    if status != 0:
        fail(f"the editor {command[0]!r} exited with status {status}; nothing changed")
    with open(path, "rb") as fh:
        return fh.read()


def cmd_unshunt(args) -> int:
    return _put_back(load_site(args), "shunt", args.ids, args.ids or None, args.json, discard=args.discard)


def cmd_requeue(args) -> int:
    if bool(args.ids) == args.all:
        fail("name the qfiles of bad to requeue, or --all (see: listgate queue ls bad)", 2)
    return _put_back(load_site(args), "bad", args.ids, None if args.all else args.ids, args.json)


def cmd_flush(args) -> int:
    board = Switchboard.for_site(load_site(args), "retry")
    flushed, status = [], 0
    for qid in args.ids or board.ids():
        qf = board.take(qid)   # None: a runner holds it (it is being sent) or it is gone
        if qf is None:
            if args.ids:
                print(f"listgate: no qfile {qid} waiting in retry (see: listgate queue ls retry)", file=sys.stderr)
                status = 1
            continue
        try:
            board.update(qf, {**qf.meta, "retry_at": clock.now()})
        except QueueError as exc:
            print(f"listgate: {exc.strerror}", file=sys.stderr)
            status = EX_TEMPFAIL
        finally:
            try:
                board.release(qf)
            except QueueError as exc:  # it stays held; the runner's recover puts it back
                print(f"listgate: {exc.strerror}", file=sys.stderr)
                status = EX_TEMPFAIL
        if status == EX_TEMPFAIL:
            break
        flushed.append(qid)
    if flushed:
        try:
            wake.poke(board.queue_dir)   # running runners look at retry again at their next pass
        except QueueError as exc:
            print(f"listgate: {exc.strerror}; the runners send them once their earlier due time "
                  "comes or a new qfile arrives", file=sys.stderr)
            status = status or EX_TEMPFAIL
    if args.json:
        print_json(flushed)
    else:
        for qid in flushed:
            print(f"{qid} due now")
        if not flushed and not args.ids:
            print("retry is empty")
    return status


def _put_back(site, resting: str, ids: list[str], named, as_json: bool, *, discard: bool = False) -> int:
    """Move qfiles of ``resting`` (shunt, bad) back to work: ``named`` ids, or all (None)."""
    board = Switchboard.for_site(site, resting)
    done = []
    status = 0
    for qid in ids or board.ids():
        try:
            to = _put_back_one(board, qid, discard)
        except QueueError as exc:
            print(f"listgate: {exc.strerror}", file=sys.stderr)
            status = EX_TEMPFAIL
            break
        if to is False:
            print(f"listgate: no qfile {qid} waiting in {resting} (see: listgate queue ls {resting})",
                  file=sys.stderr)
            status = 1
            continue
        if to is True:
            print(f"listgate: qfile {qid} in {resting} is a file that could not be parsed; repair it with "
                  f"'listgate queue edit {qid}' first", file=sys.stderr)
            status = status or (1 if named else 0)
            continue
        done.append({"id": qid, "to": to})
    if as_json:
        print_json(done)
    else:
        for d in done:
            print(f"{d['id']} -> {d['to'] or 'discarded'}")
        if not done and named is None and status == 0:
            print(f"{resting} is empty")
    return status


def _put_back_one(board: Switchboard, qid: str, discard: bool):
    """Send ``qid`` of shunt or bad back where it came from (or delete it): the queue,
    None when discarded, False when it is not there, True when it is an unparsable
    file bad keeps as evidence (left alone). Raises QueueError."""
    qf = board.take(qid)
    if qf is None:
        return False
    if discard:
        board.finish(qf)
        return None
    meta = {k: v for k, v in qf.meta.items() if k != "reason"}
    if board.name == "bad":
        if qf.meta.get("unparsable"):
            board.release(qf)
            return True
        # what put it in bad stays visible: a qfile that comes back again is a pattern
        before = qf.meta.get("requeued")
        meta["requeued"] = [*(before if isinstance(before, list) else [])[-9:],
                            {"at": clock.now(), "reason": qf.meta.get("reason"),
                             "attempts": qf.meta.get("attempts")}]
    back = qf.meta.get("from_queue")
    default = "out" if isinstance(qf.meta.get("deliveries"), list) else "in"
    to = back if back in QUEUES and back not in RESTING else default
    try:
        board.move(qf, to, meta=meta)
    except QueueError:
        board.release(qf)
        raise
    return to
