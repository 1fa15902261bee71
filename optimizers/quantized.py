"""8-bit AdamW: Adam's two moments stored as 8-bit codes with one float32 scale per block.

Dettmers, Lewis, Shleifer & Zettlemoyer, "8-bit Optimizers via Block-wise Quantization", ICLR
2022 (arXiv 2110.02861). Each moment is flattened and cut into blocks (default 256 elements);
a block stores its absolute maximum in float32 and every element as the index (uint8) of the
nearest value of a 256-entry non-linear "dynamic" code in [-1, 1] (first moment, signed) or
[0, 1] (second moment, unsigned). Each step dequantizes, runs the float32 Adam update, and
requantizes. Leaves smaller than `min_quantized_size` keep float32 moments.

No library implements this for JAX/optax (bitsandbytes is PyTorch/CUDA), so the code and the
transformation are written here; weight decay and the learning rate are optax's own transforms.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from optimizers import _hparams
from optimizers import _tree
from optimizers import nonfinite
from optimizers import partition
from optimizers._registry import register


def dynamic_code(signed: bool) -> np.ndarray:
  """The 256 values (sorted, float32) of Dettmers's dynamic tree code, scaled to [-1, 1].

  A code byte reads, after an optional sign bit: `e` zeros (the decimal exponent), a 1 (the
  indicator), then the remaining `f` bits as a linear fraction. Its value is
  +-10^(-e) * (0.1 + 0.9 * (k + 1) / 2^f) for fraction bits k; the byte with no indicator is 0.
  Each decade of magnitude therefore gets its own resolution: 1 is exact, relative steps are
  < 0.9 / 2^f / 0.1, and the smallest non-zero value is 1e-6 (signed) or 1e-7 (unsigned). The
  signed code's "negative zero" byte also decodes to 0, so it has 255 distinct values.

  Args:
    signed: a sign bit and 7 magnitude bits (first moment), or 8 magnitude bits (second).

  Returns:
    A float32 array of 256 sorted values.
  """
  bits = 7 if signed else 8
  magnitudes = [0.0]
  for e in range(bits):
    f = bits - 1 - e
    magnitudes += [10.0 ** -e * (0.1 + 0.9 * (k + 1) / 2 ** f) for k in range(2 ** f)]
  magnitudes = np.array(magnitudes)
  values = np.concatenate([-magnitudes, magnitudes]) if signed else magnitudes
  return np.sort(values).astype(np.float32)


SIGNED_CODE = dynamic_code(signed=True)
UNSIGNED_CODE = dynamic_code(signed=False)


class QuantizedArray(NamedTuple):
  """A float array as 8-bit code indices plus one float32 absmax per block (a pytree)."""
  codes: jax.Array  # uint8, (size,): index into the code table, element by element
  scales: jax.Array  # float32, (ceil(size / block_size),): absmax of each block


@partition.register(QuantizedArray)
def _partition_specs(q: QuantizedArray, path: tuple, ctx: partition.Context) -> QuantizedArray:
  """Codes and scales split along their flat axis where the parameter is split at all.

  A parameter split along its leading axis (the sharding rule's first choice) is a set of
  contiguous row-major chunks; when each chunk is whole blocks, the flat codes and scales split
  the same way, so dequantizing moves no data and each device holds ~2/N bytes per parameter.
  """
  found = ctx.param_of(path)
  split = (found is not None and found[1] != P() and ctx.size > 1
           and q.codes.shape[0] % ctx.size == 0 and q.scales.shape[0] % ctx.size == 0)
  spec = P(ctx.axis) if split else P()
  return QuantizedArray(codes=spec, scales=spec)


def _blocks(flat: jax.Array, block_size: int) -> jax.Array:
  pad = -flat.size % block_size
  return jnp.pad(flat, (0, pad)).reshape(-1, block_size)


def _nearest_index(xn: jax.Array, signed: bool) -> jax.Array:
  """Index (int32) of the code value nearest to each `xn` in [-1, 1], without a search.

  A magnitude a in decade e (10^-(e+1) < a <= 10^-e) lies on that decade's uniform grid
  10^-e (0.1 + 0.9 (k + 1) / 2^f), k = -1 .. 2^f - 1 (k = -1 is the next decade's top), and
  sits at position 2^f + k among the sorted magnitudes; rounding k gives the nearest code.
  log10 may misplace a value at a decade edge by one code, so the nearest of the three codes
  around that guess is taken.
  """
  bits = 7 if signed else 8
  code = jnp.asarray(SIGNED_CODE if signed else UNSIGNED_CODE)
  a = jnp.abs(xn)
  e = jnp.clip(jnp.floor(-jnp.log10(jnp.maximum(a, 1e-30))), 0, bits - 1).astype(jnp.int32)
  steps = jnp.asarray([2.0 ** (bits - 1 - i) for i in range(bits)], jnp.float32)[e]  # 2^f
  k = jnp.round((a * jnp.asarray([10.0 ** i for i in range(bits)], jnp.float32)[e] - 0.1)
                / 0.9 * steps - 1)
  pos = (steps + jnp.clip(k, -1, steps - 1)).astype(jnp.int32)
  guess = jnp.where(xn < 0, 127 - pos, 128 + pos) if signed else pos
  best, best_err = guess, jnp.abs(code[guess] - xn)
  for i in (jnp.maximum(guess - 1, 0), jnp.minimum(guess + 1, 255)):
    err = jnp.abs(code[i] - xn)
    best, best_err = jnp.where(err < best_err, i, best), jnp.minimum(err, best_err)
  return best


def quantize(x: jax.Array, signed: bool, block_size: int,
             keep_nonzero: bool = False) -> QuantizedArray:
  """Block-wise absmax scaling, then the nearest value of the dynamic code for each element.

  Args:
    x: any shape; flattened, and the last block zero-padded when the size is not a multiple
      of `block_size`.
    signed: `SIGNED_CODE` (values of either sign) or `UNSIGNED_CODE` (x >= 0).
    block_size: elements per float32 scale.
    keep_nonzero: map non-zero values below the smallest code to it instead of to 0 (used for
      the second moment, so that a tiny v never becomes 0 under a non-zero m).

  Returns:
    A `QuantizedArray`. A block holding a NaN or Inf gets scale NaN (and zero codes): it
    cannot be stored, and a NaN scale keeps that visible to `nonfinite.guard`, which then
    refuses the step, instead of an Inf absmax decoding to a mix of NaN and 0.
  """
  blocks = _blocks(x.reshape(-1).astype(jnp.float32), block_size)
  finite = jnp.all(jnp.isfinite(blocks), axis=1)
  absmax = jnp.where(finite, jnp.max(jnp.abs(blocks), axis=1), jnp.nan)
  normalized = jnp.where(finite[:, None], blocks / jnp.where(absmax > 0, absmax, 1.0)[:, None],
                         0.0)
  index = _nearest_index(normalized, signed)
  if keep_nonzero:
    smallest = 129 if signed else 1  # index of the smallest positive code
    index = jnp.where((normalized > 0) & (index < smallest), smallest, index)
  return QuantizedArray(codes=index.astype(jnp.uint8).reshape(-1)[:x.size], scales=absmax)


def dequantize(q: QuantizedArray, signed: bool, block_size: int,
               shape: tuple[int, ...]) -> jax.Array:
  """Inverse of `quantize` up to rounding: code value times its block's absmax (float32)."""
  code = jnp.asarray(SIGNED_CODE if signed else UNSIGNED_CODE)
  values = _blocks(code[q.codes], block_size) * q.scales[:, None]
  return values.reshape(-1)[:math.prod(shape)].reshape(shape)


def _zeros(shape, signed: bool, block_size: int) -> QuantizedArray:
  size = math.prod(shape)
  return QuantizedArray(codes=jnp.full((size,), 128 if signed else 0, jnp.uint8),
                        scales=jnp.zeros((-(-size // block_size),), jnp.float32))


def _one_minus_power(b: float, t: jax.Array) -> jax.Array:
  """1 - b^t (t >= 1) as -expm1(t log b), with log b taken in float64.

  In float32, 1 - 0.999^t loses ~1e-5 of relative precision to cancellation (0.999 itself is
  stored as 0.99900001); this form keeps it near 1e-7.
  """
  if _hparams.is_zero(b):
    return jnp.ones([], jnp.float32)
  return -jnp.expm1(t.astype(jnp.float32) * _hparams.log(b))


class ScaleByAdam8bitState(NamedTuple):
  count: jax.Array
  mu: Any  # per leaf: QuantizedArray (signed code) or float32 array
  nu: Any  # per leaf: QuantizedArray (unsigned code) or float32 array


def scale_by_adam_8bit(*, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                       block_size: int = 256,
                       min_quantized_size: int = 4096) -> optax.GradientTransformation:
  """Adam's scaling with block-wise 8-bit moments (Dettmers et al., 2022).

  m = deq(m8);  v = deq(v8);  m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2
  update = (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps);  m8 = q(m);  v8 = q(v).
  The update uses the float32 m, v of this step; only what is stored is rounded.

  Args:
    b1, b2, eps: as in `optax.scale_by_adam`.
    block_size: elements per float32 absmax scale.
    min_quantized_size: leaves with fewer elements keep float32 moments.

  Returns:
    An `optax.GradientTransformation` whose state is uint8 codes and float32 scales.
  """

  def init_fn(params):
    def moments(p):
      if p.size < min_quantized_size:
        return jnp.zeros(p.shape, jnp.float32), jnp.zeros(p.shape, jnp.float32)
      return _zeros(p.shape, True, block_size), _zeros(p.shape, False, block_size)

    leaves, treedef = jax.tree.flatten(params)
    mu, nu = _tree.unzip(treedef, map(moments, leaves), 2)
    return ScaleByAdam8bitState(count=jnp.zeros([], jnp.int32), mu=mu, nu=nu)

  def update_fn(updates, state, params=None):
    del params
    count = optax.safe_increment(state.count)
    bc1, bc2 = _one_minus_power(b1, count), _one_minus_power(b2, count)

    def one(g, mu, nu):
      quantized = isinstance(mu, QuantizedArray)
      if quantized:
        mu = dequantize(mu, True, block_size, g.shape)
        nu = dequantize(nu, False, block_size, g.shape)
      g32 = g.astype(jnp.float32)
      mu = b1 * mu + (1 - b1) * g32
      nu = b2 * nu + (1 - b2) * jnp.square(g32)
      u = (mu / bc1) / (jnp.sqrt(nu / bc2) + eps)
      if quantized:
        mu = quantize(mu, True, block_size)
        nu = quantize(nu, False, block_size, keep_nonzero=True)
      return u.astype(g.dtype), mu, nu

    leaves, treedef = jax.tree.flatten(updates)
    out = [one(g, m, v) for g, m, v in zip(
        leaves, treedef.flatten_up_to(state.mu), treedef.flatten_up_to(state.nu))]
    new_updates, mu, nu = _tree.unzip(treedef, out, 3)
    return new_updates, ScaleByAdam8bitState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


@register("adamw_8bit")
def adamw_8bit(*, learning_rate: Any, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
               weight_decay: float = 1e-4, block_size: int = 256,
               min_quantized_size: int = 4096) -> optax.GradientTransformation:
  """AdamW with 8-bit block-wise moments (Dettmers et al., 2022, arXiv 2110.02861).

  update = -lr * (m_hat / (sqrt(v_hat) + eps) + wd * theta)  (as `adamw`)
  m and v are stored as uint8 dynamic-code indices and a float32 absmax per block of
  `block_size` elements: 2 + 8 / block_size bytes per parameter on quantized leaves (AdamW: 8).

  Choices of this implementation: block size 256 by default (the paper uses 2048), the code's
  fractions end at the top of each decade (so a block's absmax is stored exactly), and a
  non-zero v never rounds to 0. The paper's "stable embedding" layer is a model change, not
  part of this optimizer. A step whose gradient, update or new state (an overflowing block
  scale included) is not finite is skipped and counted (`nonfinite.guard`).

  Args:
    learning_rate, b1, b2, eps, weight_decay: as in `adamw`.
    block_size: elements per float32 scale.
    min_quantized_size: leaves smaller than this keep float32 moments.

  Parity: none, because the code table and block size are this implementation's own
  (bitsandbytes' and torchao's quantization maps differ), so no published implementation
  rounds the moments the same way; tests/test_quantized.py checks every step against float64
  AdamW on the dequantized state, and the stored moments within the round-trip bound, instead.

  Returns:
    An `optax.GradientTransformation`.
  """
  return nonfinite.guard(
      scale_by_adam_8bit(b1=b1, b2=b2, eps=eps, block_size=block_size,
                         min_quantized_size=min_quantized_size),
      optax.add_decayed_weights(weight_decay),
      optax.scale_by_learning_rate(learning_rate),
  )
