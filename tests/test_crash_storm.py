"""Issue 20, defects 1 and 5, with real runner processes and an SMTP sink as the MTA.

* a runner SIGKILLed again and again during a fan-out: every member gets every
  post, at most one duplicate per kill (the transaction in flight), nothing in
  ``bad`` (``tests/harness/storm.py``; the full size is ``bench/kill_storm.py``);
* several runners started on one instance during a fan-out: the first serves,
  the others say which process holds the slice and exit 75 (or wait, ``--wait``);
  every member gets each post exactly once.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from harness.storm import Storm
from listgate.queue.lock import SliceBusy, SliceLock, holders


@pytest.fixture
def storm(tmp_path):
    with Storm(str(tmp_path), members=100) as s:
        yield s


def test_kill_storm_loses_nothing_and_duplicates_at_most_one_per_kill(storm):
    storm.queue_posts(3)
    fig = storm.kill_storm(10)
    assert fig.kills >= 8, fig.line()   # the storm really hit the fan-out
    assert fig.missing == 0 and fig.bad == 0, fig.line()
    assert fig.duplicates <= fig.kills, fig.line()


def _wait(predicate, timeout=60.0):
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


@pytest.mark.parametrize("runners", [2, 6])
def test_extra_runners_of_a_slice_refuse_to_start(storm, runners):
    storm.queue_posts(3)
    first = storm.spawn()
    _wait(lambda: len(storm.sink.deliveries) >= 20)   # the fan-out is under way
    extra = []
    for _ in range(runners - 1):
        extra.append(storm.spawn())
        time.sleep(0.3)
    for proc in extra:
        assert proc.wait(30) == 75
        err = storm.stderr_of(proc)
        assert f"served by process {first.pid}" in err and "not starting a second runner" in err, err
    assert first.poll() is None
    fig = storm.finish()
    assert fig.missing == 0 and fig.duplicates == 0 and fig.bad == 0, fig.line()


def test_waiting_runner_takes_over_when_the_first_dies(storm):
    storm.queue_posts(3)
    first = storm.spawn()
    _wait(lambda: len(storm.sink.deliveries) >= 20)
    second = storm.spawn("--wait")
    _wait(lambda: "waiting (--wait)" in storm.stderr_of(second))
    time.sleep(0.5)
    assert second.poll() is None
    [live] = [h for h in holders(storm.site.queue_dir) if h.live]
    assert live.pid == first.pid
    first.send_signal(signal.SIGKILL)
    first.wait()
    fig = storm.finish()
    assert fig.missing == 0 and fig.bad == 0 and fig.duplicates <= 1, fig.line()


def test_status_names_the_holder_and_other_slicings_are_refused(storm):
    runner = storm.spawn("--slice", "1/2")
    _wait(lambda: any(h.live for h in holders(storm.site.queue_dir)))
    out = subprocess.run([sys.executable, "-m", "listgate", "-c", storm.site.path, "status"],
                         capture_output=True, text=True, timeout=60)
    assert f"slice 1/2: runner pid {runner.pid}" in out.stdout, out.stdout
    assert "slice 0/2: no runner\n" in out.stdout and out.returncode == 1   # nobody serves slice 0
    with pytest.raises(SliceBusy, match=r"runs slice 1/2 .* same number of slices"):
        SliceLock(storm.site.queue_dir, 0, 1).acquire()
    free = SliceLock(storm.site.queue_dir, 0, 2)
    assert free.acquire() and free.held   # the other slice of the same slicing is free
    free.release()
    runner.send_signal(signal.SIGKILL)
    runner.wait()
    # the kernel dropped the dead runner's lock: the slice is free again
    again = SliceLock(storm.site.queue_dir, 1, 2)
    assert again.acquire()
    again.release()
    out = subprocess.run([sys.executable, "-m", "listgate", "-c", storm.site.path, "status"],
                         capture_output=True, text=True, timeout=60)
    assert "slice 1/2: no runner" in out.stdout, out.stdout


@pytest.mark.slow
def test_kill_storm_full_size(tmp_path):
    """Issue 20's measurement (bench/kill_storm.py): 30 kills, 25 posts, 300 members."""
    with Storm(str(tmp_path), members=300) as s:
        s.queue_posts(25)
        fig = s.kill_storm(30)
    assert fig.kills >= 25 and fig.missing == 0 and fig.bad == 0 and fig.duplicates <= fig.kills, fig.line()
