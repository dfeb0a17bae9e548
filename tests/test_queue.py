"""The qfile format and the Switchboard: byte exactness, FIFO, slices, bad, recover."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
import zlib

import pytest

from listgate import clock
from listgate.queue import QUEUES, QFileFormatError, QueueError, Switchboard, id_arrival, qfile, slice_of

from queue_helpers import queue_files

MESSAGES = [
    b"",
    b"Subject: crlf\r\n\r\nline one\r\nline two\r\n",
    b"Subject: bare lf\n\nbody\n",
    b"Subject: mixed\r\n\nbare CR\ronly\r\r\n",
    b"Subject: 8bit \xe9\xff\xfe\r\n\r\n\x00\x01 NUL and C0\x80\x81\r\n",
    b"no trailing newline",
    b"Subject: tricks\r\n\r\n\n--- message ---\nlistgate-qfile 1\n{\"arrival\": 0}\n--- message ---\n",
    b"\n--- message ---\n",
    bytes(range(256)) * 64,
    b"Subject: big\r\n\r\n" + bytes(range(256)) * 400,   # 100 KB
]


@pytest.fixture
def qroot(tmp_path):
    return str(tmp_path / "queue")


@pytest.mark.parametrize("msg", MESSAGES)
def test_message_bytes_survive_exactly(qroot, msg):
    sb = Switchboard(qroot, "in")
    qid = sb.enqueue(msg, {"list": "demo@example.org"})
    qf = sb.dequeue()
    assert qf.id == qid and qf.msg == msg and qf.queue == "in"
    moved = sb.move(qf, "out")
    out = Switchboard(qroot, "out").dequeue()
    assert out.id == moved == qid and out.msg == msg


def test_file_is_readable_text_with_version_and_one_key_per_line(qroot):
    sb = Switchboard(qroot, "in")
    qid = sb.enqueue(b"Subject: hi\r\n\r\nbody\r\n",
                     {"list": "demo@example.org", "recipients": ["a@example.org"], "envelope_sender": "b\u00e9@x.org"},
                     arrival=1700000000.25)
    data = open(os.path.join(sb.dir, qid + ".qf"), "rb").read()
    lines = data.split(b"\n")
    assert lines[0] == b"listgate-qfile 1"  # plain text: no length, no checksum, no padding
    assert lines[1] == b"{"
    assert b' "arrival": 1700000000.25,' in lines
    assert b' "attempts": 0,' in lines
    assert ' "envelope_sender": "b\u00e9@x.org",'.encode() in lines  # readable, not \\u-escaped
    assert data.endswith(b"\n}\n--- message ---\nSubject: hi\r\n\r\nbody\r\n")
    assert qid.startswith("1700000000250000000-")


def test_metadata_round_trips_unicode_and_lone_surrogates(qroot):
    sb = Switchboard(qroot, "in")
    meta = {"subject": "caf\u00e9 \u2603", "raw_header": "bad \udcff byte", "n": [1, 2.5, None, True]}
    sb.enqueue(b"x", meta)
    qf = sb.dequeue()
    assert {k: qf.meta[k] for k in meta} == meta


def test_hand_edited_file_still_parses(qroot):
    """An operator rewrote the metadata compactly in an editor and changed a value."""
    sb = Switchboard(qroot, "in")
    qid = sb.enqueue(b"Subject: x\r\n\r\nbody\r\n", {"list": "demo@example.org"}, arrival=5.0)
    path = os.path.join(sb.dir, qid + ".qf")
    with open(path, "wb") as fh:
        fh.write(b'listgate-qfile 1\n{"list": "other@example.org", "arrival": 5.0,\n  "attempts": 0}\n'
                 b"--- message ---\nSubject: x\r\n\r\nbody\r\n")
    qf = sb.dequeue()
    assert qf.meta["list"] == "other@example.org" and qf.msg == b"Subject: x\r\n\r\nbody\r\n"


def test_reader_dispatches_on_format_version():
    meta, msg = qfile.loads(b"listgate-qfile 1\r\n{}\n--- message ---\nabc")
    assert (meta, msg) == ({}, b"abc")
    meta, msg = qfile.loads(_v2(b"{}\n--- message ---\nabc"))
    assert (meta, msg) == ({}, b"abc")
    with pytest.raises(QFileFormatError, match="version 3 is not readable"):
        qfile.loads(b"listgate-qfile 3 19\n{}\n--- message ---\nabc")
    assert qfile.FORMAT_VERSION == 1 and set(qfile._READERS) == {1, 2}  # 2: written by older releases


def _v2(proper: bytes, *, length: int | None = None, crc: bytes | None = None, padding: bytes = b"") -> bytes:
    """A version 2 qfile whose first line says ``length`` (default: right) and ``crc``
    (default: the right CRC32 of the first ``length`` bytes of ``proper + padding``)."""
    length = len(proper) if length is None else length
    crc = b"%08x" % zlib.crc32((proper + padding)[:length]) if crc is None else crc
    return b"listgate-qfile 2 %d %s\n" % (length, crc) + proper + padding


def v2_file(meta: dict, msg: bytes, *, padding: bytes = b"") -> bytes:
    """A qfile as releases with a slot pool wrote it: version 2 with LENGTH and CRC32,
    then ``padding`` (the old content of the slot file)."""
    return _v2(qfile.dumps(meta, msg).split(b"\n", 1)[1], padding=padding)


@pytest.mark.parametrize("msg", MESSAGES)
def test_version_2_padding_is_ignored_exactly(msg):
    """What follows LENGTH (the old content of a slot file) is not part of the message,
    even when it looks like one: a separator, a first line, JSON, the message again."""
    meta = {"list": "demo@example.org", "n": [1, "\u00e9"]}
    data = v2_file(meta, msg)
    assert qfile.loads(data) == (meta, msg)  # no padding: LENGTH is the rest of the file
    padding = b"\n--- message ---\nlistgate-qfile 2 5\n{}" + msg + bytes(range(256)) + b"\0" * 1000
    assert qfile.loads(v2_file(meta, msg, padding=padding)) == (meta, msg)
    assert qfile.loads(data + b"\0") == (meta, msg)
    with pytest.raises(QFileFormatError, match="cut short"):
        qfile.loads(data[:-1])


def test_version_2_qfiles_left_by_an_upgrade_are_delivered_and_rewritten_as_plain_text(qroot):
    """An upgrade strands no queued mail: padded version 2 files, waiting and held, are
    read, recovered and moved; what listgate writes for them is version 1 text."""
    sb = Switchboard(qroot, "in")
    msgs = [b"Subject: waiting\r\n\r\nbody\r\n", b"Subject: held\r\n\r\n\xe9\x00\r\n"]
    ids = ["1700000000000000000-1-000000-0000000a", "1700000000000000001-1-000000-0000000b"]
    for qid, msg, suffix in zip(ids, msgs, (".qf", ".held")):
        with open(os.path.join(sb.dir, qid + suffix), "wb") as fh:
            fh.write(v2_file({"list": "demo@example.org", "attempts": 0}, msg, padding=b"OLD MAIL\r\n" * 5000))
    assert sb.recover() == 1  # the held one goes back with attempts 1, written as version 1
    assert open(os.path.join(sb.dir, ids[1] + ".qf"), "rb").read().startswith(b"listgate-qfile 1\n")
    got = [sb.dequeue(), sb.dequeue()]
    assert [q.msg for q in got] == msgs and [q.meta["attempts"] for q in got] == [0, 1]
    sb.move(got[0], "out")
    data = open(os.path.join(qroot, "out", ids[0] + ".qf"), "rb").read()
    assert data.startswith(b"listgate-qfile 1\n") and b"OLD MAIL" not in data
    assert Switchboard(qroot, "out").dequeue().msg == msgs[0] and Switchboard(qroot, "bad").ids() == []


def test_a_qfile_edited_in_place_is_read_not_sent_to_bad(qroot):
    """An admin opens a stored qfile in a text editor and changes the message and the
    metadata in place (lengths change, the editor adds a final newline)."""
    sb = Switchboard(qroot, "in")
    qid = sb.enqueue(b"Subject: x\r\n\r\nbody\r\n", {"list": "demo@example.org", "recipients": ["a@x.org"]})
    path = os.path.join(sb.dir, qid + ".qf")
    with open(path, "r+b") as fh:
        data = fh.read().replace(b'"a@x.org"', b'"a@x.org", "second@x.org"').replace(b"body", b"a longer body")
        fh.seek(0)
        fh.write(data + b"\n")
    qf = sb.dequeue()
    assert qf is not None and Switchboard(qroot, "bad").ids() == []
    assert qf.meta["recipients"] == ["a@x.org", "second@x.org"]
    assert qf.msg == b"Subject: x\r\n\r\na longer body\r\n\n"


@pytest.mark.parametrize("content,why", [
    (b"", "first line"),
    (b"\x80\x02}q\x00(X\x04\x00\x00\x00listq\x01.", "first line"),  # a Mailman pickle
    (b"listgate-qfile 1\n{\"a\": 1}\n", "separator"),
    (b"listgate-qfile one\n{}\n--- message ---\n", "bad format version"),
    (b"listgate-qfile 99\n{}\n--- message ---\n", "version 99"),
    (b"listgate-qfile 1\n{\"a\": \xff}\n--- message ---\nx", "not UTF-8"),
    (b"listgate-qfile 1\n{\"a\": 1,}\n--- message ---\nx", "not valid JSON"),
    (b"listgate-qfile 1\n[1, 2]\n--- message ---\nx", "not an object"),
    (b"listgate-qfile 1\n" + b"[" * 100000 + b"\n--- message ---\nx", "JSON|deeply"),
    (b"listgate-qfile 1\n{\"a\": NaN}\n--- message ---\nx", "NaN"),
    (b"listgate-qfile 1 20\n{}\n--- message ---\nabc", "bad format version"),
    (b"listgate-qfile 2\n{}\n--- message ---\nabc", "decimal LENGTH"),
    (b"listgate-qfile 2 twenty\n{}\n--- message ---\nabc", "decimal LENGTH"),
    (b"listgate-qfile 2 +19\n{}\n--- message ---\nabc", "decimal LENGTH"),
    (_v2(b"{}\n--- message ---\nabc", length=23, crc=b"00000000"), "beyond the end of the file"),
    # the separator only in the padding: the qfile proper has none
    (_v2(b"{}", padding=b"\n--- message ---\nabc"), "separator"),
    # versions and LENGTH are plain decimal: int() would take these
    (b"listgate-qfile +2 22\n{}\n--- message ---\nabc", "bad format version"),
    (b"listgate-qfile 02 22\n{}\n--- message ---\nabc", "bad format version"),
    (b"listgate-qfile  2 22\n{}\n--- message ---\nabc", "bad format version"),
    (b"listgate-qfile \xd9\xa2\n{}\n--- message ---\nabc", "bad format version"),  # ARABIC-INDIC TWO
    (_v2(b"{}\n--- message ---\nabc").replace(b" 22 ", b" 022 "), "decimal LENGTH"),
    # the checksum: missing (a version 2 file from before it), not hex, wrong
    (b"listgate-qfile 2 22\n{}\n--- message ---\nabc", "LENGTH CRC32"),
    (_v2(b"{}\n--- message ---\nabc", crc=b"DEADBEEF"), "LENGTH CRC32"),
    (_v2(b"{}\n--- message ---\nabc", crc=b"0000000"), "LENGTH CRC32"),
    (_v2(b"{}\n--- message ---\nabc", crc=b"%08x" % zlib.crc32(b"{}\n--- message ---\nabd")), "CRC32"),
    # numbers json parses but dumps cannot write back: the file could never be moved
    (b"listgate-qfile 1\n{\"a\": " + b"9" * 5000 + b"}\n--- message ---\nx", "cannot be read.*4300"),
    (b"listgate-qfile 1\n{\"arrival\": 1e999}\n--- message ---\nx", "1e999"),
    (b"listgate-qfile 1\n{\"score\": -1e400}\n--- message ---\nx", "-1e400"),
], ids=["empty", "pickle", "no-separator", "version-word", "version-99", "not-utf8", "bad-json", "array", "deep",
        "nan", "v1-with-length", "v2-no-length", "v2-length-word", "v2-length-sign", "v2-cut-short",
        "v2-separator-in-padding", "version-sign", "version-zero", "version-space", "version-non-ascii",
        "v2-length-zero", "v2-no-crc", "v2-crc-upper", "v2-crc-short", "v2-crc-wrong", "int-5000-digits",
        "float-inf", "float-minus-inf"])
def test_unparsable_qfile_goes_to_bad_with_reason_and_bytes(qroot, content, why):
    sb = Switchboard(qroot, "in")
    good = sb.enqueue(b"good", {}, arrival=20.0)
    bad_id = "0000000000000000001-1-000000-00000000"  # arrives first
    with open(os.path.join(sb.dir, bad_id + ".qf"), "wb") as fh:
        fh.write(content)
    qf = sb.dequeue()
    assert qf.id == good and qf.msg == b"good"
    assert sb.ids() == [] and sb.held_ids() == [good]
    bad = Switchboard(qroot, "bad")
    assert bad.ids() == [bad_id]
    kept = bad.dequeue()
    assert kept.msg == content  # the broken file is kept whole
    assert kept.meta["from_queue"] == "in" and kept.meta["unparsable"] is True
    assert kept.meta["reason"].startswith("unparsable qfile: ")
    import re
    assert re.search(why, kept.meta["reason"]), kept.meta["reason"]


def test_stray_file_with_odd_name_goes_to_bad_under_a_new_id(qroot):
    sb = Switchboard(qroot, "in")
    with open(os.path.join(sb.dir, "copied by hand.qf"), "wb") as fh:
        fh.write(b"Subject: oops\r\n\r\n")
    assert sb.dequeue() is None
    bad = Switchboard(qroot, "bad").dequeue()
    assert bad.msg == b"Subject: oops\r\n\r\n" and bad.meta["original_name"] == "copied by hand.qf"
    assert id_arrival(bad.id) is not None


def test_well_formed_qfile_under_an_odd_name_goes_to_bad_not_stuck(qroot):
    """A good qfile copied in under a name that is no qfile id could be held but
    never moved or shunted under that name: it goes to bad, whole."""
    sb = Switchboard(qroot, "in")
    data = qfile.dumps({"list": "demo@lists.example.org", "role": "post"}, b"Subject: x\r\n\r\nhi\r\n")
    with open(os.path.join(sb.dir, "weird-name.qf"), "wb") as fh:
        fh.write(data)
    assert sb.dequeue() is None and sb.held_ids() == []
    bad = Switchboard(qroot, "bad").dequeue()
    assert bad.msg == data and "is not a qfile id" in bad.meta["reason"]


def test_fifo_by_arrival_not_by_enqueue_order(qroot):
    sb = Switchboard(qroot, "in")
    order = [30.0, 10.0, 20.0, 10.5, 0.0]
    ids = {sb.enqueue(b"%f" % a, {}, arrival=a): a for a in order}
    got = []
    while (qf := sb.dequeue()) is not None:
        got.append(qf.meta["arrival"])
        sb.finish(qf)
    assert got == sorted(order)
    assert sorted(ids) == sorted(ids, key=ids.get)


def test_equal_arrival_times_neither_collide_nor_skip(qroot):
    clock.freeze(1800000000.0)
    sb = Switchboard(qroot, "in")
    ids = [sb.enqueue(b"%d" % i, {"i": i}) for i in range(500)]
    assert len(set(ids)) == 500
    assert sb.ids() == ids  # same arrival: enqueue order within a process
    got = []
    while (qf := sb.dequeue()) is not None:
        got.append(qf.meta["i"])
        sb.finish(qf)
    assert got == list(range(500))


def test_equal_arrival_times_from_two_processes(qroot):
    """Two processes enqueue with the same arrival: all ids distinct, none skipped."""
    code = ("import sys; from listgate.queue import Switchboard; sb = Switchboard(sys.argv[1], 'in'); "
            "[sb.enqueue(b'x', {'p': sys.argv[2]}, arrival=1800000000.0) for _ in range(100)]")
    procs = [subprocess.Popen([sys.executable, "-c", code, qroot, str(p)]) for p in range(2)]
    for p in procs:
        assert p.wait(timeout=60) == 0
    sb = Switchboard(qroot, "in")
    ids = sb.ids()
    assert len(ids) == 200 and len({i.split("-")[1] for i in ids}) == 2
    n = 0
    while (qf := sb.dequeue()) is not None:
        n += 1
        sb.finish(qf)
    assert n == 200


def test_arrival_is_kept_across_queues(qroot):
    sb_in, retry = Switchboard(qroot, "in"), Switchboard(qroot, "retry")
    newer = retry.enqueue(b"newer", {}, arrival=200.0)
    old = sb_in.enqueue(b"old", {"list": "demo@example.org"}, arrival=100.0)
    qf = sb_in.dequeue()
    assert sb_in.move(qf, "retry", reason="4.4.1 connection refused") == old
    first = retry.dequeue()
    assert first.id == old and first.meta["arrival"] == 100.0
    assert first.meta["from_queue"] == "in" and first.meta["reason"] == "4.4.1 connection refused"
    assert retry.dequeue().id == newer


def test_long_lived_runner_takes_an_older_qfile_moved_in_first(qroot):
    """A runner mid-way through a scan still honours FIFO when an older qfile comes back."""
    runner = Switchboard(qroot, "in")
    ids = [runner.enqueue(b"%d" % i, {}, arrival=100.0 + i) for i in range(5)]
    runner.finish(runner.dequeue())
    retry = Switchboard(qroot, "retry")
    old = retry.enqueue(b"old", {}, arrival=50.0)
    time.sleep(0.02)  # directory mtimes may be tick-grained on older kernels
    retry.move(retry.dequeue(), "in")
    got = []
    while (qf := runner.dequeue()) is not None:
        got.append(qf.id)
        runner.finish(qf)
    assert got == [old] + ids[1:]


def test_default_arrival_comes_from_the_clock(qroot):
    clock.freeze(1234567890.5)
    qid = Switchboard(qroot, "in").enqueue(b"x", {})
    assert id_arrival(qid) == 1234567890.5


def test_hash_slices_partition_the_queue(qroot):
    sb = Switchboard(qroot, "in")
    ids = {sb.enqueue(b"%d" % i, {}) for i in range(400)}
    slices = 4
    taken: list[set[str]] = []
    for s in range(slices):
        runner = Switchboard(qroot, "in")  # one runner process per slice
        mine = set()
        while (qf := runner.dequeue(slice=s, slices=slices)) is not None:
            assert slice_of(qf.id, slices) == s
            mine.add(qf.id)
            runner.finish(qf)
        taken.append(mine)
    assert set().union(*taken) == ids
    assert sum(len(t) for t in taken) == len(ids)  # disjoint
    assert all(40 < len(t) < 160 for t in taken), [len(t) for t in taken]
    with pytest.raises(ValueError):
        sb.dequeue(slice=4, slices=4)


def test_finish_update_release(qroot):
    sb = Switchboard(qroot, "out")
    qid = sb.enqueue(b"msg", {"deliveries": [{"rcpt": "a@x"}, {"rcpt": "b@x"}], "done": []})
    qf = sb.dequeue()
    assert sb.ids() == [] and sb.held_ids() == [qid] and qf.path.endswith(".held")
    assert sb.dequeue() is None  # held: nobody else takes it
    sb.update(qf, {**qf.meta, "done": [0]})
    on_disk = sb.peek(qid)
    assert on_disk.meta["done"] == [0] and on_disk.msg == b"msg" and on_disk.meta["arrival"] == qf.meta["arrival"]
    sb.release(qf)
    again = sb.dequeue()
    assert again.id == qid and again.meta["done"] == [0] and again.meta["attempts"] == 0
    sb.finish(again)
    assert queue_files(sb.dir) == []
    sb.finish(again)  # twice is harmless


def test_one_switchboard_shared_by_threads(qroot):
    """A runner's delivery threads enqueue, update and finish through one instance."""
    from concurrent.futures import ThreadPoolExecutor
    sb = Switchboard(qroot, "out")
    for i in range(100):  # fill the recycling pool so the threads compete for its files
        sb.enqueue(b"warm %d" % i, {})
    while (qf := sb.dequeue()) is not None:
        sb.finish(qf)

    def work(i: int) -> bytes:
        msg = b"Subject: %d\r\n\r\n" % i + bytes([i % 256]) * (i * 37)
        sb.enqueue(msg, {"i": i})
        return msg

    with ThreadPoolExecutor(8) as pool:
        sent = dict(enumerate(pool.map(work, range(200))))
        held = []
        while (qf := sb.dequeue()) is not None:
            held.append(qf)

        def progress_and_finish(qf):
            sb.update(qf, {**qf.meta, "done": [0]})
            sb.finish(qf)
            return qf.meta["i"], qf.msg

        got = dict(pool.map(progress_and_finish, held))
    assert got == sent
    assert queue_files(sb.dir) == []


def test_recover_counts_attempts_then_moves_to_bad(qroot):
    msg = b"Subject: poison\r\n\r\n\xff"
    qid = Switchboard(qroot, "in").enqueue(msg, {"list": "demo@example.org"})
    for attempt in (1, 2):
        crashed = Switchboard(qroot, "in")
        assert crashed.dequeue().id == qid  # ... and the runner dies holding it
        fresh = Switchboard(qroot, "in", max_attempts=3)
        assert fresh.recover() == 1
        assert fresh.ids() == [qid] and fresh.held_ids() == []
        assert fresh.peek(qid).meta["attempts"] == attempt
    Switchboard(qroot, "in").dequeue()
    assert Switchboard(qroot, "in", max_attempts=3).recover() == 1
    assert queue_files(os.path.join(qroot, "in")) == []
    bad = Switchboard(qroot, "bad").dequeue()
    assert bad.id == qid and bad.msg == msg
    assert bad.meta["attempts"] == 3 and bad.meta["from_queue"] == "in"
    assert "left in progress 3 times" in bad.meta["reason"]


def test_recover_counts_only_runs_without_progress(qroot):
    """Issue 20, defect 1: a fan-out killed many times, each run handing over some
    recipients, never reaches bad; runs that hand over nothing still do."""
    deliveries = [{"rcpt": f"m{i}@example.org", "sender": "b@example.org"} for i in range(10)]
    qid = Switchboard(qroot, "out").enqueue(b"m", {"deliveries": deliveries, "done": []})
    for n in range(6):  # six kills, one hand-over each
        crashed = Switchboard(qroot, "out")
        qf = crashed.dequeue()
        crashed.record_done(qf, [n])
        assert Switchboard(qroot, "out", max_attempts=3).recover() == 1
        back = Switchboard(qroot, "out").peek(qid)
        assert back.meta["attempts"] == 0 and back.meta["done"] == list(range(n + 1))
    for attempt in (1, 2):  # now runs that die before any hand-over
        Switchboard(qroot, "out").dequeue()
        Switchboard(qroot, "out", max_attempts=3).recover()
        assert Switchboard(qroot, "out").peek(qid).meta["attempts"] == attempt
    Switchboard(qroot, "out").dequeue()
    Switchboard(qroot, "out", max_attempts=3).recover()
    bad = Switchboard(qroot, "bad").peek(qid)
    assert bad.meta["attempts"] == 3 and bad.meta["done"] == list(range(6))
    assert "without progress" in bad.meta["reason"]


def test_recover_keeps_durable_progress(qroot):
    sb = Switchboard(qroot, "out")
    sb.enqueue(b"m", {"done": []})
    qf = sb.dequeue()
    sb.update(qf, {**qf.meta, "done": [0, 1]})
    Switchboard(qroot, "out").recover()
    assert sb.dequeue().meta["done"] == [0, 1]


def test_recover_respects_slices(qroot):
    sb = Switchboard(qroot, "in")
    for i in range(40):
        sb.enqueue(b"%d" % i, {})
    held = []
    while (qf := sb.dequeue()) is not None:
        held.append(qf.id)
    assert Switchboard(qroot, "in").recover(slice=1, slices=2) == sum(slice_of(q, 2) == 1 for q in held)
    assert all(slice_of(q, 2) == 0 for q in sb.held_ids())


def test_max_attempts_comes_from_site_config(tmp_path):
    from conftest import make_site
    site = make_site(tmp_path / "inst")
    sb = Switchboard.for_site(site, "virgin")
    assert sb.max_attempts == site.conf.runner.max_attempts == 3
    assert sb.dir == os.path.join(site.queue_dir, "virgin")


def test_recover_removes_temp_files_of_dead_writers_only(qroot):
    sb = Switchboard(qroot, "in")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    stale = os.path.join(sb.dir, f".0000000000000000001-1-000000-00000000.{dead_pid}.7.tmp")
    live = os.path.join(sb.dir, f".0000000000000000002-1-000000-00000000.{os.getpid()}.8.tmp")
    for p in (stale, live):
        with open(p, "wb") as fh:
            fh.write(b"listgate-qfile 1\n{")  # half written
    assert sb.dequeue() is None and sb.ids() == []
    assert sb.enqueue(b"x", {}) and sb.dequeue().msg == b"x"
    sb.recover()
    assert [os.path.exists(p) for p in (stale, live)] == [False, True]


def test_enqueue_rejects_bad_input_before_touching_disk(qroot):
    sb = Switchboard(qroot, "in")
    with pytest.raises(TypeError):
        sb.enqueue(b"x", {"when": object()})
    with pytest.raises(TypeError):
        sb.enqueue("text, not bytes", {})
    with pytest.raises(ValueError):
        sb.enqueue(b"x", {"nan": float("nan")})
    with pytest.raises(ValueError):
        sb.enqueue(b"x", {}, qid="../../etc/passwd")
    assert queue_files(sb.dir) == []
    with pytest.raises(ValueError):
        Switchboard(qroot, "nonsense")
    assert issubclass(QueueError, OSError)
    assert set(QUEUES) == {"in", "bounces", "out", "virgin", "retry", "shunt", "bad"}


def test_unwritable_queue_directory_is_a_queue_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(QueueError):
        Switchboard(str(blocker), "in")


def test_peek_and_take_stay_inside_the_queue(qroot):
    sb = Switchboard(qroot, "in")
    for name in ("../bad/x", ".hidden", "", "a\0b"):
        assert sb.peek(name) is None and sb.take(name) is None
    qid = sb.enqueue(b"x", {})
    assert sb.take("0000000000000000000-1-000000-00000000") is None
    assert sb.take(qid).id == qid and sb.take(qid) is None


def test_json_metadata_on_disk_is_exactly_what_dequeue_returns(qroot):
    sb = Switchboard(qroot, "virgin")
    meta = {"deliveries": [{"rcpt": "a@x", "sender": "l-bounces+tok@x"}], "done": [], "mta_queue_id": None}
    qid = sb.enqueue(b"m", meta, arrival=7.0)
    raw = open(os.path.join(sb.dir, qid + ".qf"), "rb").read()
    head = raw.split(b"\n", 1)[1].split(b"\n--- message ---\n")[0]
    assert json.loads(head) == {**meta, "arrival": 7.0, "attempts": 0} == sb.dequeue().meta


# -- entries that are not regular files (break-test findings 2, 4, 9, 10) ----------------

def _plant(path: str, kind: str, target: str = "") -> None:
    """Put a non-regular entry at ``path``: a symlink to ``target``, a FIFO, a directory."""
    if kind == "symlink":
        os.symlink(target, path)
    elif kind == "fifo":
        os.mkfifo(path, 0o600)
    else:
        os.mkdir(path)


def test_finishing_a_held_symlink_unlinks_it_never_its_target(qroot, tmp_path):
    """A held name that is a symlink at finish time (replaced by hand) is unlinked: its
    target is left as it was."""
    sb = Switchboard(qroot, "in")
    sb.enqueue(b"x", {})
    qf = sb.dequeue()
    outside = tmp_path / "outside"
    outside.write_bytes(b"keep me")
    os.unlink(qf.path)
    os.symlink(outside, qf.path)
    sb.finish(qf)
    assert outside.read_bytes() == b"keep me" and os.stat(outside).st_mode & 0o777 != 0
    assert queue_files(sb.dir) == []


@pytest.mark.parametrize("kind,what", [
    ("symlink", "a symbolic link to '/etc/passwd'"),
    ("dangling", "a symbolic link to '/nonexistent/x'"),
    ("good-symlink", "a symbolic link to "),
    ("fifo", "a FIFO"),
    ("dir", "a directory"),
])
@pytest.mark.parametrize("state", ["waiting", "held"])
def test_a_qfile_that_is_not_a_regular_file_goes_to_bad_as_a_reason_only(qroot, tmp_path, kind, what, state):
    """Findings 4/10: a FIFO named ID.qf hung the runner (and recover, once held); a
    directory or dangling symlink stayed in the queue forever; a symlink's target
    (/etc/passwd) was copied into bad. Now: bad gets an empty message with the reason,
    and the entry itself is renamed beside it, never opened."""
    sb = Switchboard(qroot, "in", max_attempts=5)
    good = sb.enqueue(b"good", {}, arrival=20.0)
    odd = "0000000000000000001-1-000000-00000000"  # arrives first
    target = {"symlink": "/etc/passwd", "dangling": "/nonexistent/x"}.get(kind, "")
    if kind == "good-symlink":  # a well-formed qfile outside the queue
        target = str(tmp_path / "outside.qf")
        with open(target, "wb") as fh:
            fh.write(qfile.dumps({"list": "demo@example.org"}, b"outside"))
    path = os.path.join(sb.dir, odd + (".qf" if state == "waiting" else ".held"))
    _plant(path, "symlink" if "symlink" in kind or kind == "dangling" else kind, target)

    if state == "waiting":
        qf = sb.dequeue()
        assert qf.id == good and sb.held_ids() == [good]
        sb.finish(qf)
    else:
        assert sb.recover() == 1
        assert sb.ids() == [good]
    assert not os.path.lexists(path) and sb.held_ids() == []
    bad = Switchboard(qroot, "bad")
    kept = bad.dequeue()
    assert kept.id == odd and kept.msg == b""  # nothing read through the entry
    assert kept.meta["reason"].startswith(f"not a regular file: {odd}.qf was {what}")
    assert kept.meta["unparsable"] is True and kept.meta["from_queue"] == "in"
    aside = os.path.join(bad.dir, kept.meta["set_aside_as"])
    assert not stat.S_ISREG(os.lstat(aside).st_mode)
    if target:
        assert os.readlink(aside) == target
    assert bad.ids() == [] and sb.recover() == 0  # nothing left to retry at the next start


def test_peek_of_a_fifo_or_dangling_symlink_is_a_format_error_not_a_hang(qroot):
    sb = Switchboard(qroot, "in")
    fifo, dangling = "0000000000000000001-1-000000-00000000", "0000000000000000002-1-000000-00000000"
    os.mkfifo(os.path.join(sb.dir, fifo + ".qf"))
    os.symlink("/nonexistent/x", os.path.join(sb.dir, dangling + ".held"))
    with pytest.raises(QFileFormatError, match="not a regular file but a FIFO"):
        sb.peek(fifo)
    with pytest.raises(QFileFormatError, match="symbolic link to '/nonexistent/x'"):
        sb.peek(dangling)


@pytest.mark.parametrize("kind", ["fifo", "dir", "symlink"])
def test_a_progress_file_that_is_not_a_regular_file_is_ignored_and_set_aside(qroot, tmp_path, kind):
    """Finding 4/10: a FIFO named ID.done hung the reader of its qfile; a directory kept
    the qfile held forever. Never ours (created with O_EXCL): no progress in it."""
    sb = Switchboard(qroot, "out")
    qid = sb.enqueue(b"m", {"deliveries": [{"rcpt": "a@example.org"}, {"rcpt": "b@example.org"}]})
    outside = tmp_path / "progress"
    outside.write_bytes(b"listgate-progress 1 x\n[0, \"a@example.org\"]\n")
    done = os.path.join(sb.dir, qid + ".done")
    _plant(done, kind, str(outside))
    assert sb.peek(qid).meta.get("done", []) == []  # ignored, left for the runner's reader
    qf = sb.dequeue()
    assert qf.id == qid and qf.meta.get("done", []) == []
    assert not os.path.lexists(done)
    assert os.path.lexists(os.path.join(qroot, "bad", qid + ".done.notfile"))
    sb.record_done(qf, [1])  # a new, regular progress file
    assert sb.peek(qid).meta["done"] == [1]
    assert outside.read_bytes().count(b"\n") == 2


def test_temp_names_with_impossible_pids_are_removed_not_a_crash(qroot):
    """Finding 9: .slot-x.99999999999.0.tmp made the runner's recover die with OverflowError."""
    sb = Switchboard(qroot, "in")
    names = [".slot-x.99999999999.0.tmp", ".slot-y.99999999999999999999999.0.tmp", ".slot-z.0.1.tmp",
             ".slot-w.-1.2.tmp"]
    for name in names:
        open(os.path.join(sb.dir, name), "wb").close()
    sb.recover()
    assert queue_files(sb.dir) == []


def test_a_qfile_with_an_arrival_no_float_holds_can_still_be_moved(qroot):
    """Finding 3b's sibling: a hand-edited arrival that is an int beyond float range
    parses (JSON has no limit) and must not make move() raise."""
    sb = Switchboard(qroot, "in")
    qid = "0000000000000000005-1-000000-00000000"
    with open(os.path.join(sb.dir, qid + ".qf"), "wb") as fh:
        fh.write(b'listgate-qfile 1\n{"arrival": 1' + b"0" * 400 + b', "attempts": 0}\n--- message ---\nm')
    qf = sb.dequeue()
    assert sb.move(qf, "shunt", reason="unknown list") == qid
    shunted = Switchboard(qroot, "shunt").dequeue()
    assert shunted.meta["arrival"] == 5e-9 and shunted.msg == b"m"  # the id's arrival

