"""8-bit AdamW: the code tables, the per-block round-trip bound, parity with float64 AdamW on
the dequantized state, bytes per parameter, checkpointing."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import optimizers
from optimizers import quantized

BLOCK = 256


def _decode_byte(byte: int, signed: bool) -> float:
  """The paper's dynamic tree code read bit by bit: [sign] zeros=exponent, 1, fraction."""
  bits = 7 if signed else 8
  sign = -1.0 if signed and byte >> 7 else 1.0
  rest = byte & ((1 << bits) - 1)
  if rest == 0:
    return 0.0
  e = bits - rest.bit_length()  # leading zeros
  f = bits - 1 - e
  k = rest & ((1 << f) - 1)
  return sign * 10.0 ** -e * (0.1 + 0.9 * (k + 1) / 2 ** f)


@pytest.mark.parametrize("signed", [True, False])
def test_code_table_is_the_dynamic_tree_code(signed):
  expected = np.sort([_decode_byte(b, signed) for b in range(256)]).astype(np.float32)
  table = quantized.SIGNED_CODE if signed else quantized.UNSIGNED_CODE
  chex.assert_trees_all_equal(table, expected)
  assert table[-1] == 1.0 and np.min(np.abs(table[table != 0])) == np.float32(
      1e-6 if signed else 1e-7)
  assert np.all(np.diff(table) >= 0)


def _bracket_bound(x, code, keep_nonzero):
  """Per element: |x - deq(q(x))| may not exceed this (float64), for blocks of BLOCK."""
  flat = np.asarray(x, np.float64).ravel()
  pad = -flat.size % BLOCK
  blocks = np.pad(flat, (0, pad)).reshape(-1, BLOCK)
  absmax = np.abs(blocks).max(axis=1, keepdims=True)
  xn = blocks / np.where(absmax > 0, absmax, 1)
  code = np.asarray(code, np.float64)
  hi_i = np.clip(np.searchsorted(code, xn), 0, len(code) - 1)
  lo_i = np.clip(hi_i - 1, 0, len(code) - 1)
  half_gap = np.where(code[hi_i] == xn, 0.0, (code[hi_i] - code[lo_i]) / 2)
  if keep_nonzero:  # values under the smallest non-zero code round up to it
    smallest = code[code > 0].min()
    half_gap = np.where((xn > 0) & (xn < smallest), smallest, half_gap)
  # float32 rounding of x / absmax and of code * absmax: a few ulps of absmax.
  bound = absmax * (half_gap + 4 * np.finfo(np.float32).eps)
  return bound.ravel()[:flat.size].reshape(np.shape(x))


def _random_moments(rng, shape, signed):
  """Values spread over ~8 decades (as moments are), some blocks all zero."""
  x = np.exp(rng.uniform(-18, 0, size=shape)) * (rng.choice([-1, 1], size=shape)
                                                  if signed else 1)
  x.reshape(-1)[:BLOCK] = 0.0  # first block all zeros
  return x.astype(np.float32)


@pytest.mark.parametrize("shape", [(4096,), (5000,), (3, 7, 300)])
@pytest.mark.parametrize("signed", [True, False])
def test_round_trip_error_bounded_per_block(shape, signed):
  rng = np.random.default_rng(1)
  x = _random_moments(rng, shape, signed)
  code = quantized.SIGNED_CODE if signed else quantized.UNSIGNED_CODE
  keep_nonzero = not signed

  @jax.jit
  def round_trip(x):
    q = quantized.quantize(x, signed, BLOCK, keep_nonzero=keep_nonzero)
    return q, quantized.dequantize(q, signed, BLOCK, x.shape)

  q, back = round_trip(jnp.asarray(x))
  chex.assert_shape(q.codes, (x.size,))
  chex.assert_shape(q.scales, (math.ceil(x.size / BLOCK),))
  assert q.codes.dtype == jnp.uint8 and q.scales.dtype == jnp.float32
  err = np.abs(np.asarray(back, np.float64) - x)
  bound = _bracket_bound(x, code, keep_nonzero)
  assert np.all(err <= bound), float(np.max(err - bound))
  # The looser, per-block form: half the widest gap of the code times the block's absmax.
  blocks = np.pad(np.abs(x).ravel(), (0, -x.size % BLOCK)).reshape(-1, BLOCK)
  block_err = np.pad(err.ravel(), (0, -x.size % BLOCK)).reshape(-1, BLOCK).max(axis=1)
  max_half_gap = np.max(np.diff(code.astype(np.float64))) / 2
  assert np.all(block_err <= blocks.max(axis=1) * (max_half_gap + 1e-6))
  assert np.all(np.asarray(back).ravel()[:BLOCK] == 0)  # the all-zero block stays zero
  if not signed:  # small values survive
    assert np.all(np.asarray(back)[x > 0] > 0)


@pytest.mark.parametrize("signed", [True, False])
def test_code_index_is_the_nearest_code(signed):
  """The search-free index against a brute-force nearest value (ties may go either way)."""
  code = (quantized.SIGNED_CODE if signed else quantized.UNSIGNED_CODE).astype(np.float64)
  rng = np.random.default_rng(2)
  mids = (code[1:] + code[:-1]) / 2
  x = np.concatenate([  # every code, every midpoint's neighbours, and random magnitudes
      code, np.nextafter(mids.astype(np.float32), 2), np.nextafter(mids.astype(np.float32), -2),
      np.exp(rng.uniform(-20, 0, 20000)) * (rng.choice([-1, 1], 20000) if signed else 1)])
  x = np.clip(x, -1 if signed else 0, 1).astype(np.float32)
  index = np.asarray(jax.jit(quantized._nearest_index, static_argnums=1)(x, signed))
  dist = np.abs(code[None, :] - x.astype(np.float64)[:, None])
  chex.assert_trees_all_equal(dist[np.arange(x.size), index], dist.min(axis=1))


def _dequantize_np(state_leaf, code, shape):
  """float64 dequantization written from the format: code[index] * absmax of the block."""
  if not isinstance(state_leaf, quantized.QuantizedArray):
    return np.asarray(state_leaf, np.float64)
  values = np.asarray(code, np.float64)[np.asarray(state_leaf.codes)]
  values = np.pad(values, (0, -values.size % BLOCK)).reshape(-1, BLOCK)
  values = values * np.asarray(state_leaf.scales, np.float64)[:, None]
  return values.ravel()[:math.prod(shape)].reshape(shape)


SHAPES = {"scalar": (), "vector": (5,), "matrix": (4, 6), "big_matrix": (70, 75),
          "big_tensor": (4, 16, 80)}
QUANTIZED = {"big_matrix", "big_tensor"}


def test_step_is_float64_adamw_on_the_dequantized_state():
  """Each of 20 steps: the update is AdamW's from the stored (dequantized) moments, to 1e-5,
  and the newly stored moments are AdamW's new moments within the round-trip bound."""
  lr, b1, b2, eps, wd = 0.01, 0.9, 0.999, 1e-8, 0.1
  tx = optimizers.create("adamw_8bit", learning_rate=lr, b1=b1, b2=b2, eps=eps,
                         weight_decay=wd)
  rng = np.random.default_rng(0)
  params = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
  state = tx.init(params)
  adam_state = state[0]
  assert {k for k, v in adam_state.mu.items()
          if isinstance(v, quantized.QuantizedArray)} == QUANTIZED
  step = jax.jit(tx.update)
  for t in range(1, 21):
    grads = {k: (rng.normal(size=s) * rng.uniform(0.01, 1, size=s)).astype(np.float32)
             for k, s in SHAPES.items()}
    mu_prev, nu_prev = state[0].mu, state[0].nu
    updates, state = step(grads, state, params)
    for k, s in SHAPES.items():
      g, p = grads[k].astype(np.float64), np.asarray(params[k], np.float64)
      m = b1 * _dequantize_np(mu_prev[k], quantized.SIGNED_CODE, s) + (1 - b1) * g
      v = b2 * _dequantize_np(nu_prev[k], quantized.UNSIGNED_CODE, s) + (1 - b2) * g * g
      expected = -lr * ((m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps) + wd * p)
      chex.assert_trees_all_close(updates[k], expected, rtol=1e-5, atol=1e-6 * lr)
      new_m = _dequantize_np(state[0].mu[k], quantized.SIGNED_CODE, s)
      new_v = _dequantize_np(state[0].nu[k], quantized.UNSIGNED_CODE, s)
      if k in QUANTIZED:
        assert np.all(np.abs(new_m - m) <= _bracket_bound(m, quantized.SIGNED_CODE, False))
        assert np.all(np.abs(new_v - v) <= _bracket_bound(v, quantized.UNSIGNED_CODE, True))
      else:
        chex.assert_trees_all_close((new_m, new_v), (m, v), rtol=1e-5, atol=1e-12)
    params = optax.apply_updates(params, updates)
  chex.assert_tree_all_finite(params)


def test_tracks_float32_adamw_on_least_squares():
  """300 steps on a noisy least-squares problem: 8-bit AdamW's loss stays within 2% of AdamW's."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(256, 64)), jnp.float32)
  w_true = rng.normal(size=(64, 96))
  y = jnp.asarray(x @ w_true + 0.1 * rng.normal(size=(256, 96)), jnp.float32)
  loss = lambda w: jnp.mean((x @ w["w"] - y) ** 2)

  def train(name):
    tx = optimizers.create(name, learning_rate=optax.cosine_decay_schedule(0.05, 300),
                           weight_decay=0.0)
    w = {"w": jnp.zeros((64, 96), jnp.float32)}

    def body(carry, _):
      w, s = carry
      u, s = tx.update(jax.grad(loss)(w), s, w)
      return (optax.apply_updates(w, u), s), None

    (w, _), _ = jax.lax.scan(body, (w, tx.init(w)), None, length=300)
    return float(loss(w))

  reference, eight_bit = train("adamw"), train("adamw_8bit")
  noise_floor = 0.1 ** 2  # E[(0.1 * noise)^2]
  assert reference < 3 * noise_floor
  assert abs(eight_bit - reference) <= 0.02 * reference, (eight_bit, reference)


SPEEDRUN_MATRICES = {"embed": (256, 128), "q": (128, 128), "fc": (128, 512),
                     "proj": (512, 128), "lm_head": (128, 256)}


def test_bytes_per_parameter():
  tx = optimizers.create("adamw_8bit", learning_rate=1e-3)
  abstract = {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in SPEEDRUN_MATRICES.items()}
  abstract["norm"] = jax.ShapeDtypeStruct((128,), jnp.float32)
  state = jax.eval_shape(tx.init, abstract)[0]
  for k, s in SPEEDRUN_MATRICES.items():
    nbytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves((state.mu[k], state.nu[k])))
    assert nbytes / math.prod(s) == 2 + 8 / BLOCK  # 2.03125 <= 2.1
  norm_bytes = sum(x.size * x.dtype.itemsize
                   for x in jax.tree.leaves((state.mu["norm"], state.nu["norm"])))
  assert norm_bytes / 128 == 8  # small leaves keep float32 moments


def test_jit_dtypes_abstract_init_and_checkpoint(tmp_path):
  params = {"scalar": jnp.ones((), jnp.bfloat16), "vector": jnp.ones((7,), jnp.float32),
            "matrix": jnp.ones((80, 70), jnp.bfloat16), "tensor": jnp.ones((4, 16, 80))}
  tx = optimizers.create("adamw_8bit", learning_rate=0.1)
  state = tx.init(params)
  abstract = jax.eval_shape(tx.init, jax.tree.map(
      lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params))
  chex.assert_trees_all_equal_shapes_and_dtypes(abstract, state)
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.25), params)
  step = jax.jit(tx.update)
  for _ in range(3):
    updates, state = step(grads, state, params)
  chex.assert_trees_all_equal_shapes_and_dtypes(updates, grads)
  chex.assert_trees_all_equal_shapes_and_dtypes(state, abstract)
  assert {x.dtype for x in jax.tree.leaves(state[0].mu["matrix"])} == {
      jnp.dtype(jnp.uint8), jnp.dtype(jnp.float32)}

  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "state", state)
  checkpointer.wait_until_finished()
  restored = checkpointer.restore(tmp_path / "state", abstract)
  chex.assert_trees_all_equal(restored, state)
  chex.assert_trees_all_equal_shapes_and_dtypes(restored, state)
