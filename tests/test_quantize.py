"""Weight quantization: scales from the formula, the s/2 error bound per channel and per block."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import gpt
from models import quantize

# float32 evaluation of x / s and (q - z) * s adds a few ulps of |x| beyond the exact s/2.
ULPS = 4 * 2.0 ** -24


def _weights(shape=(96, 40), seed=0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal(shape) * rng.uniform(0.01, 3.0, shape[-1]) + rng.normal(0, 1, shape[-1])
  return x.astype(np.float32)


def _reference(groups, bits):
  """float64 NumPy affine quantization of each row of `groups`."""
  g = groups.astype(np.float64)
  lo, hi = g.min(1, keepdims=True), g.max(1, keepdims=True)
  s = (hi - lo) / (2 ** bits - 1)
  z = np.round(-lo / s)
  return s, z


def test_int8_per_channel_scales_and_error_bound():
  x = _weights()
  t = quantize.quantize_int8(jnp.asarray(x))
  assert t.q.dtype == jnp.uint8 and t.scale.shape == (1, 40)
  s, z = _reference(x.T, 8)
  np.testing.assert_allclose(np.asarray(t.scale)[0], s[:, 0], rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(t.zero_point)[0], z[:, 0])
  err = np.abs(x.astype(np.float64) - np.asarray(quantize.dequantize(t), np.float64))
  bound = np.asarray(t.scale, np.float64) / 2 + ULPS * np.abs(x).max(0, keepdims=True)
  assert np.all(err <= bound)
  assert np.all(err.max(0) > 0.25 * np.asarray(t.scale)[0])  # the bound is nearly reached
  assert int(t.q.min()) == 0 and int(t.q.max()) == 255


def test_4bit_blockwise_error_bound_per_block_with_padding():
  x = _weights((50, 30), seed=1)  # 1500 values: 23 full blocks of 64 and one padded
  t = quantize.quantize_4bit(jnp.asarray(x), block_size=64)
  assert t.q.shape == (24, 64) and int(t.q.max()) <= 15
  flat = np.concatenate([x.reshape(-1), np.full(36, x.reshape(-1)[-1])]).reshape(24, 64)
  s, z = _reference(flat, 4)
  np.testing.assert_allclose(np.asarray(t.scale), s, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(t.zero_point), z)
  deq = np.asarray(quantize.dequantize(t), np.float64)
  assert deq.shape == x.shape
  err = np.abs(x.astype(np.float64) - deq).reshape(-1)
  err = np.concatenate([err, np.zeros(36)]).reshape(24, 64)
  assert np.all(err <= np.asarray(t.scale) / 2 + ULPS * np.abs(flat).max(1, keepdims=True))


def test_constant_channel_is_exact():
  x = jnp.ones((8, 3)).at[:, 1].set(-2.5)
  np.testing.assert_array_equal(quantize.dequantize(quantize.quantize_int8(x)), x)


@pytest.mark.slow
def test_quantized_gpt_params_stay_close_and_shrink():
  cfg = gpt.GPTConfig(vocab_size=64, num_layers=2, width=32, num_heads=4, max_seq_len=16)
  params = gpt.init_params(cfg, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (4, 17), 0, 64)
  loss = jax.jit(functools.partial(gpt.loss_fn, cfg))  # one compilation, not one per op
  ref = float(loss(params, tokens))
  fp32 = quantize.storage_bytes(params)
  for method, ratio in (("int8", 0.32), ("int4", 0.2)):
    qt = quantize.quantize_params(params, method)
    deq = quantize.dequantize_params(qt)
    assert jax.tree.structure(deq) == jax.tree.structure(params)
    assert abs(float(loss(deq, tokens)) - ref) < 0.05
    assert quantize.storage_bytes(qt) < ratio * fp32
  with pytest.raises(ValueError, match="choose"):
    quantize.quantize_params(params, "int3")
