"""The trainer on 2 processes x 4 fake devices (jax.distributed, gloo), started by
scripts/launch_local.py as a user would: same losses as 1 process x 8 devices, one writer, and a
SIGTERM to one process stops both at the same checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

from experiments.training import metrics as metrics_lib
from tests.test_train import CONFIG, ROOT, TINY, start

ARGS = [f"--config={CONFIG}"] + [f"--config.{k}={v}" for k, v in TINY.items()
                                 if k != "mesh.data"] + ["--config.mesh.data=-1"]


def launch(workdir, corpus, *flags, wait=True):
  return start([sys.executable, "-m", "scripts.launch_local", "--num_processes=2",
                "--devices_per_process=4", "--", *ARGS, f"--workdir={workdir}",
                f"--config.data.cache_dir={corpus}", *flags], wait)


def single(workdir, corpus, *flags):
  cmd = [sys.executable, "-m", "experiments.train", *ARGS, f"--workdir={workdir}",
         f"--config.data.cache_dir={corpus}", *flags]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  return out.returncode, out.stdout + out.stderr


def losses(workdir):
  return [r["train_loss"] for r in metrics_lib.read_metrics(str(workdir)) if "train_loss" in r]


@pytest.mark.slow
def test_two_processes_match_one_and_only_process_zero_writes(tmp_path):
  corpus = tmp_path / "corpus"
  rc, out = single(tmp_path / "one", corpus, "--config.train.steps=6")
  assert rc == 0, out
  # Also a checkpoint after every step by wall-clock (an interval shorter than any step): each
  # process decides on its own clock and they agree on the step through a collective.
  rc, out = launch(tmp_path / "two", corpus, "--config.train.steps=6",
                   "--config.train.checkpoint_every_s=1e-9", "--config.train.keep_checkpoints=10")
  assert rc == 0, out
  assert "[0] Done: step 6/6" in out and "[1] Done: step 6/6" in out
  assert sorted(int(p.name) for p in (tmp_path / "two" / "checkpoints").iterdir()
                if p.name.isdigit()) == [1, 2, 3, 4, 5, 6]
  # Same global batch and math; only the cross-device summation order differs (gloo vs local).
  np.testing.assert_allclose(losses(tmp_path / "two"), losses(tmp_path / "one"), rtol=1e-5)
  assert len(losses(tmp_path / "two")) == 6  # one writer: no row twice
  run = json.load(open(tmp_path / "two" / "run.json"))
  assert run["process_count"] == 2 and len(run["devices"]) == 8
  assert not list((tmp_path / "two").glob("run.resume_*"))


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_one_checkpoint_and_the_rerun_resumes(tmp_path):
  corpus = tmp_path / "corpus"
  wd = tmp_path / "w"
  proc = launch(wd, corpus, "--config.train.steps=400", "--config.train.checkpoint_every=1000",
                wait=False)
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if (wd / "metrics.jsonl").exists() and len(losses(wd)) >= 3:
      break
    time.sleep(0.1)
  children = psutil.Process(proc.pid).children()
  target = next(c for c in children if "process_id=1" in " ".join(c.cmdline()))
  target.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 128 + signal.SIGTERM, out
  stops = [l for l in out.splitlines() if "Stopped by signal" in l and "checkpoint saved" in l]
  steps = {l.split(" at step ")[1].split(";")[0] for l in stops}
  assert len(stops) == 2 and len(steps) == 1, out  # both processes, one step
  (stop_step,) = steps
  assert (wd / "checkpoints" / stop_step).is_dir()
  rc, out = launch(wd, corpus, "--config.train.steps=400",
                   f"--config.train.stop_at_step={int(stop_step) + 2}")
  assert rc == 0, out
  assert f"Resumed from checkpoint step {stop_step}" in out
  assert len(losses(wd)) == int(stop_step) + 2


@pytest.mark.slow
def test_a_shared_warm_compilation_cache_does_not_hang_two_processes(tmp_path, monkeypatch):
  # Two launches on one cache directory: without the trainer turning the cache off for
  # multi-process CPU runs, the second loads the first's executables and both processes block
  # in their first collective (jax 0.12.1), until this test's timeout.
  corpus = tmp_path / "corpus"
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "xla_cache"))
  monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  for run in ("first", "second"):
    proc = launch(tmp_path / run, corpus, "--config.train.steps=2", wait=False)
    try:
      out, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
      for child in psutil.Process(proc.pid).children(recursive=True):
        child.kill()
      proc.kill()
      raise AssertionError(f"the {run} two-process run hung with a shared compilation cache")
    assert proc.returncode == 0, out
    assert "[0] Done: step 2/2" in out and "[1] Done: step 2/2" in out, out
  assert "Persistent compilation cache" in out and "off for this multi-process CPU run" in out
