"""Tensor parallelism over the `model` mesh axis (Megatron layouts) on 8 fake CPU devices:
the same losses as one device for AdamW, Muon and Shampoo, the documented parameter shardings,
per-device bytes falling as 1/model, checkpoints moving between (model 2) and (fsdp 2), the
config checks, and Muon's per-head orthogonalization against a float64 NumPy reference."""

import functools
import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import optimizers
from experiments import configs_util
from experiments.parallel import memory
from experiments.parallel import pipeline
from experiments.parallel import sharding
from experiments.training import loop as trainer
from experiments.training import step as step_lib
from experiments.training import train_state
from experiments.training import validate
from models import gpt
from tests.test_muon import _np_orthogonalize
from tests.test_sharded_training import assert_same_run
from tests.test_sharded_training import losses
from tests.test_train import ROOT

CONFIGS = {"adamw": "speedrun_cpu.py", "muon": "speedrun_cpu_muon.py",
           "shampoo": "speedrun_cpu_shampoo.py"}
# A tiny GPT with 8 heads (so model=8 splits them) on random tokens: 10 steps per run.
TINY_TP = {"model.num_layers": 2, "model.width": 32, "model.num_heads": 8,
           "model.max_seq_len": 16, "data.seq_len": 16, "train.batch_size": 16,
           "schedule.warmup_steps": 3, "schedule.base_batch_size": 16}
STEPS = 10
MESHES = {"model8": dict(data=1, model=8), "data2_model4": dict(data=2, model=4),
          "fsdp2_model2_data2": dict(data=2, fsdp=2, model=2)}


def tiny_config(name, **kw):
  cfg = configs_util.load(os.path.join(ROOT, "configs", CONFIGS[name]), dict(TINY_TP, **kw))
  if name == "shampoo":  # roots inside the 10 steps (Newton roots)
    cfg.optimizer.update(start_preconditioning_step=2, precondition_every=3,
                         root_method="newton", block_size=32)
  return cfg


def batches(cfg, n=STEPS, seed=0):
  rng = np.random.default_rng(seed)
  rows, t = cfg.train.batch_size, cfg.data.seq_len + 1
  return [rng.integers(0, cfg.model.vocab_size, (1, rows, t)).astype(np.int32) for _ in range(n)]


@functools.lru_cache(maxsize=None)
def initial_state(cfg_json, stacked):
  """The initial train state on the host, computed once per config (and layout)."""
  cfg = ml_collections.ConfigDict(json.loads(cfg_json))
  model_cfg = gpt.GPTConfig.from_config(cfg.model)
  init_params = functools.partial(gpt.init_params, model_cfg)
  if stacked:
    init_params = lambda key: gpt.stack_blocks(gpt.init_params(model_cfg, key))
  tx, _ = train_state.make_optimizer(cfg)
  return jax.device_get(jax.jit(train_state.make_init_state(init_params, tx), static_argnums=0)(0))


def run_steps(cfg, mesh_values, stages=None, microbatches=1):
  """(train losses, final state) of STEPS train steps on the mesh, the step jitted once.

  `stages`: None for the plain model; else the blocks are stacked and pipelined over that
  many stages (1: stacked, one device's plain loop).
  """
  model_cfg = gpt.GPTConfig.from_config(cfg.model)
  tx, schedule = train_state.make_optimizer(cfg)
  host_state = initial_state(cfg.to_json(), stages is not None)
  abstract = jax.eval_shape(lambda: host_state)
  mesh = sharding.make_mesh(ml_collections.ConfigDict(mesh_values))
  state_sh = sharding.state_shardings(mesh, abstract, logical_axes=gpt.logical_axes)
  batch_sh = sharding.batch_sharding(mesh, 3, batch_axis=1)
  loss_fn = functools.partial(gpt.loss_fn, model_cfg)
  if stages is not None:
    loss_fn = functools.partial(pipeline.loss_fn, model_cfg, stages, microbatches)
  out = []
  with sharding.context(mesh):
    step = jax.jit(step_lib.make_train_step(loss_fn, tx, schedule),
                   in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, None),
                   donate_argnums=(0,))
    state = jax.device_put(host_state, state_sh)
    for b in batches(cfg):
      state, metrics = step(state, jax.device_put(b, batch_sh))
      out.append(metrics["train_loss"])
  return np.asarray(jax.device_get(out)), state


@functools.lru_cache(maxsize=None)
def one_device(name):
  return run_steps(tiny_config(name), dict(data=1))[0]


# The documented layouts (experiments/parallel/sharding.py): heads, mlp, vocab -> model
# (column-parallel
# q/k/v, fc and head; row-parallel projections; vocab-parallel embedding), then fsdp on the first
# dimension left whole.
EXPECTED = {
    "blocks/0/attn/q/kernel": (P(None, "model"), P("fsdp", "model")),
    "blocks/0/attn/proj/kernel": (P("model"), P("model", "fsdp")),
    "blocks/1/mlp/fc/kernel": (P(None, "model"), P("fsdp", "model")),
    "blocks/1/mlp/proj/kernel": (P("model"), P("model", "fsdp")),
    "embed/embedding": (P("model"), P("model", "fsdp")),
    "lm_head/kernel": (P(None, "model"), P("fsdp", "model")),
    "final_norm/scale": (P(), P("fsdp")),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_tensor_parallel_meshes_give_the_losses_of_one_device(name):
  ref = one_device(name)
  assert np.all(np.isfinite(ref)) and ref[-1] < ref[0]
  # AdamW on every mesh; Muon and Shampoo (the slowest compiles) on the widest split (model 8)
  # and on the mixed one (fsdp 2 x model 2 x data 2).
  meshes = {k: v for k, v in MESHES.items() if name == "adamw" or k != "data2_model4"}
  for mesh_name, mesh_values in meshes.items():
    got, state = run_steps(tiny_config(name), mesh_values)
    # Same math; TP changes only the order of float32 sums (row-parallel products are partial
    # sums all-reduced over `model`, the batch mean is split over data/fsdp): ~1e-7 relative
    # per sum, amplified through 10 optimizer steps to a few 1e-6 on the loss.
    np.testing.assert_allclose(got, ref, rtol=2e-5, err_msg=f"{name} {mesh_name}")
    params = {"/".join(str(getattr(k, "key", k)) for k in p): x
              for p, x in jax.tree_util.tree_flatten_with_path(state["params"])[0]}
    model = mesh_values["model"]
    for path, specs in EXPECTED.items():
      spec = specs["fsdp" in mesh_values]
      assert params[path].sharding.spec == spec, (mesh_name, path, params[path].sharding.spec)
    q = params["blocks/0/attn/q/kernel"]
    assert q.addressable_shards[0].data.shape[1] == q.shape[1] // model  # whole heads: 32/model


def test_param_bytes_per_device_fall_as_one_over_model():
  cfg = tiny_config("adamw")
  params = jax.eval_shape(functools.partial(gpt.init_params, gpt.GPTConfig.from_config(cfg.model)),
                          jax.random.key(0))
  total = sum(x.size * 4 for x in jax.tree.leaves(params))
  norms = sum(x.size * 4 for x in jax.tree.leaves(params) if x.ndim == 1)  # stay replicated
  for model in (1, 2, 4, 8):
    mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=1, model=model)),
                              jax.devices()[:model])
    sh, _ = sharding.param_shardings(mesh, params, gpt.logical_axes)
    assert memory.tree_bytes_per_device(params, sh) == (total - norms) // model + norms


@pytest.mark.slow
def test_checkpoint_moves_from_model2_to_fsdp2_and_training_continues_identically(tmp_path):
  """The user path: `python -m experiments.train --config.mesh.model=2` writes step 3; the run
  continues on (fsdp 2) in process; losses and final parameters match a straight (model 2) run."""
  corpus = str(tmp_path / "corpus")
  common = dict(TINY_TP, **{"data.cache_dir": corpus, "train.steps": 6, "train.eval_every": 3,
                            "train.checkpoint_every": 3, "train.log_every": 1,
                            "train.eval_batches": 1})
  moved, straight = tmp_path / "moved", tmp_path / "straight"
  cmd = [sys.executable, "-m", "experiments.train",
         f"--config={os.path.join(ROOT, 'configs', 'speedrun_cpu_muon.py')}",
         f"--workdir={moved}", *[f"--config.{k}={v}" for k, v in common.items()],
         "--config.mesh.data=1", "--config.mesh.model=2", "--config.train.stop_at_step=3"]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert json.load(open(moved / "run.json"))["mesh"] == {"data": 1, "fsdp": 1, "model": 2}
  load = lambda **kw: configs_util.load(os.path.join(ROOT, "configs", "speedrun_cpu_muon.py"),
                                        dict(common, **kw))
  assert trainer.train_and_evaluate(load(**{"mesh.data": 1, "mesh.fsdp": 2}),
                                    str(moved))["step"] == 6
  trainer.train_and_evaluate(load(**{"mesh.data": 1, "mesh.model": 2}), str(straight))
  assert len(losses(moved)[0]) == len(losses(straight)[0]) == 6
  assert_same_run(moved, straight, 6)


@pytest.mark.parametrize("overrides, match", [
    ({"mesh.model": 3}, "mesh.model=3: must divide model.num_heads=8"),
    ({"mesh.model": 2, "parallelism": "pmap"}, "needs parallelism='jit'"),
    ({"mesh.stage": 3}, "mesh.stage=3: must divide model.num_layers=2"),
    ({"mesh.stage": 2, "train.microbatches": 3}, "train.microbatches=3: must divide the 16"),
])
def test_config_errors_name_the_field(overrides, match):
  with pytest.raises(validate.ConfigError, match=match):
    validate.validate(tiny_config("adamw", **overrides))


# ---- Muon's per-head orthogonalization against float64 NumPy ------------------------------

def test_split_heads_matches_per_head_newton_schulz_in_float64():
  d, heads = 16, 4
  hd = d // heads
  shapes = {"blocks": {0: {"attn": {n: {"kernel": (d, d)} for n in ("q", "k", "v", "proj")},
                           "mlp": {"fc": {"kernel": (d, 2 * d)}}}}}
  leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda x: isinstance(x, tuple))
  keys = jax.random.split(jax.random.key(0), len(leaves))
  grads = jax.tree.unflatten(treedef, [jax.random.normal(k, s) for k, s in zip(keys, leaves)])
  params = jax.tree.map(jnp.zeros_like, grads)
  lr, beta = 0.1, 0.9
  tx = optimizers.create("muon", learning_rate=lr, momentum=beta, nesterov=True,
                         split_heads=True, num_heads=heads)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  coeffs = [(3.4445, -4.7750, 2.0315)] * 5
  ortho = lambda x: _np_orthogonalize(x, coeffs, 1.0, 1e-7)
  blk = lambda tree: {k: np.asarray(v["kernel"], np.float64) for k, v in tree.items()}
  g, u = blk(grads["blocks"][0]["attn"]), blk(updates["blocks"][0]["attn"])
  for name in ("q", "k", "v", "proj"):
    m = (1 - beta) * g[name] * (1 + beta)  # Nesterov from zero momentum: (1-b) g + b (1-b) g
    want = np.zeros_like(m)
    for h in range(heads):
      cols = slice(h * hd, (h + 1) * hd)
      if name == "proj":  # heads are row blocks (hd, d): scale sqrt(max(1, d/hd)) = 2
        want[cols, :] = 2.0 * ortho(m[cols, :])
      else:  # column blocks (d, hd): scale 1
        want[:, cols] = ortho(m[:, cols])
    np.testing.assert_allclose(u[name], -lr * want, rtol=2e-4, atol=2e-6, err_msg=name)
  # The MLP kernel is not an attention matrix: orthogonalized whole, as without split_heads.
  whole = optimizers.create("muon", learning_rate=lr, momentum=beta, nesterov=True)
  ref, _ = jax.jit(whole.update)(grads, whole.init(params), params)
  chex.assert_trees_all_equal(updates["blocks"][0]["mlp"], ref["blocks"][0]["mlp"])
  assert not np.allclose(updates["blocks"][0]["attn"]["q"]["kernel"],
                         ref["blocks"][0]["attn"]["q"]["kernel"], atol=1e-3)


def test_split_heads_needs_num_heads():
  with pytest.raises(ValueError, match="num_heads"):
    optimizers.create("muon", learning_rate=0.1, split_heads=True)
