"""Activation checkpointing: named policies change memory, never values."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import pytest

from experiments.parallel import memory
from models import gpt

CFG = gpt.GPTConfig(vocab_size=64, num_layers=3, width=32, num_heads=4, max_seq_len=16)
ORDER = ("none", "dots_saveable", "block")  # each keeps no more than the one before


@pytest.fixture(scope="module")
def setup():
  params = gpt.init_params(CFG, jax.random.key(0))
  # Perturb the zero-initialized projections so every block's gradient is nonzero.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(k, x.shape)
                                     for x, k in zip(leaves, keys)])
  tokens = jax.random.randint(jax.random.key(2), (8, 17), 0, 64)
  return params, tokens


def _cfg(policy):
  return dataclasses.replace(CFG, remat=policy)


@pytest.mark.parametrize("policy", ["block", "dots_saveable", "offload_dots", True])
def test_policies_give_the_same_loss_and_gradients(setup, policy):
  params, tokens = setup
  f = lambda c: jax.jit(jax.value_and_grad(lambda p: gpt.loss_fn(c, p, tokens)))(params)
  ref, got = f(_cfg("none")), f(_cfg(policy))
  chex.assert_trees_all_close(ref, got, rtol=1e-5, atol=1e-6)
  assert float(jnp.abs(got[1]["blocks"][0]["attn"]["q"]["kernel"]).max()) > 0


def test_saved_activations_fall_with_each_policy(setup):
  params, tokens = setup
  saved = {p: memory.saved_activation_bytes(lambda q, t, c=_cfg(p): gpt.loss_fn(c, q, t),
                                            params, tokens) for p in ORDER + ("offload_dots",)}
  device = [saved[p]["device"] for p in ORDER]
  assert device[0] > device[1] > device[2] > 0, saved
  # offload_dots keeps the non-batched products on the host: device bytes as "block"'s.
  assert saved["offload_dots"]["host"] > 0
  assert saved["offload_dots"]["device"] <= saved["dots_saveable"]["device"]


def test_old_boolean_configs_and_unknown_names():
  assert _cfg(True).remat_policy == "block" and _cfg(False).remat_policy == "none"
  with pytest.raises(ValueError, match="choose from"):
    _cfg("everything")
