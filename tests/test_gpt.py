"""The GPT model: causality, shapes, options."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import gpt

CFG = gpt.GPTConfig(vocab_size=64, num_layers=2, width=32, num_heads=4, max_seq_len=16)


@pytest.fixture(scope="module")
def params():
  return gpt.init_params(CFG, jax.random.key(0))


def test_params_are_a_plain_dict_with_zero_init_projections(params):
  assert isinstance(params, dict)
  chex.assert_shape(params["embed"]["embedding"], (64, 32))
  chex.assert_shape(params["lm_head"]["kernel"], (32, 64))
  chex.assert_shape(params["blocks"][0]["mlp"]["fc"]["kernel"], (32, 128))
  for blk in params["blocks"].values():
    assert not np.any(blk["attn"]["proj"]["kernel"])
    assert not np.any(blk["mlp"]["proj"]["kernel"])
    assert np.any(blk["attn"]["q"]["kernel"])
  assert gpt.num_params(params) == 64 * 32 * 2 + 2 * (4 * 32 * 32 + 2 * 32 * 128 + 2 * 32) + 32


def test_model_is_causal(params):
  # Projections start at zero, which would hide any leak through attention: perturb them.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape)
                                     for x, k in zip(leaves, keys)])
  tokens = jax.random.randint(jax.random.key(2), (2, 16), 0, 64)
  apply = jax.jit(lambda p, t: gpt.apply(CFG, p, t))
  logits = apply(params, tokens)
  chex.assert_shape(logits, (2, 16, 64))
  for t in (3, 9, 15):
    changed = tokens.at[:, t].set((tokens[:, t] + 1) % 64)
    other = apply(params, changed)
    chex.assert_trees_all_equal(other[:, :t], logits[:, :t])
    assert not np.allclose(other[:, t], logits[:, t])


def test_loss_starts_near_uniform(params):
  tokens = jax.random.randint(jax.random.key(3), (4, 17), 0, 64)
  loss = gpt.loss_fn(CFG, params, tokens)
  assert abs(float(loss) - np.log(64)) < 1.0


def test_remat_does_not_change_values_or_grads(params):
  tokens = jax.random.randint(jax.random.key(4), (2, 17), 0, 64)
  remat = dataclasses.replace(CFG, remat=True)
  f = lambda c: jax.jit(jax.value_and_grad(lambda p: gpt.loss_fn(c, p, tokens)))(params)
  chex.assert_trees_all_close(f(CFG), f(remat), rtol=1e-6, atol=1e-7)


def test_logit_softcap_bounds_logits(params):
  capped = dataclasses.replace(CFG, logit_softcap=0.5)
  tokens = jax.random.randint(jax.random.key(5), (2, 16), 0, 64)
  logits = gpt.apply(capped, params, tokens)
  assert float(jnp.max(jnp.abs(logits))) <= 0.5


def test_config_errors():
  with pytest.raises(ValueError, match="not divisible"):
    gpt.GPTConfig(width=30, num_heads=4)
  with pytest.raises(ValueError, match="Unknown model config keys"):
    gpt.GPTConfig.from_config({"widht": 3})
