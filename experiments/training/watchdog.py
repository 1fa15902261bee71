"""A stall watchdog: says so when training has made no progress for a while.

A step stuck inside XLA (a runtime deadlock, a collective waiting for a dead host) blocks the
Python thread in C++: nothing is logged and SIGTERM's handler never runs. This thread notices
the silence and tells the user what to do. Written by hand: absl and the JAX stack have no
progress watchdog (XLA's SlowOperationAlarm covers compilation, not execution).
"""

from __future__ import annotations

import threading
import time
from typing import Callable


class StallWatchdog:
  """Calls `on_stall(seconds_since_last_beat)` once per stall of more than `timeout` seconds.

  Armed by the first `beat()` (so compilation before the first step does not count); every
  later `beat()` re-arms it. Use as a context manager, or `start()` and `stop()`.
  """

  def __init__(self, timeout: float, on_stall: Callable[[float], None], *, poll: float = 1.0):
    if timeout <= 0:
      raise ValueError("timeout must be > 0")
    self._timeout, self._on_stall, self._poll = timeout, on_stall, min(poll, timeout)
    self._last: float | None = None
    self._reported = False
    self._lock = threading.Lock()
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, name="stall-watchdog", daemon=True)

  def beat(self) -> None:
    with self._lock:
      self._last, self._reported = time.monotonic(), False

  def start(self) -> "StallWatchdog":
    self._thread.start()
    return self

  def stop(self) -> None:
    self._stop.set()
    self._thread.join()

  def __enter__(self) -> "StallWatchdog":
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()

  def _run(self) -> None:
    while not self._stop.wait(self._poll):
      with self._lock:
        if self._last is None or self._reported:
          continue
        silent = time.monotonic() - self._last
        if silent < self._timeout:
          continue
        self._reported = True
      self._on_stall(silent)
