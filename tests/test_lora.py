"""LoRA: adapter counts, frozen base weights, fine-tuning on a new text, adapter-only states."""

import json
import os
import subprocess
import sys
import sysconfig

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from experiments import configs_util
from experiments.training import metrics as metrics_lib
from experiments.training import loop as trainer
from experiments.training import step as step_lib
from experiments.training import train_state
from experiments.training import validate
from experiments.problems import workloads
from models import gpt
from models import lora
import optimizers

CFG = gpt.GPTConfig(vocab_size=256, num_layers=2, width=32, num_heads=4, max_seq_len=32)
LCFG = lora.LoRAConfig(rank=4, alpha=8.0)


def _text_batches(n, rows=16, t=33):
  """Rows of an English text the base model never saw: IDLE's NEWS.txt from the stdlib."""
  path = os.path.join(sysconfig.get_paths()["stdlib"], "idlelib", "NEWS.txt")
  data = np.frombuffer(open(path, "rb").read(), np.uint8).astype(np.int32)
  starts = np.random.default_rng(0).integers(0, len(data) - t, (n, rows))
  return jnp.asarray(data[starts[..., None] + np.arange(t)])


@pytest.fixture(scope="module")
def base():
  params = gpt.init_params(CFG, jax.random.key(0))
  # A "pretrained" base: random nonzero projections (zero ones would hide the MLP's adapter).
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  return jax.tree.unflatten(tree, [x + 0.02 * jax.random.normal(k, x.shape)
                                   for x, k in zip(leaves, keys)])


def test_trainable_count_is_what_rank_and_targets_imply(base):
  adapters = lora.init_adapters(base, LCFG, jax.random.key(2))
  d, h = CFG.width, CFG.mlp_ratio * CFG.width
  per_block = 4 * 4 * (d + d) + 4 * (d + h) + 4 * (h + d)  # q, k, v, proj; fc; proj
  n = sum(x.size for x in jax.tree.leaves(adapters))
  assert n == lora.num_adapter_params(base, LCFG) == CFG.num_layers * per_block
  only_q = lora.LoRAConfig(rank=2, alpha=2.0, targets=("attn.q",))
  assert sum(x.size for x in jax.tree.leaves(lora.init_adapters(base, only_q,
                                                                 jax.random.key(2)))) == (
      CFG.num_layers * 2 * (d + d))
  for ab in jax.tree.leaves(adapters["blocks"][0], is_leaf=lambda x: "a" in x):
    assert ab["a"].ndim == ab["b"].ndim == 2 and not np.any(ab["b"])


def test_merge_is_w_plus_scaled_a_b_transpose(base):
  adapters = lora.init_adapters(base, LCFG, jax.random.key(2))
  adapters = jax.tree.map(lambda x: x + 0.1, adapters)
  merged = lora.merge(base, adapters, LCFG)
  a = np.asarray(adapters["blocks"][1]["mlp.fc"]["a"], np.float64)
  b_t = np.asarray(adapters["blocks"][1]["mlp.fc"]["b"], np.float64)  # B^T, (r, fan_out)
  w = np.asarray(base["blocks"][1]["mlp"]["fc"]["kernel"], np.float64)
  np.testing.assert_allclose(merged["blocks"][1]["mlp"]["fc"]["kernel"],
                             w + LCFG.alpha / LCFG.rank * a @ b_t, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_equal(merged["embed"], base["embed"])
  chex.assert_trees_all_equal(merged["blocks"][1]["attn_norm"], base["blocks"][1]["attn_norm"])
  # Zero B: the merged model is the base model.
  fresh = lora.init_adapters(base, LCFG, jax.random.key(2))
  chex.assert_trees_all_equal(lora.merge(base, fresh, LCFG), base)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["adamw", "muon", "shampoo"])
def test_finetuning_lowers_the_new_texts_loss_and_leaves_the_base_alone(base, name):
  hparams = train_state.registry_hparams(configs_util.load(
      f"configs/speedrun_cpu{'' if name == 'adamw' else '_' + name}.py").optimizer)
  hparams["learning_rate"] = 3e-2 if name == "muon" else 1e-2
  if name == "shampoo":
    hparams.update(start_preconditioning_step=3, precondition_every=3)
  tx = optimizers.create(name, **hparams)
  frozen = jax.tree.map(np.array, base)
  adapters = lora.init_adapters(base, LCFG, jax.random.key(2))
  state = tx.init(adapters)
  # Optimizer state exists only for the adapters: no leaf has a base-only shape, and its size
  # matches the same optimizer on the adapters alone.
  assert (sum(x.size for x in jax.tree.leaves(state)) ==
          sum(x.size for x in jax.tree.leaves(tx.init(jax.tree.map(jnp.zeros_like, adapters)))))
  base_shapes = {x.shape for x in jax.tree.leaves(base)} - {
      x.shape for x in jax.tree.leaves(adapters)}
  assert not base_shapes & {x.shape for x in jax.tree.leaves(state)}

  loss = lambda ad, b: gpt.loss_fn(CFG, lora.apply_lora(base, ad, LCFG), b)

  @jax.jit
  def step(ad, s, b):
    l, g = jax.value_and_grad(loss)(ad, b)
    u, s = tx.update(g, s, ad)
    return optax.apply_updates(ad, u), s, l

  held_out, *batches = _text_batches(13)
  before = float(loss(adapters, held_out))
  for b in batches:
    adapters, state, _ = step(adapters, state, b)
  after = float(loss(adapters, held_out))
  assert after < before - 0.1, (before, after)
  chex.assert_trees_all_equal(base, frozen)  # bitwise
  merged_loss = float(gpt.loss_fn(CFG, lora.merge(base, adapters, LCFG), held_out))
  assert abs(merged_loss - after) < 1e-4


def test_config_and_errors():
  cfg = configs_util.load("configs/lora_cpu.py")
  lc = lora.LoRAConfig.from_config(cfg.lora)
  assert lc.rank == cfg.lora.rank and set(lc.targets) <= set(lora.TARGETS)
  with pytest.raises(ValueError, match="unknown"):
    lora.LoRAConfig(targets=("attn.o",))


# ---------------------------------------------------------------------------------------------
# Through the trainer: configs/lora_cpu.py on a tiny base run's checkpoint.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"model.num_layers": 2, "model.width": 32, "model.num_heads": 2, "model.max_seq_len": 32,
        "data.seq_len": 32, "train.batch_size": 8, "train.eval_batches": 2, "train.log_every": 5,
        "schedule.warmup_steps": 2, "mesh.data": 1, "schedule.base_batch_size": 8}
LORA_TINY = dict(TINY, **{"lora.rank": 2, "lora.targets": "attn.q,attn.v,mlp.fc",
                          "train.steps": 24, "train.eval_every": 12,
                          "train.checkpoint_every": 12})


def _restore(workdir):
  with ocp.CheckpointManager(os.path.join(workdir, "checkpoints")) as mgr:
    step = mgr.latest_step()
    return step, mgr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))["state"]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
  """A 20-step tiny speedrun (stdlib .py sources): the base the adapters fine-tune."""
  root = tmp_path_factory.mktemp("lora")
  cfg = configs_util.load("configs/speedrun_cpu.py", dict(
      TINY, **{"train.steps": 20, "train.eval_every": 0, "train.checkpoint_every": 20,
               "data.cache_dir": str(root / "corpus")}))
  trainer.train_and_evaluate(cfg, str(root / "base"))
  return root


def _lora_config(root, **overrides):
  values = dict(LORA_TINY, **{"lora.base_workdir": str(root / "base"),
                              "data.cache_dir": str(root / "corpus")})
  values.update({k.replace("__", "."): v for k, v in overrides.items()})
  return configs_util.load("configs/lora_cpu.py", values)


@pytest.fixture(scope="module")
def lora_run(base_run):
  _, base_before = _restore(base_run / "base")
  summary = trainer.train_and_evaluate(_lora_config(base_run), str(base_run / "lora"))
  return base_run, summary, base_before["params"]


@pytest.mark.slow
def test_trainer_finetunes_only_the_adapters_and_beats_the_base(lora_run):
  root, summary, base_before = lora_run
  run = json.load(open(root / "lora" / "run.json"))
  assert run["corpus"]["source"] == "stdlib_docs"
  # Trainable parameters: rank 2 on q, v (32 -> 32) and fc (32 -> 128) in each of 2 blocks.
  assert run["num_params"] == 2 * 2 * ((32 + 32) + (32 + 32) + (32 + 128)) == 1152
  step, state = _restore(root / "lora")
  assert step == 24
  assert sum(x.size for x in jax.tree.leaves(state["params"])) == 1152
  assert set(state["params"]["blocks"]["0"]) == {"attn.q", "attn.v", "mlp.fc"}
  # AdamW's state: mu and nu of the adapters, plus step counts; nothing base-sized.
  opt_leaves = jax.tree.leaves(state["opt_state"])
  assert sum(x.size for x in opt_leaves if x.ndim) == 2 * 1152
  adapter_shapes = {x.shape for x in jax.tree.leaves(state["params"])}
  assert {x.shape for x in opt_leaves if x.ndim} == adapter_shapes
  # Base weights bitwise unchanged, and they are what the fine-tuned model was evaluated with:
  # the merged model's validation loss is the run's last logged one.
  _, base_after = _restore(root / "base")
  chex.assert_trees_all_equal(base_after["params"], base_before)
  val = [r["val_loss"] for r in metrics_lib.read_metrics(str(root / "lora")) if "val_loss" in r]
  assert len(val) == 3 and val[-1] == summary["val_loss"]
  cfg = _lora_config(root)
  merged = lora.merge(base_before, state["params"], lora.LoRAConfig.from_config(cfg.lora))
  model_cfg = gpt.GPTConfig.from_config(cfg.model)
  w = workloads.build(cfg, str(root / "lora"))
  merged_val = np.mean([float(gpt.loss_fn(model_cfg, merged, b)) for b in w.eval_batches()])
  assert abs(merged_val - val[-1]) < 1e-4
  # Step 0 is the base model on the new corpus (B = 0); fine-tuning beats it.
  assert val[-1] < val[0] - 0.1, val


@pytest.mark.slow
def test_a_stopped_and_resumed_lora_run_ends_bitwise_where_a_straight_one_does(lora_run):
  root = lora_run[0]
  flags = [f"--config.{k}={v}" for k, v in LORA_TINY.items()] + [
      f"--config.lora.base_workdir={root / 'base'}", f"--config.data.cache_dir={root / 'corpus'}"]
  cmd = [sys.executable, "-m", "experiments.train", "--config=configs/lora_cpu.py",
         f"--workdir={root / 'resumed'}", *flags]
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  for extra in (["--config.train.stop_at_step=12"], []):
    out = subprocess.run(cmd + extra, cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
  assert "Resumed from checkpoint step 12" in out.stdout + out.stderr
  step_a, a = _restore(root / "lora")  # the straight run of the fixture
  step_b, b = _restore(root / "resumed")
  assert step_a == step_b == 24
  chex.assert_trees_all_equal(a, b)


def test_missing_or_mismatched_base_is_a_config_error(base_run, tmp_path):
  with pytest.raises(validate.ConfigError, match="lora.base_workdir is not set"):
    trainer.train_and_evaluate(_lora_config(base_run, lora__base_workdir=None), str(tmp_path))
  with pytest.raises(validate.ConfigError, match="not a training run's workdir"):
    trainer.train_and_evaluate(_lora_config(base_run, lora__base_workdir=str(tmp_path / "no")),
                               str(tmp_path / "a"))
  with pytest.raises(validate.ConfigError, match="model.width: base 32, config 64"):
    trainer.train_and_evaluate(_lora_config(base_run, model__width=64), str(tmp_path / "b"))
  with pytest.raises(validate.ConfigError, match="unknown"):
    trainer.train_and_evaluate(_lora_config(base_run, lora__targets="attn.o"),
                               str(tmp_path / "c"))
  assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")


def test_frozen_arguments_get_no_update_under_donation(base):
  """The trainer's step with a frozen argument: the state is donated, the base is not."""
  tx = optax.adam(1e-2)
  adapters = lora.init_adapters(base, LCFG, jax.random.key(2))
  loss = lambda ad, b, frozen: gpt.loss_fn(CFG, lora.apply_lora(frozen, ad, LCFG), b)
  step = jax.jit(step_lib.make_train_step(loss, tx, lambda _: 0.0), donate_argnums=(0,))
  state = train_state.make_init_state(lambda _: adapters, tx)(0)
  frozen = jax.tree.map(np.array, base)
  batches = _text_batches(4)
  before = float(loss(adapters, batches[-1], base))  # the adapters are donated below
  for b in batches:
    state, metrics = step(state, b[None], base)
  chex.assert_trees_all_equal(base, frozen)
  assert jax.tree.structure(state["opt_state"]) == jax.tree.structure(tx.init(adapters))
  assert float(metrics["train_loss"]) < before


def test_pmap_fine_tunes_with_the_frozen_base_like_one_device(lora_run, tmp_path):
  # Frozen inputs (the base weights) reach pmap's step too, replicated on every device: its
  # first 4 steps over 8 devices give the one-device fixture run's losses (reduction order).
  root = lora_run[0]
  cfg = _lora_config(root, parallelism="pmap", mesh__data=8, train__stop_at_step=4)
  trainer.train_and_evaluate(cfg, str(tmp_path / "pmap"))
  loss = lambda w: [r["train_loss"] for r in metrics_lib.read_metrics(str(w)) if "train_loss" in r]
  assert len(loss(tmp_path / "pmap")) == 4
  np.testing.assert_allclose(loss(tmp_path / "pmap"), loss(root / "lora")[:4], rtol=1e-5)
