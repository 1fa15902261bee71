"""`experiments.training.watchdog.StallWatchdog`: silent until armed, one report per stall,
re-armed."""

import threading
import time

import pytest

from experiments.training import watchdog


def test_reports_once_per_stall_and_only_after_the_first_beat():
  stalls, fired = [], threading.Event()

  def on_stall(seconds):
    stalls.append(seconds)
    fired.set()

  with watchdog.StallWatchdog(0.05, on_stall, poll=0.01) as wd:
    time.sleep(0.2)
    assert not stalls  # not armed: compilation before the first step does not count
    wd.beat()
    assert fired.wait(10.0)
    time.sleep(0.2)
    assert len(stalls) == 1 and stalls[0] >= 0.05  # one report per stall
    fired.clear()
    wd.beat()  # progress re-arms it
    assert fired.wait(10.0)
    assert len(stalls) == 2


def test_steady_beats_never_report():
  stalls = []
  with watchdog.StallWatchdog(5.0, stalls.append, poll=0.01) as wd:
    for _ in range(20):
      wd.beat()
      time.sleep(0.01)
  assert not stalls


def test_bad_timeout_is_an_error():
  with pytest.raises(ValueError, match="timeout"):
    watchdog.StallWatchdog(0, lambda s: None)
