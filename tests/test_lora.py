"""LoRA: adapter counts, frozen base weights, fine-tuning on a new text, adapter-only states."""

import os
import sysconfig

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import configs_util
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


@pytest.mark.parametrize("name", ["adamw", "muon", "shampoo"])
def test_finetuning_lowers_the_new_texts_loss_and_leaves_the_base_alone(base, name):
  hparams = configs_util.load(f"configs/speedrun_cpu{'' if name == 'adamw' else '_' + name}.py"
                              ).optimizer.to_dict()
  del hparams["name"]
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
