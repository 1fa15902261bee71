"""Post-training weight quantization: int8 per output channel and 4-bit per block, asymmetric.

Asymmetric (affine) quantization with b bits (Jacob et al. 2018, arXiv 1712.05877, section 2.1):
over a group of values with range [lo, hi], scale s = (hi - lo) / (2^b - 1), zero point
z = round(-lo / s), q = clip(round(x / s) + z, 0, 2^b - 1) and x ~ s (q - z). Every x in the
group lands within s/2 of its reconstruction. Groups: int8 uses one (s, z) per output channel
(column of a (fan_in, fan_out) kernel); the 4-bit variant one per block of `block_size`
consecutive values (QLoRA-style blocks, Dettmers et al. 2023, arXiv 2305.14314, but affine
instead of NF4). Only 2-D weights (kernels, embeddings) are quantized; norm scales stay float32.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class Quantized(NamedTuple):
  q: jax.Array  # uint8 codes (4-bit codes use the low nibble)
  scale: jax.Array  # float32, one per group
  zero_point: jax.Array  # float32 holding integers, one per group
  bits: int
  shape: tuple[int, ...]  # the original shape (blockwise codes are stored flat)


def _affine(x, lo, hi, bits):
  levels = 2 ** bits - 1
  span = hi - lo
  # A constant group gets s = |lo| (z = -sign(lo), q = 0), so it reconstructs exactly.
  scale = jnp.where(span > 0, span / levels, jnp.where(lo != 0, jnp.abs(lo), 1.0))
  zero = jnp.round(-lo / scale)
  q = jnp.clip(jnp.round(x / scale) + zero, 0, levels)
  return q.astype(jnp.uint8), scale, zero


def quantize_int8(x: jax.Array) -> Quantized:
  """Per-channel int8 of a (..., fan_out) weight: one (scale, zero point) per last-axis index."""
  x = x.astype(jnp.float32)
  axes = tuple(range(x.ndim - 1))
  q, s, z = _affine(x, x.min(axis=axes, keepdims=True), x.max(axis=axes, keepdims=True), 8)
  return Quantized(q, s, z, 8, tuple(x.shape))


def quantize_4bit(x: jax.Array, block_size: int = 64) -> Quantized:
  """Blockwise 4-bit: the flattened weight in blocks of `block_size`, each with its own (s, z)."""
  flat = x.astype(jnp.float32).reshape(-1)
  pad = (-flat.size) % block_size
  # Padding repeats the last value so it cannot widen the last block's range.
  blocks = jnp.concatenate([flat, jnp.full((pad,), flat[-1])]).reshape(-1, block_size)
  q, s, z = _affine(blocks, blocks.min(axis=1, keepdims=True),
                    blocks.max(axis=1, keepdims=True), 4)
  return Quantized(q, s, z, 4, tuple(x.shape))


def dequantize(t: Quantized) -> jax.Array:
  x = (t.q.astype(jnp.float32) - t.zero_point) * t.scale
  n = 1
  for d in t.shape:
    n *= d
  return x.reshape(-1)[:n].reshape(t.shape)


def quantize_params(params: Any, method: str = "int8", block_size: int = 64) -> Any:
  """Every 2-D leaf quantized ("int8" per channel or "int4" blockwise); others unchanged."""
  if method not in ("int8", "int4"):
    raise ValueError(f"method={method!r}; choose 'int8' or 'int4'")
  one = quantize_int8 if method == "int8" else lambda x: quantize_4bit(x, block_size)
  return jax.tree.map(lambda x: one(x) if x.ndim == 2 else x, params)


def dequantize_params(tree: Any) -> Any:
  return jax.tree.map(lambda x: dequantize(x) if isinstance(x, Quantized) else x, tree,
                      is_leaf=lambda x: isinstance(x, Quantized))


def storage_bytes(tree: Any) -> int:
  """Bytes to store `tree`: 4-bit codes counted packed two per byte, scales and zero points
  as float32 (zero points fit a byte; counted at 4 to stay conservative)."""
  total = 0
  for x in jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, Quantized)):
    if isinstance(x, Quantized):
      total += (x.q.size * x.bits + 7) // 8 + 4 * (x.scale.size + x.zero_point.size)
    else:
      total += x.size * x.dtype.itemsize
  return total
