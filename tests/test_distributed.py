"""experiments/parallel/distributed.py and scripts/launch_local.py: 2 processes x 4 fake CPU
devices.

The multi-process runs start tests/dist_target.py through the launcher (about 4 s each here).
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time

import jax
import ml_collections
import numpy as np
import pytest

from experiments.parallel import distributed
from experiments.training import validate
from scripts import launch_local
from tests import dist_target

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Launch:
  """scripts/launch_local.py running tests/dist_target.py, its output collected line by line."""

  def __init__(self, *target_args: str, grace_s: float = 30.0):
    # The grace only runs out when a process hangs. CI once lost process 0's stop line (40
    # runs here under load never did); a 5 s grace could cut off a slow survivor, so 30 s,
    # and the failure messages carry every line.
    self.proc = subprocess.Popen(
        [sys.executable, "-m", "scripts.launch_local", "--num_processes=2",
         "--devices_per_process=4", "--module=tests.dist_target", f"--grace_s={grace_s}", "--",
         *target_args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    self.lines: list[str] = []
    self._reader = threading.Thread(target=self._read, daemon=True)
    self._reader.start()

  def _read(self):
    for line in self.proc.stdout:
      self.lines.append(line.rstrip("\n"))

  def find(self, pattern: str) -> list[re.Match]:
    return [m for m in map(re.compile(pattern).search, list(self.lines)) if m]

  def wait_for(self, pattern: str, count: int, timeout: float = 240.0) -> list[re.Match]:
    # Generous: CI once took over 60 s to print READY (two processes importing JAX and
    # compiling while both pytest workers compiled too). A hang still fails, with every line.
    deadline = time.monotonic() + timeout
    while len(self.find(pattern)) < count:
      if time.monotonic() > deadline or self.proc.poll() is not None:
        self.proc.kill()
        self.proc.wait(10)
        self._reader.join(5)
        raise AssertionError(f"no {count} x {pattern!r} after {timeout:.0f} s in:\n"
                             + "\n".join(self.lines))
      time.sleep(0.05)
    return self.find(pattern)

  def finish(self, timeout: float = 60.0) -> int:
    try:
      rc = self.proc.wait(timeout)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      raise
    self._reader.join(5)
    return rc


def test_two_processes_agree_with_one_process_of_eight_devices():
  run = Launch("--config.mode=sum")
  assert run.finish() == 0, "\n".join(run.lines)
  sums = {int(m[1]): float(m[2]) for m in run.find(r"^\[(\d)\] SUM (\S+)$")}
  assert sorted(sums) == [0, 1], run.lines
  one_process = dist_target.weighted_sum(rows_per_device=2)  # this process: 1 x 8 devices
  full = dist_target.global_rows(8, 2).astype(np.float64)
  exact = float(np.sum(full * (np.arange(full.size).reshape(full.shape) / full.size)))
  # float32 sums of 48 terms in different orders: a few ulps of the 1.08 total apart.
  for value in sums.values():
    np.testing.assert_allclose(value, one_process, rtol=1e-6)
    np.testing.assert_allclose(value, exact, rtol=1e-6)
  # pmap's pmean spans both processes' devices: mean(0..7), not a local mean (1.5 or 5.5).
  assert [float(m[2]) for m in run.find(r"^\[(\d)\] PMAP (\S+)$")] == [3.5, 3.5]
  caught = run.find(r"^\[(\d)\] MISMATCH caught: corpus hash differs .*\[\[0\], \[1\]\]")
  assert sorted(int(m[1]) for m in caught) == [0, 1]


def _stops(run: Launch) -> dict[int, tuple[int, bool]]:
  # `.*?`: a piece of Gloo's connection message, split by another C++ thread's flush, can
  # still stand in front of the line (the launcher cuts out only whole messages).
  return {int(m[1]): (int(m[2]), m[3] == "True")
          for m in run.find(r"^\[(\d)\] .*?STOPPED step=(\d+) local_flag=(True|False)")}


def test_sigterm_to_one_process_stops_both_at_the_same_step():
  run = Launch("--config.mode=preempt", "--config.distributed.preemption_check_every=3")
  pid = int(run.wait_for(r"^\[1\] READY pid=(\d+)", 1)[0][1])
  run.wait_for(r"^\[0\] READY", 1)
  os.kill(pid, signal.SIGTERM)  # process 1 only
  assert run.finish() == 128 + signal.SIGTERM, "\n".join(run.lines)
  stops = _stops(run)
  assert sorted(stops) == [0, 1] and stops[0][0] == stops[1][0], "\n".join(run.lines)
  assert stops[0][0] % 3 == 0  # checks happen every 3 steps
  assert stops == {0: (stops[0][0], False), 1: (stops[0][0], True)}


def test_launcher_forwards_sigterm_to_every_process():
  run = Launch("--config.mode=preempt")
  run.wait_for(r"^\[\d\] READY", 2)
  run.proc.send_signal(signal.SIGTERM)
  assert run.finish() == 128 + signal.SIGTERM, "\n".join(run.lines)
  stops = _stops(run)
  assert sorted(stops) == [0, 1] and stops[0][0] == stops[1][0], "\n".join(run.lines)
  assert stops[0][1] and stops[1][1]  # both received it


def test_one_process_needs_no_collectives():
  assert not distributed.initialize(ml_collections.ConfigDict({"seed": 0}))
  off = ml_collections.ConfigDict({"distributed": distributed.default_config()})
  assert not distributed.initialize(off)
  assert distributed.is_main()
  assert distributed.reached_preemption(7, True, every=3)  # no waiting for a check step
  assert not distributed.reached_preemption(6, False)
  distributed.assert_same_across_processes("anything", "corpus hash")
  assert jax.process_count() == 1


def test_explicit_coordinator_needs_every_field():
  config = ml_collections.ConfigDict({"distributed": distributed.default_config()})
  config.distributed.coordinator_address = "127.0.0.1:1234"
  config.distributed.num_processes = 2
  with pytest.raises(validate.ConfigError, match="distributed.process_id"):
    distributed.initialize(config)


def test_launcher_helpers():
  assert launch_local.exit_status(-signal.SIGTERM) == 143
  assert launch_local.exit_status(2) == 2


def test_launcher_cuts_gloo_messages_out_of_the_programs_lines():
  gloo = ("[Gloo] Rank 1 is connected to 1 peer ranks. "
          "Expected number of connected peer ranks is : 1")
  out = launch_local._Output(1, os.devnull, verbose=False)
  assert out.shown(gloo + "\n") is None
  assert out.shown("I1206 distributed.py:172] Connecting to JAX distributed service on x\n") is None
  # What CI once printed: a C++ flush put the message, without its newline, in front of the
  # program's own line, and the newline came next on its own.
  assert out.shown(gloo + "STOPPED step=3 local_flag=True\n") == "STOPPED step=3 local_flag=True\n"
  assert out.shown("\n") is None
  assert out.shown("\n") == "\n"  # a line the program printed empty stays
  assert out.shown(gloo + gloo + "x\n") == "x\n"
  assert out.shown("\n") is None and out.shown("\n") is None and out.shown("\n") == "\n"
  # A message split inside a piece: its whole pieces cut, the program's line shown, not lost.
  assert out.shown("[Gloo] Rank 1 is conSTOPPED step=3\n") == " is conSTOPPED step=3\n"
  # The message's first piece, then the program's line (CI, 2026-12-07).
  assert out.shown("[Gloo] Rank READY pid=22694\n") == "READY pid=22694\n"
  # ... and the message's rest, its rank number first, in front of another line of the program.
  assert out.shown("1 is connected to 7 peer ranks. Expected number of connected peer ranks is "
                   ": 7STOPPED step=3\n") == "STOPPED step=3\n"
  # Two threads' messages written piece by piece into each other (CI, 2026-12-07): chatter.
  assert out.shown("[Gloo] Rank 1 is connected to 7 peer ranks. Expected number of connected "
                   "peer ranks is : [Gloo] Rank 3 is connected to 77\n") is None
  assert out.shown(" peer ranks. Expected number of connected peer ranks is : 7\n") is None
  line = "I1207 loop.py:454] Workload speedrun\n"
  assert out.shown(line) == line
  assert launch_local._Output(1, os.devnull, verbose=True).shown(gloo + "\n") == gloo + "\n"
  env = launch_local.child_env(4)
  assert env["XLA_FLAGS"].split().count("--xla_force_host_platform_device_count=4") == 1
  assert "device_count=8" not in env["XLA_FLAGS"]  # conftest's 8 replaced
