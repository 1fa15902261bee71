"""Every bad input a clear error (issue 40): the filesystem, the comparison's command line, the
optimizer's hyperparameters, each through the command a user runs. One `ERROR:` line, the
documented exit status (2 a user error, 3 a workdir that cannot be written, 128+N a signal), no
traceback, and a rerun that resumes bitwise.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import chex
import numpy as np
import pytest

from experiments.problems import data as data_lib
from tests.test_train import restore_params, run_cli, start, ROOT, TINY, CONFIG
from tests.test_trustworthy_runs import (assert_one_row_per_step_and_key, assert_user_error,
                                         error_lines, metric_rows)

STORAGE = 3  # experiments/train.py's status for a workdir that cannot be written


def assert_storage_error(rc: int, out: str, *parts: str) -> str:
  assert rc == STORAGE, out
  errors = error_lines(out)
  assert len(errors) == 1 and all(p in errors[0] for p in parts), out
  assert "Traceback" not in out and "Event loop is closed" not in out, out
  return errors[0]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  return tmp_path_factory.mktemp("corpus")


@pytest.fixture(scope="module")
def straight_30(tmp_path_factory, corpus):
  """A 30-step run in one go (keeping 2 checkpoints): the reference of every resume here."""
  wd = tmp_path_factory.mktemp("straight") / "w"
  rc, out = run_cli(wd, corpus, "--config.train.steps=30", "--config.train.keep_checkpoints=2")
  assert rc == 0, out
  return wd


def _mount_tmpfs(path, options: str) -> bool:
  os.makedirs(path, exist_ok=True)
  return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                        capture_output=True).returncode == 0


def _umount(path):
  subprocess.run(["umount", "-l", str(path)], capture_output=True)  # -l: even if still busy


# 1. A workdir that cannot be written. ---------------------------------------------------------

def test_a_regular_file_as_workdir_is_one_line_and_status_3(tmp_path, corpus):
  wd = tmp_path / "w"
  wd.write_text("not a directory")
  rc, out = run_cli(wd, corpus, "--config.train.steps=5")
  assert_storage_error(rc, out, str(wd), "File exists")
  assert wd.read_text() == "not a directory"


@pytest.mark.slow
def test_a_read_only_or_immutable_workdir_is_one_line_and_status_3(tmp_path, corpus):
  ro, immutable = tmp_path / "ro", tmp_path / "immutable"
  cases = []
  if _mount_tmpfs(ro, "ro,size=1m"):
    cases.append((ro / "w", "Read-only file system"))
  immutable.mkdir()
  if subprocess.run(["chattr", "+i", str(immutable)], capture_output=True).returncode == 0:
    cases.append((immutable / "w", "Operation not permitted"))
  if not cases:
    # Every machine of this project (CI's included) runs as root and can do both: a machine that
    # cannot has lost this coverage, which must show, not be skipped.
    pytest.fail("neither a read-only tmpfs mount nor chattr +i worked: run as root (as CI does)")
  try:
    for wd, cause in cases:
      rc, out = run_cli(wd, corpus, "--config.train.steps=5")
      assert_storage_error(rc, out, str(wd), cause)
      assert not wd.exists()
  finally:
    _umount(ro)
    subprocess.run(["chattr", "-i", str(immutable)], capture_output=True)


# 2. A full disk during a checkpoint. ----------------------------------------------------------

# Without a mountable tmpfs: checkpoint 20's save fails as orbax reports a full disk, or
# TensorBoard's writer thread fails after step 10's checkpoint (it once hung the trainer).
_RUN_TRAINER = """
sys.argv[0] = "experiments.train"
runpy.run_module("experiments.train", run_name="__main__", alter_sys=True)
"""
_FULL_DISK_HOOKS = {"fault_hook": """
import runpy, sys
import orbax.checkpoint as ocp
real = ocp.CheckpointManager.save
def save(self, step, *args, **kwargs):
  if step == 20:
    raise ValueError("RESOURCE_EXHAUSTED: Failed writing: No space left on device "
                     "[os_error_code='28']")
  return real(self, step, *args, **kwargs)
ocp.CheckpointManager.save = save
""" + _RUN_TRAINER, "tensorboard_hook": """
import errno, runpy, sys
from tensorboardX import event_file_writer
real, events = event_file_writer.EventsWriter._write_serialized_event, []
def write(self, data):
  events.append(1)
  if len(events) > 110:  # after step 10's evaluation and checkpoint
    raise OSError(errno.ENOSPC, "No space left on device")
  return real(self, data)
event_file_writer.EventsWriter._write_serialized_event = write
""" + _RUN_TRAINER}


@pytest.mark.slow
@pytest.mark.parametrize("how", ["tmpfs", "fault_hook", "tensorboard_hook"])
def test_a_full_disk_keeps_the_last_checkpoint_and_the_rerun_resumes_bitwise(
    tmp_path, corpus, straight_30, how):
  fs = tmp_path / "fs"
  # 768k: checkpoint 10 fits, checkpoint 20 does not. Each checkpoint of this model is about
  # 515 KB, but how orbax's OCDBT store splits it into data files (and so how many partly used
  # 4 KB pages it takes while it is written) depends on the timing of its concurrent writes:
  # at 600k the first checkpoint ran out of space on CI-like load (2026-12-07, 2 cores busy).
  # 768k leaves it about 220 KB and still holds less than two checkpoints (1,032 KB).
  mounted = how == "tmpfs" and _mount_tmpfs(fs, "size=768k")
  if how == "tmpfs" and not mounted:
    # A real full disk is the case the issue names; the fault_hook case beside it simulates one
    # but does not replace it, so a machine that cannot mount fails here instead of skipping.
    pytest.fail("no tmpfs could be mounted: run as root (as CI does)")
  try:
    wd = fs / "w"
    if mounted:
      rc, out = run_cli(wd, corpus, "--config.train.steps=30")
    else:
      args = [f"--config.{k}={v}" for k, v in TINY.items()]
      rc, out = start([sys.executable, "-c", _FULL_DISK_HOOKS[how], f"--config={CONFIG}",
                       f"--workdir={wd}", *args, f"--config.data.cache_dir={corpus}",
                       "--config.train.steps=30"])
    # The checkpoint's arrays fill the disk, or a metrics row just before them does.
    line = assert_storage_error(rc, out, "No space left on device",
                                "a rerun resumes from checkpoint step 10")
    assert (line.startswith(f"ERROR: cannot save checkpoint 20 in {wd / 'checkpoints'}:") or
            line.startswith(f"ERROR: cannot write to {wd}")), line
    assert [d for d in os.listdir(wd / "checkpoints") if d.isdigit()] == ["10"]
    if mounted:
      subprocess.run(["mount", "-o", "remount,size=16m", str(fs)], check=True)
    rc, out = run_cli(wd, corpus, "--config.train.steps=30")
    assert rc == 0 and "Resumed from checkpoint step 10" in out, out
    chex.assert_trees_all_equal(restore_params(wd, 30), restore_params(straight_30, 30))
    assert sorted(os.listdir(wd / "checkpoints")) == ["10", "20", "30"]  # no leftovers
    assert_one_row_per_step_and_key(wd, 30)
  finally:
    _umount(fs)


def test_hash_files_of_pruned_checkpoints_are_removed(straight_30):
  assert sorted(os.listdir(straight_30 / "checkpoints")) == ["20", "30"]
  assert sorted(os.listdir(straight_30 / "checkpoints_hashes")) == ["20.json", "30.json"]


# 3. A lost metrics.jsonl. ---------------------------------------------------------------------

@pytest.mark.slow
def test_a_deleted_metrics_log_is_rebuilt_from_tensorboard_on_resume(tmp_path, corpus,
                                                                     straight_30):
  wd = tmp_path / "w"
  rc, out = run_cli(wd, corpus, "--config.train.steps=30", "--config.train.stop_at_step=20")
  assert rc == 0, out
  refused = tmp_path / "refused"
  shutil.copytree(wd, refused)
  os.remove(wd / "metrics.jsonl")
  rc, out = run_cli(wd, corpus, "--config.train.steps=30")
  assert rc == 0 and "rebuilt it from the TensorBoard events" in out, out
  assert_one_row_per_step_and_key(wd, 30)
  want = {(r["step"], k): r[k] for r in metric_rows(straight_30) for k in ("train_loss",
                                                                           "val_loss") if k in r}
  got = {(r["step"], k): r[k] for r in metric_rows(wd) for k in ("train_loss", "val_loss")
         if k in r}
  assert got == want

  # Truncated, and no events to rebuild it from: refused with what to do, the file untouched.
  lines = (refused / "metrics.jsonl").read_text().splitlines(keepends=True)
  (refused / "metrics.jsonl").write_text("".join(lines[:3]))
  shutil.rmtree(refused / "tb")
  rc, out = run_cli(refused, corpus, "--config.train.steps=30")
  assert_user_error(rc, out, f"ERROR: {refused / 'metrics.jsonl'} holds 3 row(s) up to step 20")
  assert "new --workdir" in error_lines(out)[0]
  assert (refused / "metrics.jsonl").read_text() == "".join(lines[:3])


# 5. The optimizer's hyperparameters, through the trainer. ------------------------------------

def test_a_nonsense_hyperparameter_is_refused_before_training(tmp_path, corpus):
  wd = tmp_path / "w"
  args = [f"--config.{k}={v}" for k, v in TINY.items()]
  rc, out = start([sys.executable, "-m", "experiments.train",
                   f"--config={os.path.join(ROOT, 'configs', 'speedrun_cpu_shampoo.py')}",
                   f"--workdir={wd}", *args, f"--config.data.cache_dir={corpus}",
                   "--config.optimizer.block_size=0"])
  assert_user_error(rc, out, "ERROR: optimizer: optimizer 'shampoo': hyperparameter "
                             "block_size=0: must be a positive integer")
  assert not wd.exists()


# 6. Bad data leaves no workdir behind. --------------------------------------------------------

def test_data_found_bad_after_the_workdir_was_made_leaves_no_workdir(tmp_path, corpus):
  shards = tmp_path / "shards"
  shards.mkdir()
  for name in ("train_0.bin", "val_0.bin"):  # token ids are checked as windows are drawn
    data_lib.write_shard(str(shards / name), np.arange(5000) % 300)
  wd = tmp_path / "w"
  rc, out = run_cli(wd, corpus, "--config.data.source=bin",
                    f"--config.data.train_glob={shards}/train_*.bin",
                    f"--config.data.val_glob={shards}/val_*.bin")
  assert_user_error(rc, out, f"ERROR: {shards}/")
  assert "out of range for vocab_size 256" in out
  assert not wd.exists()


# 4. The comparison's command line. ------------------------------------------------------------

def _compare(*args, wait=True):
  return start([sys.executable, "-m", "experiments.compare", *args], wait)


def test_compare_flag_values_and_names_are_checked_before_any_work(tmp_path):
  history = os.path.join(ROOT, "records", "history", "issue21")
  for args, line in (
      (("sweep", str(tmp_path / "r"), "--trials=0"),
       "ERROR: flag --trials=0: 0 is not a positive integer (--help lists the flags)"),
      (("score", history, "--alpha=2"),
       "ERROR: flag --alpha=2.0: --alpha must lie between 0 and 1 (--help lists the flags)"),
      (("score", history, "--baseline=adamW"),
       f"ERROR: --baseline=adamW: no records of it in {history}; did you mean 'adamw'? the "
       "optimizers there: adamw, adamw_8bit, ademamix, cautious, dion, lion, muon, normuon, "
       "psgd_kron, schedule_free_adamw, sgd, shampoo, soap"),
      (("score", history, "--speedrun_workload=speedrn"),
       f"ERROR: --speedrun_workload=speedrn: no records of it in {history}; its workloads: "
       "gpt_deep, logreg, mds, mlp_digits, speedrun"),
      (("sweep", str(tmp_path / "r"), "--optimizers=muon", "--baseline=sgd", "--quick"),
       f"ERROR: --baseline=sgd: no records of it in {tmp_path / 'r'} nor in --optimizers; the "
       "optimizers there: muon")):
    rc, out = _compare(*args)
    assert (rc, out.strip().splitlines()) == (2, [line]), (args, out)
  assert not os.listdir(tmp_path / "r")  # nothing trained
  # A records directory the filesystem will not create: one line, status 3, before any run.
  rc, out = _compare("all", "/proc/soj_records", "--quick")
  assert (rc, out.strip().splitlines()) == (STORAGE, [
      "ERROR: cannot create the records directory '/proc/soj_records': No such file or "
      "directory"]), out


@pytest.mark.slow
def test_compare_command_line_mistakes_are_one_line_and_status_2(tmp_path):
  rc, out = _compare("scroe", "records")
  assert rc == 2 and out.strip().splitlines() == [
      "ERROR: unknown command 'scroe'; did you mean 'score'? the commands are: score, sweep, "
      "plots, all, targets, retarget, budgets, edges, reference"], out
  rc, out = _compare("score", str(tmp_path / "nowhere"))
  assert rc == 2 and len(out.strip().splitlines()) == 1, out
  assert out.startswith(f"ERROR: the records directory '{tmp_path / 'nowhere'}' does not exist")
  rc, out = _compare("score", str(tmp_path))
  assert rc == 2 and out.strip().splitlines() == [
      f"ERROR: no records in {tmp_path} (no <workload>.jsonl there; `python -m "
      "experiments.compare sweep` writes them)"], out
  rc, out = _compare("score", str(tmp_path), "--bogus=1")
  assert rc == 2 and len(out.strip().splitlines()) == 1 and "bogus" in out, out
  rc, out = _compare("--help")
  assert rc == 0 and "--vectorize" in out, out
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  rc, out = _compare("sweep", str(tmp_path / "records"), "--workloads=mds", "--optimizers=adamw",
                     "--trials=1", "--studies=1", f"--runs_dir={blocker}/runs")
  assert rc == 3 and len(error_lines(out)) == 1 and "Traceback" not in out, out
  assert f"{blocker}/runs" in error_lines(out)[0], out


@pytest.mark.slow
@pytest.mark.parametrize("signum,vectorize", [(signal.SIGTERM, "never"),
                                              (signal.SIGINT, "never"),
                                              (signal.SIGTERM, "always")])
def test_a_signal_stops_a_sweep_after_the_running_trials_record(tmp_path, signum, vectorize):
  """Sent once the first trial's record (of a vectorized program: its records) is written, the
  signal stops the sweep before the second's: exit 128+N, one line, a rerun does the rest."""
  records, runs = tmp_path / "records", tmp_path / "runs"
  trials, workload = (1, "mds") if vectorize == "never" else (2, "logreg")
  args = ("sweep", str(records), f"--workloads={workload}", "--optimizers=adamw,sgd",
          f"--trials={trials}", "--studies=1", f"--runs_dir={runs}", f"--vectorize={vectorize}")
  path = records / f"{workload}.jsonl"
  recorded = lambda: path.read_text().splitlines() if path.exists() else []
  proc = _compare(*args, wait=False)
  deadline = time.time() + 300
  while len(recorded()) < trials and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signum)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 128 + signum, out
  assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
  stops = [l for l in out.splitlines() if "rerun the same command to resume it" in l]
  assert len(stops) == 1, out
  assert [json.loads(l)["optimizer"] for l in recorded()] == ["adamw"] * trials, out
  rc, out = _compare(*args)
  assert rc == 0 and f"{trials} already recorded" in out, out
  assert [json.loads(l)["optimizer"] for l in recorded()] == ["adamw"] * trials + ["sgd"] * trials


def test_the_trainer_documents_status_3():
  with open(os.path.join(ROOT, "README.md")) as f:
    readme = f.read()
  assert "3 the workdir cannot be written" in readme
  rc, out = start([sys.executable, "-m", "experiments.train", "--help"])
  assert rc == 0 and "3 when the workdir cannot be written" in out, out
