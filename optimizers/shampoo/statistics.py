"""Kronecker-factor statistics of a tensor block, and products of a block with its factors.

For a block G of rank k, the factor of dimension i is the contraction of G with itself over
every other dimension: `G G^T` (rows) and `G^T G` (columns) for a matrix. Written by hand:
optax has no Kronecker-factored statistics.

References:
  Gupta, Koren & Singer, "Shampoo: Preconditioned Stochastic Tensor Optimization",
  ICML 2018, arXiv 1802.09568.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from optimizers import _hparams

_HIGHEST = lax.Precision.HIGHEST


def state_dtype(tree: Any) -> Any:
  """The dtype of the arithmetic and state: float32, or float64 for float64 leaves.

  float32 for float32, bfloat16 and float16 parameters alike; float64 only where JAX's x64 mode
  made float64 parameters (SOAP's parity test runs so, to compare with a float64 reference at
  float64 rounding, not at the float32 eigensolver's, which differs between LAPACK builds).
  """
  return jnp.result_type(jnp.float32, *(jnp.dtype(x.dtype) for x in jax.tree.leaves(tree)))


def factor_products(block: jax.Array, dims: Sequence[int]) -> list[jax.Array]:
  """`[G_(i) G_(i)^T for i in dims]`, G_(i) the mode-i unfolding of `block` (`state_dtype`)."""
  block = block.astype(state_dtype(block))
  out = []
  for i in dims:
    others = [j for j in range(block.ndim) if j != i]
    out.append(jnp.tensordot(block, block, axes=(others, others), precision=_HIGHEST))
  return out


def update_factors(factors: Sequence[jax.Array], block: jax.Array, dims: Sequence[int],
                   b2: float) -> tuple[jax.Array, ...]:
  """F_i <- b2 F_i + (1 - b2) G_(i) G_(i)^T, or the plain sum F_i + G_(i) G_(i)^T if b2 == 1."""
  products = factor_products(block, dims)
  if _hparams.is_number(b2):
    if b2 == 1.0:
      return tuple(f + gg for f, gg in zip(factors, products))
  else:  # traced: both forms, so a traced 1.0 still sums
    return tuple(jnp.where(b2 == 1.0, f + gg, b2 * f + (1.0 - b2) * gg)
                 for f, gg in zip(factors, products))
  return tuple(b2 * f + (1.0 - b2) * gg for f, gg in zip(factors, products))


def update_groups(stats: dict[str, Sequence[jax.Array]], blocks: dict[str, jax.Array],
                  dims: dict[str, Sequence[int]], b2: float) -> dict[str, tuple[jax.Array, ...]]:
  """`update_factors` for every group of stacked blocks (n, ...) and factors (n, d, d)."""
  return {k: jax.vmap(lambda f, b, k=k: update_factors(f, b, dims[k], b2))(stats[k], blocks[k])
          for k in stats}


def mode_products(block: jax.Array, matrices: Sequence[jax.Array | None],
                  transpose: bool = False) -> jax.Array:
  """`block x_1 A_1 x_2 A_2 ...`: every dimension i multiplied by `matrices[i]`.

  Without `transpose`, dimension i of the result is `sum_a block[..a..] A_i[a, b]` (so
  `A_1^T G A_2` for a matrix); with `transpose`, `A_i` is used transposed (`A_1 G A_2^T`).
  A `None` leaves that dimension as it is. Each contraction takes the first axis and appends
  the new one last, so after all of them the axes are back in order.
  """
  for mat in matrices:
    if mat is None:
      block = jnp.moveaxis(block, 0, -1)
    else:
      block = jnp.tensordot(block, mat, axes=([0], [1 if transpose else 0]),
                            precision=_HIGHEST)
  return block


def batched_mode_products(blocks: jax.Array, mats: Sequence[jax.Array], dims: Sequence[int],
                          transpose: bool = False) -> jax.Array:
  """`mode_products` over a stack (n, ...) of blocks: dimension dims[j] by mats[j] (n, d, d)."""

  def one(block, *ms):
    per_dim = [None] * block.ndim
    for d, mat in zip(dims, ms):
      per_dim[d] = mat
    return mode_products(block, per_dim, transpose)

  return jax.vmap(one)(blocks, *mats)
