"""The trainer end to end: learning, resume equality, signals, NaN guard, checkpoints, CLI."""

import json
import os
import signal
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments.training import checkpoints as ckpt_lib
from experiments import configs_util
from experiments.training import metrics as metrics_lib
from experiments.training import loop as trainer
from experiments.training import train_state
from experiments.training import validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "speedrun_cpu.py")

TINY = {
    "model.num_layers": 2, "model.width": 32, "model.num_heads": 2, "model.max_seq_len": 32,
    "data.seq_len": 32, "train.batch_size": 8, "train.eval_batches": 2, "train.eval_every": 10,
    "train.log_every": 5, "train.checkpoint_every": 10, "schedule.warmup_steps": 5,
    "mesh.data": 1, "schedule.base_batch_size": 8,
}


def tiny_config(tmp_path, **overrides):
  values = dict(TINY, **{"data.cache_dir": str(tmp_path / "corpus")})
  values.update({k.replace("__", "."): v for k, v in overrides.items()})
  return configs_util.load(CONFIG, values)


def start(cmd, wait=True):
  """Runs `cmd` from the repository root on one plain CPU device (no fake devices): the
  process, or (exit code, stdout and stderr) once it ends (wait=True)."""
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  if not wait:
    return proc
  out, _ = proc.communicate(timeout=600)
  return proc.returncode, out


def run_cli(workdir, corpus_dir, *flags, wait=True):
  args = [f"--config.{k}={v}" for k, v in TINY.items()] + [f"--config.data.cache_dir={corpus_dir}"]
  return start([sys.executable, "-m", "experiments.train", f"--config={CONFIG}",
                f"--workdir={workdir}", *args, *flags], wait)


def restore_params(workdir, step=None):
  with ocp.CheckpointManager(os.path.join(workdir, "checkpoints")) as mgr:
    step = mgr.latest_step() if step is None else step
    return step, mgr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))["state"]


def test_a_few_steps_reduce_the_loss_and_metrics_are_logged(tmp_path):
  cfg = tiny_config(tmp_path, train__steps=30)
  summary = trainer.train_and_evaluate(cfg, str(tmp_path / "w"))
  records = metrics_lib.read_metrics(str(tmp_path / "w"))
  val = [r["val_loss"] for r in records if "val_loss" in r]
  assert summary["step"] == 30 and len(val) == 4  # steps 0, 10, 20, 30
  assert val[-1] < val[0] - 1.0
  keys = set().union(*records)
  assert {"step", "train_loss", "val_loss", "tokens_per_s", "lr", "grad_norm"} <= keys
  run = json.load(open(tmp_path / "w" / "run.json"))
  assert run["corpus"]["sha256"] and run["versions"]["jax"] == jax.__version__
  assert run["config"]["train"]["steps"] == 30 and "sha" in run["git"]
  assert os.listdir(tmp_path / "w" / "tb")


def test_eight_devices_and_one_give_the_same_losses(tmp_path):
  assert jax.device_count() == 8
  losses = {}
  for n in (1, 8):
    cfg = tiny_config(tmp_path, train__steps=5, mesh__data=n, train__eval_every=0)
    trainer.train_and_evaluate(cfg, str(tmp_path / f"m{n}"))
    losses[n] = [r["train_loss"] for r in metrics_lib.read_metrics(str(tmp_path / f"m{n}"))
                 if "train_loss" in r]
  assert len(losses[1]) == 5
  # Same math; only the all-reduce's summation order differs across 8 shards.
  chex.assert_trees_all_close(np.array(losses[8]), np.array(losses[1]), rtol=1e-5)


@pytest.mark.slow
def test_resume_after_kill_is_bitwise_identical(tmp_path):
  corpus = tmp_path / "corpus"
  rc, out = run_cli(tmp_path / "straight", corpus, "--config.train.steps=40")
  assert rc == 0, out
  # Interrupted: the first process ends after step 20 (as a time-limited job slot would) ...
  rc, out = run_cli(tmp_path / "resumed", corpus, "--config.train.steps=40",
                    "--config.train.stop_at_step=20")
  assert rc == 0, out
  assert restore_params(tmp_path / "resumed")[0] == 20
  # ... a second one is killed with SIGKILL (no chance to save) somewhere after step 20 ...
  proc = run_cli(tmp_path / "resumed", corpus, "--config.train.steps=40",
                 "--config.train.checkpoint_every=1000", wait=False)
  metrics = tmp_path / "resumed" / "metrics.jsonl"
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if metrics.exists() and any(json.loads(line)["step"] > 21
                                for line in metrics.read_text().splitlines()):
      break
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  # ... and a third resumes from the step-20 checkpoint and finishes.
  rc, out = run_cli(tmp_path / "resumed", corpus, "--config.train.steps=40")
  assert rc == 0, out
  assert "Resumed from checkpoint step 20" in out
  step_a, a = restore_params(tmp_path / "straight")
  step_b, b = restore_params(tmp_path / "resumed")
  assert step_a == step_b == 40
  chex.assert_trees_all_equal(a, b)
  # The metrics log has no records from the killed run's lost steps twice.
  steps = [r["step"] for r in metrics_lib.read_metrics(str(tmp_path / "resumed"))
           if "train_loss" in r]
  assert steps == list(range(1, 41))


def test_sigterm_saves_then_exits_and_resume_matches(tmp_path):
  corpus = tmp_path / "corpus"
  proc = run_cli(tmp_path / "w", corpus, "--config.train.steps=400",
                 "--config.train.checkpoint_every=1000", wait=False)
  metrics = tmp_path / "w" / "metrics.jsonl"
  while proc.poll() is None:
    if metrics.exists() and any(json.loads(line)["step"] >= 3
                                for line in metrics.read_text().splitlines()):
      break
    time.sleep(0.01)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 128 + signal.SIGTERM, out
  step, _ = restore_params(tmp_path / "w")
  assert 3 <= step < 400
  # The rerun resumes there and ends bitwise where an uninterrupted run of the same length does.
  end = step + 3
  rc, out = run_cli(tmp_path / "w", corpus, "--config.train.steps=400",
                    "--config.train.checkpoint_every=1000", f"--config.train.stop_at_step={end}")
  assert rc == 0 and f"Resumed from checkpoint step {step}" in out, out
  rc, out = run_cli(tmp_path / "straight", corpus, "--config.train.steps=400",
                    "--config.train.checkpoint_every=1000", f"--config.train.stop_at_step={end}")
  assert rc == 0, out
  chex.assert_trees_all_equal(restore_params(tmp_path / "w")[1],
                              restore_params(tmp_path / "straight")[1])


def test_nan_guard_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  # SGD whose learning rate warms up from 0 to 1e30: the first update is harmless, then the
  # parameters overflow to Inf and the loss turns NaN.
  cfg = tiny_config(tmp_path, train__steps=50, train__checkpoint_every=1,
                    schedule__name="constant", schedule__warmup_steps=10)
  cfg.optimizer = {"name": "sgd", "learning_rate": 1e30}
  with pytest.raises(trainer.TrainingDivergedError, match="[Ll]ast good checkpoint"):
    trainer.train_and_evaluate(cfg, str(tmp_path / "nan"))
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path / "nan" / "checkpoints"), 3)
  steps = checkpointer.all_steps()
  checkpointer.close()  # an open orbax manager leaves asyncio noise when collected
  assert steps and max(steps) < 50
  last, state = restore_params(tmp_path / "nan")
  chex.assert_tree_all_finite(state["params"])
  assert last == max(steps)


# Raised, not filtered: orbax's leftover asyncio callbacks after a failed read of garbage files
# must not appear (the checkpointer rejects damaged files before orbax opens them).
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_corrupt_or_incompatible_checkpoint_is_an_error(tmp_path):
  cfg = tiny_config(tmp_path, train__steps=10)
  trainer.train_and_evaluate(cfg, str(tmp_path / "w"))
  wider = tiny_config(tmp_path, train__steps=20, model__width=64)
  with pytest.raises(ckpt_lib.CheckpointError, match="incompatible"):
    trainer.train_and_evaluate(wider, str(tmp_path / "w"))
  # Damage the saved arrays: restoring must fail loudly, not start over.
  state_dir = tmp_path / "w" / "checkpoints" / "10" / "state"
  for dirpath, _, files in os.walk(state_dir):
    for f in files:
      if "manifest" in f or f.endswith(".ocdbt") or "d" == os.path.basename(dirpath):
        with open(os.path.join(dirpath, f), "wb") as fh:
          fh.write(b"garbage")
  with pytest.raises(ckpt_lib.CheckpointError, match="every checkpoint in .* is damaged"):
    trainer.train_and_evaluate(tiny_config(tmp_path, train__steps=20), str(tmp_path / "w"))
  import gc  # pylint: disable=g-import-not-at-top
  gc.collect()  # anything left behind would surface here, inside this test's filter


def test_cli_overrides_reach_the_config_and_bad_optimizer_names_fail(tmp_path):
  corpus = tmp_path / "corpus"
  rc, out = run_cli(tmp_path / "w", corpus, "--config.train.steps=2",
                    "--config.optimizer.learning_rate=0.0123", "--config.optimizer.b2=0.9")
  assert rc == 0, out
  run = json.load(open(tmp_path / "w" / "run.json"))
  assert run["config"]["optimizer"]["learning_rate"] == 0.0123
  assert run["config"]["optimizer"]["b2"] == 0.9
  assert run["config"]["model"]["width"] == 32
  rc, out = run_cli(tmp_path / "w2", corpus, "--config.train.steps=2",
                    "--config.optimizer.name=adamq")
  assert rc != 0
  assert "Unknown optimizer 'adamq'" in out and "adamw" in out and "sgd" in out


@pytest.mark.slow
def test_124m_config_trains_from_bin_shards(tmp_path):
  """The GPU config's data path (FineWeb-style shards, 50,304 vocab), shrunk to run on CPU."""
  rng = np.random.default_rng(0)
  from experiments.problems import data  # pylint: disable=g-import-not-at-top
  for name, size in (("train_000001", 20000), ("train_000002", 20000), ("val_000000", 5000)):
    data.write_shard(str(tmp_path / f"fw_{name}.bin"), rng.integers(0, 50257, size=size))
  cfg = configs_util.load(os.path.join(ROOT, "configs", "speedrun_124m.py"), {
      "model.num_layers": 1, "model.width": 32, "model.num_heads": 2, "model.dtype": "float32",
      "data.seq_len": 32, "model.max_seq_len": 32, "train.batch_size": 8,
      "train.grad_accum_steps": 2, "train.steps": 3, "train.eval_every": 3,
      "train.eval_batches": 1, "mesh.data": 2,
      "data.train_glob": str(tmp_path / "fw_train_*.bin"),
      "data.val_glob": str(tmp_path / "fw_val_*.bin")})
  summary = trainer.train_and_evaluate(cfg, str(tmp_path / "w"))
  assert summary["step"] == 3 and np.isfinite(summary["val_loss"])
  run = json.load(open(tmp_path / "w" / "run.json"))
  assert len(run["corpus"]["train_files"]) == 2 and run["corpus"]["val_sha256"]
  bad = configs_util.load(os.path.join(ROOT, "configs", "speedrun_124m.py"),
                          {"data.train_glob": str(tmp_path / "missing_*.bin"),
                           "data.val_glob": str(tmp_path / "fw_val_*.bin")})
  with pytest.raises(validate.ConfigError, match="missing_"):
    trainer.train_and_evaluate(bad, str(tmp_path / "w2"))


def test_stop_at_target_ends_at_the_first_eval_below_it(tmp_path):
  cfg = tiny_config(tmp_path, train__steps=30, train__target_val_loss=100.0,
                    train__stop_at_target=True)
  summary = trainer.train_and_evaluate(cfg, str(tmp_path / "w"))
  assert summary["steps_to_target"] == 10 and summary["step"] == 10
  records = metrics_lib.read_metrics(str(tmp_path / "w"))
  assert [r["steps_to_target"] for r in records if "steps_to_target" in r] == [10]
  assert restore_params(tmp_path / "w")[0] == 10


def test_target_reached_before_a_resume_is_not_logged_again(tmp_path):
  cfg = tiny_config(tmp_path, train__steps=30, train__target_val_loss=100.0,
                    train__stop_at_step=20)
  assert trainer.train_and_evaluate(cfg, str(tmp_path / "w"))["steps_to_target"] == 10
  cfg = tiny_config(tmp_path, train__steps=30, train__target_val_loss=100.0)
  summary = trainer.train_and_evaluate(cfg, str(tmp_path / "w"))
  assert summary["step"] == 30 and summary["steps_to_target"] == 10
  records = metrics_lib.read_metrics(str(tmp_path / "w"))
  assert [r["steps_to_target"] for r in records if "steps_to_target" in r] == [10]


# normuon, dion and psgd_kron train their configs through the CLI in their own test files;
# muon, shampoo, soap and adamw_8bit train theirs 14 steps (the same TINY model, past the first
# root / basis refresh) and resume them in test_trainer_paths.py's bitwise-resume test.
_ELSEWHERE = ("normuon", "dion", "psgd_kron", "muon", "shampoo", "soap", "adamw_8bit")
_VARIANTS = sorted(f for f in os.listdir(os.path.join(ROOT, "configs"))
                   if f.startswith("speedrun_cpu_") and f.endswith(".py") and
                   f[len("speedrun_cpu_"):-3] not in _ELSEWHERE)


@pytest.mark.slow
@pytest.mark.parametrize("name", _VARIANTS)
def test_every_cpu_speedrun_config_trains(tmp_path, name):
  # 12 steps: past Shampoo's and SOAP's first root / basis refresh at step 11.
  values = dict(TINY, **{"data.cache_dir": str(tmp_path / "corpus"), "train.steps": 12,
                         "train.eval_every": 12, "train.checkpoint_every": 12})
  cfg = configs_util.load(os.path.join(ROOT, "configs", name), values)
  if cfg.optimizer.name == "shampoo":
    cfg.optimizer.start_preconditioning_step = 1
  summary = trainer.train_and_evaluate(cfg, str(tmp_path / "w"))
  assert summary["step"] == 12 and np.isfinite(summary["val_loss"])
  records = metrics_lib.read_metrics(str(tmp_path / "w"))
  assert records[0]["val_loss"] > summary["val_loss"]


def test_a_stalled_step_is_reported_with_what_to_do(tmp_path, monkeypatch, caplog):
  # Step 3's metrics take 5 s to arrive (as if the device hung): the watchdog (2 s) warns,
  # once. (Not 1 s: the last step's checkpoint, with its first-call compilation, takes ~1.1 s.)
  fetch = trainer.fetch_metrics

  def slow_fetch(run, actions, step_no, *args):
    if step_no == 3:
      time.sleep(5.0)
    return fetch(run, actions, step_no, *args)

  monkeypatch.setattr(trainer, "fetch_metrics", slow_fetch)
  cfg = tiny_config(tmp_path, train__steps=5, train__stall_warning_s=2.0)
  with caplog.at_level("WARNING"):
    assert trainer.train_and_evaluate(cfg, str(tmp_path / "w"))["step"] == 5
  warnings = [r.getMessage() for r in caplog.records if "No training progress" in r.getMessage()]
  assert len(warnings) == 1 and f"kill -9 {os.getpid()}" in warnings[0]


def test_batch_scaling_rule_is_a_choice_and_scales_every_peak_learning_rate(tmp_path):
  cfg = tiny_config(tmp_path, train__batch_size=32, schedule__base_batch_size=8,
                    schedule__warmup_steps=10, train__steps=100)
  assert cfg.schedule.lr_scaling == "sqrt"  # Adam-type default: sqrt(32 / 8) = 2
  _, schedule = train_state.make_optimizer(cfg)
  assert float(schedule(0)) == 0.0
  np.testing.assert_allclose(float(schedule(10)), 2 * cfg.optimizer.learning_rate, rtol=1e-6)
  cfg.schedule.lr_scaling = "linear"
  _, schedule = train_state.make_optimizer(cfg)
  np.testing.assert_allclose(float(schedule(10)), 4 * cfg.optimizer.learning_rate, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(5)), 2 * cfg.optimizer.learning_rate, rtol=1e-6)
  cfg.schedule.lr_scaling = "none"
  assert train_state.lr_scale(cfg) == 1.0
  sgd = configs_util.load(os.path.join(ROOT, "configs", "speedrun_cpu_sgd.py"),
                          {"train.batch_size": 64})
  assert train_state.lr_scale(sgd) == 2.0  # linear, base 32
  muon = configs_util.load(os.path.join(ROOT, "configs", "speedrun_cpu_muon.py"),
                           {"train.batch_size": 128})
  assert train_state.lr_scale(muon) == 2.0  # sqrt(128 / 32)
  cfg.schedule.base_batch_size = None
  cfg.schedule.lr_scaling = "linear"
  assert train_state.lr_scale(cfg) == 1.0


@pytest.mark.slow
def test_plots_label_runs_by_optimizer_and_write_beside_the_first_run(tmp_path):
  corpus = tmp_path / "corpus"
  for name, lr in (("a", "0.003"), ("b", "0.01")):
    rc, out = run_cli(tmp_path / name, corpus, "--config.train.steps=2",
                      f"--config.optimizer.learning_rate={lr}")
    assert rc == 0, out
  from scripts import plots  # pylint: disable=g-import-not-at-top
  assert plots.run_label(str(tmp_path / "a")) == "adamw (lr 0.003)"
  out = subprocess.run([sys.executable, "-m", "scripts.plots", str(tmp_path / "a"),
                        str(tmp_path / "b")], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr
  assert (tmp_path / "a" / "curves.png").stat().st_size > 1000
  assert not os.path.exists(os.path.join(ROOT, "curves.png"))
