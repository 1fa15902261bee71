"""Trainer paths that had no test: accumulation, bf16 compute, resume per optimizer, SAM, eval
on 8 devices, the corpus cache, warnings."""

import os

import chex
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments import configs_util
from experiments.training import metrics as metrics_lib
from experiments.training import loop as trainer
from experiments.training import train_state
from experiments.training import validate
from tests.test_train import ROOT, restore_params, tiny_config


def _state(workdir):
  with ocp.CheckpointManager(os.path.join(workdir, "checkpoints")) as mgr:
    return mgr.restore(mgr.latest_step(), args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))["state"]


def _val(workdir):
  return [r["val_loss"] for r in metrics_lib.read_metrics(str(workdir)) if "val_loss" in r]


@pytest.mark.slow
def test_gradient_accumulation_matches_one_large_batch(tmp_path):
  runs = {}
  for accum in (1, 4):
    cfg = tiny_config(tmp_path, train__steps=3, train__grad_accum_steps=accum,
                      train__eval_every=3)
    trainer.train_and_evaluate(cfg, str(tmp_path / f"a{accum}"))
    runs[accum] = restore_params(tmp_path / f"a{accum}")[1]["params"]
  # The mean of 4 micro-batch means of 2 rows is the mean over 8 rows: only the summation
  # order differs, so float32 round-off (~1e-7 relative) through 3 Adam steps.
  chex.assert_trees_all_close(runs[4], runs[1], rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(_val(tmp_path / "a4"), _val(tmp_path / "a1"), rtol=1e-5)


def test_bf16_compute_trains_with_float32_master_weights_and_states(tmp_path):
  losses = {}
  for dtype in ("float32", "bfloat16"):
    cfg = tiny_config(tmp_path, train__steps=10, model__dtype=dtype)
    trainer.train_and_evaluate(cfg, str(tmp_path / dtype))
    state = _state(tmp_path / dtype)
    assert {x.dtype for x in jax.tree.leaves(state["params"])} == {np.dtype("float32")}
    floats = [x for x in jax.tree.leaves(state["opt_state"]) if x.dtype.kind == "f"]
    assert floats and {x.dtype for x in floats} == {np.dtype("float32")}
    losses[dtype] = _val(tmp_path / dtype)
  assert losses["bfloat16"][-1] < losses["bfloat16"][0] - 0.5
  # bf16 keeps 8 mantissa bits: logits and activations round at ~0.4%, and the loss after 10
  # steps stays within a few hundredths of float32's.
  assert abs(losses["bfloat16"][-1] - losses["float32"][-1]) < 0.05


_OPTIMIZERS = {
    "muon": ("speedrun_cpu_muon.py", {}),
    "shampoo": ("speedrun_cpu_shampoo.py", {"optimizer.start_preconditioning_step": 1}),
    "soap": ("speedrun_cpu_soap.py", {}),
    "adamw_8bit": ("speedrun_cpu_adamw_8bit.py", {}),
    "sam": ("speedrun_cpu.py", None),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(_OPTIMIZERS))
def test_resume_through_the_trainer_is_bitwise_for(tmp_path, name):
  from tests.test_train import TINY  # pylint: disable=g-import-not-at-top
  config_file, extra = _OPTIMIZERS[name]

  def config(**kw):
    values = dict(TINY, **{"data.cache_dir": str(tmp_path / "corpus"), "train.steps": 14,
                           "train.eval_every": 7, "train.checkpoint_every": 7})
    values.update({k.replace("__", "."): v for k, v in kw.items()})
    cfg = configs_util.load(os.path.join(ROOT, "configs", config_file), values)
    for k, v in (extra or {}).items():
      section, key = k.split(".")
      cfg[section][key] = v
    if extra is None:  # SAM around AdamW, through the registry's `sam` entry
      cfg.optimizer = {"name": "sam", "inner": "adamw", "rho": 0.05, "learning_rate": 3e-3,
                       "inner_hparams": {"b2": 0.95}}
    return cfg

  trainer.train_and_evaluate(config(), str(tmp_path / "straight"))
  # Half the run, then a fresh trainer (as a new process would) resumes from the checkpoint.
  assert trainer.train_and_evaluate(config(train__stop_at_step=7), str(tmp_path / "r"))["step"] == 7
  summary = trainer.train_and_evaluate(config(), str(tmp_path / "r"))
  assert summary["step"] == 14
  chex.assert_trees_all_equal(_state(tmp_path / "r"), _state(tmp_path / "straight"))
  assert _val(tmp_path / "r") == _val(tmp_path / "straight")
  assert _val(tmp_path / "r")[-1] < _val(tmp_path / "r")[0]


@pytest.mark.slow
def test_sam_trains_through_the_trainer_with_clipping(tmp_path):
  cfg = tiny_config(tmp_path, train__steps=10, train__grad_clip_norm=0.5)
  cfg.optimizer = {"name": "sam", "inner": "adamw", "rho": 0.05, "learning_rate": 3e-3}
  summary = trainer.train_and_evaluate(cfg, str(tmp_path / "w"))
  val = _val(tmp_path / "w")
  assert summary["step"] == 10 and val[-1] < val[0] - 0.5


def test_evaluation_on_eight_devices_matches_one(tmp_path):
  val = {}
  for n in (1, 8):
    cfg = tiny_config(tmp_path, train__steps=5, train__eval_every=5, mesh__data=n)
    trainer.train_and_evaluate(cfg, str(tmp_path / f"d{n}"))
    val[n] = _val(tmp_path / f"d{n}")
  assert len(val[1]) == 2
  # The loss is a mean over the batch: 8 shards change only the all-reduce's summation order.
  np.testing.assert_allclose(val[8], val[1], rtol=1e-5)


def test_the_builtin_corpus_is_cached_once_per_machine(tmp_path, monkeypatch):
  monkeypatch.setenv("SOJ_CACHE_DIR", str(tmp_path / "cache"))
  for name in ("a", "b"):
    cfg = tiny_config(tmp_path, train__steps=1, train__eval_every=0)
    cfg.data.cache_dir = None
    trainer.train_and_evaluate(cfg, str(tmp_path / name))
    assert not (tmp_path / name / "data").exists()
  (corpus,) = os.listdir(tmp_path / "cache")
  assert corpus.startswith("stdlib_")


def test_a_run_shorter_than_its_warmup_is_warned_about(tmp_path):
  cfg = tiny_config(tmp_path, train__steps=5, schedule__warmup_steps=10)
  assert any("warmup_steps=10 >= train.steps=5" in w for w in validate.validate(cfg))
  assert not validate.validate(tiny_config(tmp_path, train__steps=50))


def test_stop_at_step_reports_the_latest_validation_loss_and_its_step(tmp_path):
  cfg = tiny_config(tmp_path, train__steps=30, train__stop_at_step=15)
  summary = trainer.train_and_evaluate(cfg, str(tmp_path / "w"))
  assert summary["step"] == 15 and summary["val_step"] == 10
  assert summary["val_loss"] == _val(tmp_path / "w")[-1]


@pytest.mark.slow
def test_schedule_free_is_evaluated_and_logged_at_the_averaged_point(tmp_path):
  from tests.test_train import TINY  # pylint: disable=g-import-not-at-top
  import optimizers  # pylint: disable=g-import-not-at-top
  from experiments.problems import workloads  # pylint: disable=g-import-not-at-top
  values = dict(TINY, **{"data.cache_dir": str(tmp_path / "corpus"), "train.steps": 10,
                         "train.eval_every": 10})
  cfg = configs_util.load(os.path.join(ROOT, "configs", "speedrun_cpu_schedule_free_adamw.py"),
                          values)
  trainer.train_and_evaluate(cfg, str(tmp_path / "w"))
  tx, _ = train_state.make_optimizer(cfg)
  w = workloads.build(cfg, str(tmp_path / "w"))
  abstract = jax.eval_shape(train_state.make_init_state(w.init_params, tx), 0)
  with ocp.CheckpointManager(os.path.join(tmp_path / "w", "checkpoints")) as mgr:
    state = mgr.restore(10, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))["state"]
  x = optimizers.eval_params(state["params"], state["opt_state"])
  mean = lambda p: float(np.mean([w.eval_fn(p, b) for b in w.eval_batches()]))
  at_x, at_y = mean(x), mean(state["params"])
  logged = _val(tmp_path / "w")[-1]
  assert abs(at_x - at_y) > 1e-3  # the two points really differ after 10 steps
  np.testing.assert_allclose(logged, at_x, rtol=1e-5)


@pytest.mark.slow
def test_pmap_parallelism_matches_jit_and_resumes_from_its_checkpoints(tmp_path):
  train = {}
  for par in ("jit", "pmap"):
    cfg = tiny_config(tmp_path, train__steps=8, train__eval_every=4, mesh__data=8,
                      parallelism=par)
    if par == "pmap":  # half, then a fresh trainer resumes from the pmap run's checkpoint
      cfg.train.stop_at_step = 4
      trainer.train_and_evaluate(cfg, str(tmp_path / par))
      cfg.train.stop_at_step = None
    trainer.train_and_evaluate(cfg, str(tmp_path / par))
    rows = metrics_lib.read_metrics(str(tmp_path / par))
    train[par] = [r["train_loss"] for r in rows if "train_loss" in r]
  assert len(train["pmap"]) == 8
  # Both average per-device gradients of the same rows; only the reduction order differs.
  np.testing.assert_allclose(train["pmap"], train["jit"], rtol=1e-5)
  np.testing.assert_allclose(_val(tmp_path / "pmap"), _val(tmp_path / "jit"), rtol=1e-5)


@pytest.mark.slow
def test_precision_bf16_sets_the_compute_dtype_and_remat_may_change_on_resume(tmp_path):
  from experiments.problems import workloads  # pylint: disable=g-import-not-at-top
  cfg = tiny_config(tmp_path, train__steps=6, train__stop_at_step=3, precision="bf16")
  w = workloads.build(cfg, str(tmp_path / "w"))
  assert w.fingerprint["model"]["dtype"] == "bfloat16" and "remat" not in w.fingerprint["model"]
  trainer.train_and_evaluate(cfg, str(tmp_path / "w"))
  cfg = tiny_config(tmp_path, train__steps=6, precision="bf16", model__remat="block")
  assert trainer.train_and_evaluate(cfg, str(tmp_path / "w"))["step"] == 6
  state = _state(tmp_path / "w")
  assert {x.dtype for x in jax.tree.leaves(state["params"])} == {np.dtype("float32")}


@pytest.mark.slow
def test_pmap_skips_injected_nonfinite_steps_and_accumulates_like_jit(tmp_path):
  # The strategies compile one train step: pmap has jit's skipping, fault injection and
  # micro-batch sum (two micro-batches of 8 rows over 8 devices here).
  rows = {}
  for par in ("jit", "pmap"):
    cfg = tiny_config(tmp_path, train__steps=6, train__eval_every=0, mesh__data=8,
                      train__batch_size=16, train__grad_accum_steps=2, parallelism=par,
                      train__skip_nonfinite_updates=True, train__max_consecutive_skips=2,
                      debug__nonfinite_grad_steps="3,4")
    assert trainer.train_and_evaluate(cfg, str(tmp_path / par))["step"] == 6
    rows[par] = [r for r in metrics_lib.read_metrics(str(tmp_path / par)) if "skipped" in r]
  for par in rows:
    assert [r["skipped"] for r in rows[par]] == [0, 0, 1, 1, 0, 0], par
  finite = lambda par: [r["train_loss"] for r in rows[par] if not r["skipped"]]
  np.testing.assert_allclose(finite("pmap"), finite("jit"), rtol=1e-5)
  chex.assert_trees_all_close(_state(tmp_path / "pmap")["params"],
                              _state(tmp_path / "jit")["params"], rtol=1e-4, atol=1e-6)
