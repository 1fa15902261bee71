"""GPipe over the `stage` mesh axis on 8 fake CPU devices: gradients equal the unpipelined
model's, 10 steps of AdamW, Muon and Shampoo give one device's losses, layers live on their
stage, per-device parameter bytes fall as 1/stage, and the trainer runs a pipelined config."""

import functools
import json
import os

import chex
import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from experiments import configs_util
from experiments.parallel import memory
from experiments.parallel import pipeline
from experiments.parallel import sharding
from experiments.training import loop as trainer
from models import gpt
from tests.test_sharded_training import losses
from tests.test_tensor_parallel import CONFIGS, ROOT, TINY_TP, run_steps, tiny_config

LAYERS = 4  # so that 4 stages hold one layer each
# (mesh, microbatches): the acceptance's (stage 2, data 4) and (stage 4, microbatches 8), and
# tensor parallel inside each stage (model 2 x stage 2 x data 2).
MESHES = {"stage2_data4": (dict(data=4, stage=2), 4), "stage4_data2": (dict(data=2, stage=4), 8),
          "stage2_model2_data2": (dict(data=2, model=2, stage=2), 2)}


def pp_config(name, **kw):
  # mesh.stage > 1 gives Muon one matrix per layer of the stacked kernels (trainer).
  return tiny_config(name, **{"model.num_layers": LAYERS, "mesh.stage": 2, **kw})


def test_bubble_fraction():
  assert pipeline.bubble_fraction(1, 1) == 0.0
  assert pipeline.bubble_fraction(2, 4) == pytest.approx(1 / 5)
  assert pipeline.bubble_fraction(4, 8) == pytest.approx(3 / 11)


@pytest.mark.slow
@pytest.mark.parametrize("mesh_name", sorted(MESHES))
def test_pipelined_gradients_equal_the_unpipelined_models(mesh_name):
  mesh_values, micro = MESHES[mesh_name]
  cfg = gpt.GPTConfig(vocab_size=64, num_layers=LAYERS, width=32, num_heads=4, max_seq_len=16)
  params = gpt.init_params(cfg, jax.random.key(0))
  leaves, tree = jax.tree.flatten(params)  # zero-initialized projections would hide errors
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape)
                                     for x, k in zip(leaves, keys)])
  tokens = jax.random.randint(jax.random.key(2), (16, 17), 0, 64)
  want = jax.jit(jax.value_and_grad(functools.partial(gpt.loss_fn, cfg)))(params, tokens)
  mesh = sharding.make_mesh(ml_collections.ConfigDict(mesh_values))
  stacked = gpt.stack_blocks(params)
  stacked = jax.device_put(stacked, sharding.param_shardings(mesh, stacked, gpt.logical_axes)[0])
  with sharding.context(mesh):
    loss, grads = jax.jit(jax.value_and_grad(functools.partial(
        pipeline.loss_fn, cfg, mesh_values["stage"], micro)))(stacked, tokens)
  # The same products on micro-batches of 16 / m rows instead of 16, and the layer gradients
  # summed in the same order: float32 rounding only (observed ~1e-7 relative).
  np.testing.assert_allclose(loss, want[0], rtol=1e-6)
  chex.assert_trees_all_close(gpt.unstack_blocks(grads), want[1], rtol=1e-5, atol=1e-7)
  want = P("stage", None, "model") if mesh_values.get("model", 1) > 1 else P("stage")
  assert grads["blocks"]["mlp"]["fc"]["kernel"].sharding.spec == want


@functools.lru_cache(maxsize=None)
def one_device(name):
  # The plain (unstacked) model: the trainer gives the optimizer dimension numbers that make
  # the stacked kernels' layer axis a batch (Muon: one matrix per layer; Shampoo: one tensor
  # per layer, blocked as the unstacked layer), so every optimizer is the unstacked model's.
  return run_steps(pp_config(name), dict(data=1))[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_pipeline_meshes_give_the_losses_of_one_device(name):
  ref = one_device(name)
  assert np.all(np.isfinite(ref)) and ref[-1] < ref[0]
  # AdamW on every mesh; Muon and Shampoo (the suite's slowest compiles) on the deepest split
  # (stage 4, 8 micro-batches) and on tensor parallelism inside stages.
  meshes = {k: v for k, v in MESHES.items() if name == "adamw" or k != "stage2_data4"}
  for mesh_name, (mesh_values, micro) in meshes.items():
    got, state = run_steps(pp_config(name), mesh_values, stages=mesh_values["stage"],
                           microbatches=micro)
    # Same math in another order: micro-batched products and stage-split sums (see above),
    # amplified through 10 optimizer steps to a few 1e-6 on the loss.
    np.testing.assert_allclose(got, ref, rtol=2e-5, err_msg=f"{name} {mesh_name}")
    stages = mesh_values["stage"]
    model = mesh_values.get("model", 1)
    blocks = state["params"]["blocks"]
    for x in jax.tree.leaves(blocks):  # stage s holds its layers only
      assert x.sharding.spec[0] == "stage", x.sharding.spec
      assert x.addressable_shards[0].data.shape[0] == LAYERS // stages
    # Inside a stage, Megatron's layouts (tests/test_tensor_parallel.py) when model > 1.
    fc, proj = blocks["mlp"]["fc"]["kernel"], blocks["mlp"]["proj"]["kernel"]
    want_fc, want_proj = ((P("stage", None, "model"), P("stage", "model")) if model > 1
                          else (P("stage"), P("stage")))
    assert (fc.sharding.spec, proj.sharding.spec) == (want_fc, want_proj)
    assert fc.addressable_shards[0].data.shape[2] == fc.shape[2] // model
    vocab = P(("model", "stage")) if model > 1 else P("stage")  # vocab split
    assert state["params"]["embed"]["embedding"].sharding.spec == vocab


def test_param_bytes_per_device_fall_as_one_over_stage():
  cfg = pp_config("adamw")
  model_cfg = gpt.GPTConfig.from_config(cfg.model)
  params = jax.eval_shape(lambda k: gpt.stack_blocks(gpt.init_params(model_cfg, k)),
                          jax.random.key(0))
  nbytes = lambda tree: sum(x.size * 4 for x in jax.tree.leaves(tree))
  # Layers split by stage, embedding and head by vocabulary; the final norm's scale stays whole.
  total, norm = nbytes(params), nbytes(params["final_norm"])
  for stage in (1, 2, 4):
    mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=1, stage=stage)),
                              jax.devices()[:stage])
    sh, _ = sharding.param_shardings(mesh, params, gpt.logical_axes)
    assert memory.tree_bytes_per_device(params, sh) == (total - norm) // stage + norm


@pytest.mark.slow
def test_trainer_runs_a_pipelined_config_like_one_device(tmp_path):
  common = dict(TINY_TP, **{"model.num_layers": LAYERS, "data.cache_dir": str(tmp_path / "c"),
                            "train.steps": 3, "train.eval_every": 3, "train.log_every": 1,
                            "train.checkpoint_every": 3, "train.eval_batches": 1})
  load = lambda **kw: configs_util.load(os.path.join(ROOT, "configs", CONFIGS["muon"]),
                                        dict(common, **kw))
  trainer.train_and_evaluate(load(), str(tmp_path / "one"))
  trainer.train_and_evaluate(load(**{"mesh.data": 2, "mesh.model": 2, "mesh.stage": 2,
                                     "train.microbatches": 2}), str(tmp_path / "pp"))
  assert json.load(open(tmp_path / "pp" / "run.json"))["mesh"] == {"data": 2, "fsdp": 1,
                                                                    "model": 2, "stage": 2}
  a, b = losses(tmp_path / "pp"), losses(tmp_path / "one")
  # Muon on stacked kernels (one matrix per layer) is Muon on the separate kernels.
  np.testing.assert_allclose(a[0], b[0], rtol=2e-5)
  np.testing.assert_allclose(a[1], b[1], rtol=2e-5)
