"""Mixed precision: bfloat16 compute, float32 master weights, states, logits and loss."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.parallel import memory
from models import gpt
import optimizers

CFG = gpt.GPTConfig(vocab_size=64, num_layers=2, width=32, num_heads=4, max_seq_len=16,
                    dtype=memory.model_dtype("bf16"))


def _train(cfg, tx, steps=4):
  params = gpt.init_params(cfg, jax.random.key(0))
  state = tx.init(params)
  tokens = jax.random.randint(jax.random.key(1), (steps, 8, 17), 0, 64)

  @jax.jit
  def step(params, state, batch):
    loss, grads = jax.value_and_grad(lambda p: gpt.loss_fn(cfg, p, batch))(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss, grads

  losses = []
  for b in tokens:
    params, state, loss, grads = step(params, state, b)
    losses.append(float(loss))
  return params, state, losses, grads


def _float_dtypes(tree):
  return {str(x.dtype) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)}


@pytest.mark.slow
def test_bf16_compute_keeps_float32_master_weights_and_states():
  tx = optimizers.create("adamw", learning_rate=1e-2, b2=0.95)
  params, state, losses, grads = _train(CFG, tx)
  assert _float_dtypes(params) == {"float32"}
  assert _float_dtypes(grads) == {"float32"}
  assert _float_dtypes(state) == {"float32"}
  assert all(np.isfinite(losses)) and losses[-1] < losses[0]
  tokens = jnp.zeros((2, 16), jnp.int32)
  assert gpt.apply(CFG, params, tokens).dtype == jnp.float32  # logits, hence the loss
  # The compute really is bfloat16: the block outputs differ from a float32 forward.
  f32 = dataclasses.replace(CFG, dtype="float32")
  tokens = jax.random.randint(jax.random.key(3), (2, 16), 0, 64)
  diff = jnp.abs(gpt.apply(CFG, params, tokens) - gpt.apply(f32, params, tokens)).max()
  assert 0 < float(diff) < 0.5


def test_bf16_first_moment_with_mu_dtype():
  tx = optimizers.create("adamw", learning_rate=1e-2, b2=0.95, mu_dtype="bfloat16")
  _, state, losses, _ = _train(CFG, tx)
  adam = state[0][0]  # (adamw chain state, nonfinite guard state); the chain starts with Adam
  assert _float_dtypes(adam.mu) == {"bfloat16"}
  assert _float_dtypes(adam.nu) == {"float32"}
  assert memory.tree_bytes(adam.mu) * 2 == memory.tree_bytes(adam.nu)
  assert losses[-1] < losses[0]


def test_unknown_precision():
  with pytest.raises(ValueError, match="choose from"):
    memory.model_dtype("fp8")
