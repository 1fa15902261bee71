"""experiments/parallel/pmap.py: the pmap step on 8 fake devices against the trainer's jitted step
on one device, for AdamW and SAM (whose second gradient must be averaged too)."""

import functools

import chex
import jax
import numpy as np
import optax
import pytest

from experiments.parallel import pmap as pmap_step
from experiments.training import step as step_lib
from experiments.training import train_state
from models import gpt
import optimizers

STEPS = 5
CFG = gpt.GPTConfig(vocab_size=32, num_layers=1, width=16, num_heads=2, max_seq_len=8)


def make_tx(name):
  schedule = optax.warmup_cosine_decay_schedule(0.0, 1e-2, 2, STEPS)
  if name == "sam":
    tx = optimizers.create("sam", inner="adamw", inner_hparams={"b2": 0.95},
                           learning_rate=schedule, rho=0.05)
  else:
    tx = optimizers.create("adamw", learning_rate=schedule, b2=0.95)
  return optax.with_extra_args_support(tx), schedule


def batches():
  rng = np.random.default_rng(0)
  return [rng.integers(0, CFG.vocab_size, (2, 16, CFG.max_seq_len + 1), dtype=np.int32)
          for _ in range(STEPS)]  # [accum 2, rows 16, T + 1]


def _relative_distance(a, b) -> float:
  a, b = jax.tree.leaves(a), jax.tree.leaves(b)
  diff = sum(np.sum((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2)
             for x, y in zip(a, b))
  return float(np.sqrt(diff / sum(np.sum(np.asarray(y, np.float64) ** 2) for y in b)))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["adamw", "sam"])
def test_pmap_matches_the_jit_step(name):
  """Only the reduction order differs (a mean of 8 device means against one mean over all
  rows): losses agree to 2 float32 ulps (measured: <= 7.2e-7 at ~3.9). Parameters are compared
  as a whole (measured: 1.0e-6 relative): where a gradient element is rounding noise (1e-8 for
  an attention kernel at step 3 here), Adam's m / sqrt(v) turns either path's noise into a
  full-size step of its own sign, so single elements may differ by ~lr / 300."""
  tx, schedule = make_tx(name)
  init = train_state.make_init_state(CFG, tx)
  jit_step = jax.jit(step_lib.make_train_step(functools.partial(gpt.loss_fn, CFG), tx, schedule))
  p_step = step_lib.make_pmap_train_step(functools.partial(gpt.loss_fn, CFG), tx, schedule)
  state_j, state_p = init(0), pmap_step.replicate(init(0))
  for batch in batches():
    state_j, metrics_j = jit_step(state_j, batch)
    state_p, metrics_p = p_step(state_p, pmap_step.shard_batch(batch, jax.local_device_count()))
    assert set(metrics_p) == set(metrics_j)
    np.testing.assert_allclose(metrics_p["train_loss"], metrics_j["train_loss"], rtol=1e-6)
    chex.assert_trees_all_close(metrics_p, metrics_j, rtol=1e-5)
  state_p = pmap_step.unreplicate(state_p)
  assert int(state_p["step"]) == STEPS
  assert _relative_distance(state_p["params"], state_j["params"]) < 1e-5
  assert _relative_distance(state_p["params"], init(0)["params"]) > 1e-2  # it did train


def test_shard_batch_gives_each_device_a_contiguous_block():
  batch = np.arange(2 * 16 * 3).reshape(2, 16, 3)
  out = pmap_step.shard_batch(batch, 8)
  assert out.shape == (8, 2, 2, 3)
  np.testing.assert_array_equal(out[3, 1], batch[1, 6:8])
  with pytest.raises(ValueError, match="do not split"):
    pmap_step.shard_batch(batch, 5)
