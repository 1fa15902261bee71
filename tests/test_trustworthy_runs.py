"""Runs that never lie: damaged checkpoints, locks, config drift, bad settings, user errors,
torn metrics, non-finite steps. Each through `python -m experiments.train` where a user meets it.
"""

import json
import os
import signal
import subprocess
import sys
import time

import chex
import pytest

from experiments.training import metrics as metrics_lib
from tests.test_train import CONFIG, ROOT, restore_params, run_cli


def error_lines(out: str) -> list[str]:
  return [l for l in out.splitlines() if l.startswith("ERROR:")]


def assert_user_error(rc: int, out: str, first: str) -> None:
  """Exit 2, exactly one `ERROR:` line starting with `first`, no traceback or asyncio noise."""
  assert rc == 2, out
  errors = error_lines(out)
  assert len(errors) == 1 and errors[0].startswith(first), out
  assert "Traceback" not in out and "Event loop is closed" not in out, out


def metric_rows(workdir) -> list[dict]:
  return metrics_lib.read_metrics(str(workdir))


def assert_one_row_per_step_and_key(workdir, last_step: int) -> None:
  seen = set()
  for r in metric_rows(workdir):
    for k in r:
      if k != "step":
        assert (r["step"], k) not in seen, (r["step"], k)
        seen.add((r["step"], k))
  assert sorted(s for s, k in seen if k == "train_loss") == list(range(1, last_step + 1))


def flip_byte_in_largest_file(step_dir) -> str:
  files = [os.path.join(d, f) for d, _, fs in os.walk(step_dir) for f in fs]
  path = max(files, key=os.path.getsize)
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    b = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([b[0] ^ 0x01]))
  return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  return tmp_path_factory.mktemp("corpus")


@pytest.fixture(scope="module")
def straight_30(tmp_path_factory, corpus):
  """A 30-step run in one go: the reference a resumed run must equal bitwise."""
  wd = tmp_path_factory.mktemp("straight") / "w"
  rc, out = run_cli(wd, corpus, "--config.train.steps=30")
  assert rc == 0, out
  return wd


# 1. -----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_flipped_byte_falls_back_to_the_newest_intact_checkpoint(tmp_path, corpus, straight_30):
  wd = tmp_path / "w"
  rc, out = run_cli(wd, corpus, "--config.train.steps=30", "--config.train.stop_at_step=20")
  assert rc == 0, out
  flip_byte_in_largest_file(wd / "checkpoints" / "20")
  rc, out = run_cli(wd, corpus, "--config.train.steps=30")
  assert rc == 0, out
  assert "CHECKPOINT DAMAGED: step 20" in out and "Resumed from checkpoint step 10" in out, out
  assert os.listdir(tmp_path / "w" / "checkpoints_damaged")  # kept for inspection
  chex.assert_trees_all_equal(restore_params(wd)[1], restore_params(straight_30)[1])
  assert_one_row_per_step_and_key(wd, 30)


def test_no_intact_checkpoint_is_an_error_not_a_restart(tmp_path, corpus):
  wd = tmp_path / "w"
  rc, out = run_cli(wd, corpus, "--config.train.steps=30", "--config.train.stop_at_step=10")
  assert rc == 0, out
  flip_byte_in_largest_file(wd / "checkpoints" / "10")
  rows_before = (wd / "metrics.jsonl").read_text()
  rc, out = run_cli(wd, corpus, "--config.train.steps=30")
  assert_user_error(rc, out, "ERROR: every checkpoint in")
  assert (wd / "metrics.jsonl").read_text() == rows_before


# 2. and 5. ----------------------------------------------------------------------------------

@pytest.mark.parametrize("flag,first", [
    ("train.keep_checkpoints=0", "ERROR: train.keep_checkpoints=0"),
    ("train.steps=0", "ERROR: train.steps=0"),
    ("train.steps=-1", "ERROR: train.steps=-1"),
    ("train.batch_size=0", "ERROR: train.batch_size=0"),
    ("train.checkpoint_every=0", "ERROR: train.checkpoint_every=0"),
    ("train.log_every=0", "ERROR: train.log_every=0"),
    ("train.grad_accum_steps=0", "ERROR: train.grad_accum_steps=0"),
    ("train.eval_batches=0", "ERROR: train.eval_batches=0"),
    ("train.batch_size=6", "ERROR: train.batch_size=6"),  # 3 micro-batches of 2 do not fit 6
])
def test_a_nonsense_setting_is_one_error_line_and_writes_nothing(tmp_path, corpus, flag, first):
  extra = ["--config.train.grad_accum_steps=4"] if flag == "train.batch_size=6" else []
  wd = tmp_path / "w"
  rc, out = run_cli(wd, corpus, f"--config.{flag}", *extra)
  assert_user_error(rc, out, first)
  assert not wd.exists()


def test_a_directory_where_a_shard_should_be_is_a_clear_error(tmp_path, corpus):
  (tmp_path / "shards" / "train_0.bin").mkdir(parents=True)
  rc, out = run_cli(tmp_path / "w", corpus, "--config.data.source=bin",
                    f"--config.data.train_glob={tmp_path}/shards/train_*.bin",
                    f"--config.data.val_glob={tmp_path}/shards/train_*.bin")
  assert_user_error(rc, out, "ERROR: data.train_glob=")
  assert "is a directory" in error_lines(out)[0] or "a directory" in error_lines(out)[0]


# 3. -----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_second_run_on_a_busy_workdir_exits_naming_the_first(tmp_path, corpus):
  wd = tmp_path / "w"
  first = run_cli(wd, corpus, "--config.train.steps=400", "--config.train.checkpoint_every=5",
                  wait=False)
  try:
    _wait_for_step(wd, 6, first)
    rc, out = run_cli(wd, corpus, "--config.train.steps=400")
    assert_user_error(rc, out, "ERROR: workdir")
    assert f"process {first.pid}" in error_lines(out)[0]
  finally:
    first.send_signal(signal.SIGKILL)  # a lock left by a dead process must not block a resume
    first.communicate()
  last = restore_params(wd)[0]
  rc, out = run_cli(wd, corpus, "--config.train.steps=400",
                    f"--config.train.stop_at_step={last + 3}")
  assert rc == 0, out
  assert f"Resumed from checkpoint step {last}" in out
  assert_one_row_per_step_and_key(wd, last + 3)


def _wait_for_step(wd, step, proc, timeout=300):
  metrics = wd / "metrics.jsonl"
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    if metrics.exists() and any(r["step"] >= step for r in metric_rows(wd)):
      return
    time.sleep(0.05)
  raise AssertionError(f"run did not reach step {step}: {proc.poll()}")


# 4. -----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_config_drift_on_resume_is_an_error_unless_allowed(tmp_path, corpus):
  wd = tmp_path / "w"
  rc, out = run_cli(wd, corpus, "--config.train.steps=20", "--config.train.stop_at_step=10")
  assert rc == 0, out
  before = (wd / "metrics.jsonl").read_text()
  rc, out = run_cli(wd, corpus, "--config.train.steps=20", "--config.optimizer.learning_rate=1e-3")
  assert_user_error(rc, out, "ERROR: the config differs from the one that wrote checkpoint step 10")
  assert "optimizer.learning_rate: 0.003 -> 0.001" in out
  assert (wd / "metrics.jsonl").read_text() == before
  # Logging and checkpoint cadence are not drift.
  rc, out = run_cli(wd, corpus, "--config.train.steps=20", "--config.train.log_every=2",
                    "--config.train.stop_at_step=15")
  assert rc == 0, out
  rc, out = run_cli(wd, corpus, "--config.train.steps=20", "--config.optimizer.learning_rate=1e-3",
                    "--config.train.allow_config_change=True")
  assert rc == 0, out
  run = json.load(open(wd / "run.json"))
  assert run["config_changes"][0]["step"] == 15
  assert run["config_changes"][0]["changes"]["optimizer.learning_rate"] == {"from": 0.003,
                                                                             "to": 0.001}
  events = [r for r in metric_rows(wd) if r.get("event") == "config_change"]
  assert [e["step"] for e in events] == [15]
  assert_one_row_per_step_and_key(wd, 20)
  # A finished run says so, with its result, and changes nothing.
  before = (wd / "metrics.jsonl").read_text()
  rc, out = run_cli(wd, corpus, "--config.train.steps=20", "--config.optimizer.learning_rate=1e-3")
  assert rc == 0, out
  val = [r["val_loss"] for r in metric_rows(wd) if "val_loss" in r][-1]
  assert f"Already complete: step 20/20, nothing to do; val_loss {val:.4f} (at step 20)" in out
  assert (wd / "metrics.jsonl").read_text() == before


# 6. -----------------------------------------------------------------------------------------

def test_config_typos_get_the_closest_key_and_wrong_sections_the_right_file(tmp_path, corpus):
  rc, out = run_cli(tmp_path / "w", corpus, "--config.optimizr.learning_rate=1")
  assert_user_error(rc, out, "ERROR: --config.optimizr.learning_rate: the config has no field")
  assert "did you mean 'optimizer'?" in out
  rc, out = run_cli(tmp_path / "w", corpus, "--config.train.stpes=3")
  assert_user_error(rc, out, "ERROR: --config.train.stpes")
  assert "did you mean 'train.steps'?" in out
  rc, out = run_cli(tmp_path / "w", corpus, "--config.optimizer.name=muon")
  assert_user_error(rc, out, "ERROR: optimizer: Unknown hyperparameter(s)")
  assert "use --config=configs/speedrun_cpu_muon.py" in out
  rc, out = run_cli(tmp_path / "w", corpus, "--config.optimizer.name=lion")  # name="lion" form
  assert_user_error(rc, out, "ERROR: optimizer: Unknown hyperparameter(s) ['eps']")
  assert "use --config=configs/speedrun_cpu_lion.py" in out
  # A value out of range in the right section: no hint to switch config files.
  rc, out = run_cli(tmp_path / "w", corpus, "--config.optimizer.b1=1.5")
  assert_user_error(rc, out, "ERROR: optimizer: optimizer 'adamw': hyperparameter b1=1.5: must "
                             "be in [0, 1]")
  assert "Hint" not in out
  rc, out = run_cli(tmp_path / "w", corpus, "--config.optimizer.name=muon", "--traceback")
  assert rc == 2 and "Traceback" in out and len(error_lines(out)) == 1
  assert not (tmp_path / "w").exists()


def test_print_config_shows_the_resolved_config_and_exits(tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "experiments.train", f"--config={CONFIG}", "--print_config",
       "--config.optimizer.learning_rate=0.0123"],
      cwd=ROOT, capture_output=True, text=True, timeout=300, env=dict(os.environ, XLA_FLAGS=""))
  assert out.returncode == 0, out.stderr
  assert "learning_rate: 0.0123" in out.stdout and "allow_config_change: false" in out.stdout


# 7. -----------------------------------------------------------------------------------------

def test_a_torn_metrics_line_is_dropped_and_a_killed_run_leaves_no_duplicates(tmp_path, corpus):
  wd = tmp_path / "w"
  # Killed before its first checkpoint: the rerun starts over and rewrites the rows.
  proc = run_cli(wd, corpus, "--config.train.steps=20", "--config.train.checkpoint_every=1000",
                 wait=False)
  _wait_for_step(wd, 3, proc)
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  assert not list((wd / "checkpoints").glob("[0-9]*"))
  rc, out = run_cli(wd, corpus, "--config.train.steps=20", "--config.train.checkpoint_every=1000",
                    "--config.train.stop_at_step=10")
  assert rc == 0, out
  # A power loss tears the last line.
  with open(wd / "metrics.jsonl", "a") as f:
    f.write('{"step": 11, "train_lo')
  rc, out = run_cli(wd, corpus, "--config.train.steps=20", "--config.train.checkpoint_every=1000")
  assert rc == 0, out
  assert "unreadable line" in out
  assert_one_row_per_step_and_key(wd, 20)
  assert [r["step"] for r in metric_rows(wd) if "val_loss" in r] == [0, 10, 20]


# 8. -----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_skip_nonfinite_updates_skips_counts_and_stops_after_n(tmp_path, corpus):
  wd = tmp_path / "w"
  rc, out = run_cli(wd, corpus, "--config.train.steps=12",
                    "--config.train.skip_nonfinite_updates=True",
                    "--config.debug.nonfinite_grad_steps=4",
                    "--config.debug.nonfinite_grad_kind=inf")
  assert rc == 0, out
  rows = metric_rows(wd)
  assert [r["step"] for r in rows if r.get("skipped") == 1.0] == [4]
  assert sum(1 for r in rows if r.get("skipped") == 0.0) == 11
  chex.assert_tree_all_finite(restore_params(wd)[1])
  rc, out = run_cli(tmp_path / "w2", corpus, "--config.train.steps=12",
                    "--config.train.skip_nonfinite_updates=True",
                    "--config.train.max_consecutive_skips=2",
                    "--config.debug.nonfinite_grad_steps=3,4,5,6")
  assert rc == 1, out
  assert error_lines(out)[0].startswith("ERROR: 3 consecutive steps had non-finite")
  # Without the option a NaN gradient stops the run and names the remedy.
  rc, out = run_cli(tmp_path / "w3", corpus, "--config.train.steps=12",
                    "--config.debug.nonfinite_grad_steps=3")
  assert rc == 1 and "skip_nonfinite_updates" in out, out


# 9. -----------------------------------------------------------------------------------------

def test_a_run_killed_without_warning_resumes_from_its_wall_clock_checkpoint(tmp_path, corpus,
                                                                            straight_30):
  # No checkpoint by steps before the end; by wall-clock, one after every step (any interval
  # shorter than a step): SIGKILL, which no handler sees, loses at most the step in flight.
  wd = tmp_path / "w"
  flags = ("--config.train.steps=30", "--config.train.checkpoint_every=1000",
           "--config.train.checkpoint_every_s=1e-9")
  proc = run_cli(wd, corpus, *flags, wait=False)
  try:
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
      if any(p.name.isdigit() and int(p.name) >= 8 for p in (wd / "checkpoints").glob("*")):
        break
      time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
  killed_at = restore_params(wd)[0]
  assert 8 <= killed_at < 30
  rc, out = run_cli(wd, corpus, *flags)
  assert rc == 0, out
  assert f"Resumed from checkpoint step {killed_at}" in out, out
  chex.assert_trees_all_equal(restore_params(wd)[1], restore_params(straight_30)[1])
  assert_one_row_per_step_and_key(wd, 30)
