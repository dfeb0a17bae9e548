"""The one clock: in-process control, and the clock file every process reads."""
from __future__ import annotations

import subprocess
import sys
import time

from listgate import clock


def test_freeze_and_advance():
    clock.freeze(1_000_000.0)
    assert clock.now() == 1_000_000.0 and clock.day() == "1970-01-12"
    clock.advance(86400)
    assert clock.now() == 1_086_400.0 and clock.day() == "1970-01-13"


def test_clock_file_moves_this_process_and_children(tmp_path, monkeypatch):
    path = str(tmp_path / "clock")
    clock.write_offset_file(path, 0.0)
    monkeypatch.setenv(clock.ENV_VAR, path)
    clock.reset()
    assert abs(clock.now() - time.time()) < 5
    clock.write_offset_file(path, 10 * 86400)       # rewriting the file is seen without a reset
    assert 10 * 86400 - 5 < clock.now() - time.time() < 10 * 86400 + 5
    child = subprocess.run([sys.executable, "-c", "from listgate import clock; print(clock.now())"],
                           capture_output=True, text=True, timeout=60, check=True)
    assert abs(float(child.stdout) - clock.now()) < 5


def test_unreadable_clock_file_means_real_time(tmp_path, monkeypatch):
    path = tmp_path / "clock"
    path.write_text("not a number")
    monkeypatch.setenv(clock.ENV_VAR, str(path))
    clock.reset()
    assert abs(clock.now() - time.time()) < 5
