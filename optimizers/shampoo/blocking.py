"""Which leaves get Kronecker factors, and how they are cut into blocks of at most `block_size`.

Per leaf (all static, from its shape):
  * leaves of rank <= 1, or with a dimension >= `graft_only_dim` (embeddings), get no factors:
    they follow the grafting direction only;
  * size-1 dimensions are dropped and consecutive small dimensions merged while their product
    stays <= `block_size` (a 3x3x64x128 convolution becomes 576x128);
  * a dimension above `max_preconditioner_dim` gets no factor (one-sided preconditioning);
    a leaf with no factor left falls back to the grafting direction (diagonal);
  * every other dimension above `block_size` is split into blocks of `block_size` (the last
    one smaller).
Blocks of equal shape (and equal factored dimensions) from every leaf are stacked into one
group, so that statistics, roots and preconditioning run batched (vmap) per group.

References:
  Anil et al., "Scalable Second Order Optimization for Deep Learning", arXiv 2002.09018, 2020
  (blocking, merging of small dimensions).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class LeafPlan:
  shape: tuple[int, ...]  # the leaf's own shape
  merged: tuple[int, ...]  # after dropping size-1 dims and merging small ones
  preconditioned: tuple[bool, ...]  # per merged dim: whether it gets a factor
  splits: tuple[tuple[int, ...], ...]  # per merged dim: the sizes of its blocks

  def block_shapes(self) -> list[tuple[int, ...]]:
    return list(itertools.product(*self.splits))


def merge_dims(shape: Sequence[int], limit: float) -> tuple[int, ...]:
  """Drops size-1 dims and merges consecutive dims while their product is <= `limit`."""
  merged: list[int] = []
  for d in shape:
    if d == 1:
      continue
    if merged and merged[-1] * d <= limit:
      merged[-1] *= d
    else:
      merged.append(d)
  return tuple(merged)


def plan_leaf(shape: Sequence[int], *, block_size: int | None = 1024,
              max_preconditioner_dim: int | None = 4096, graft_only_dim: int = 1_000_000,
              merge_small_dims: bool = True) -> LeafPlan | None:
  """How a leaf of `shape` is blocked; None when it gets no factor (grafting only)."""
  shape = tuple(int(d) for d in shape)
  if len(shape) <= 1 or max(shape) >= graft_only_dim:
    return None
  block = block_size or math.inf
  max_dim = max_preconditioner_dim or math.inf
  merged = merge_dims(shape, min(block, max_dim)) if merge_small_dims else shape
  preconditioned = tuple(d <= max_dim for d in merged)
  if not any(preconditioned):
    return None
  splits = []
  for d, pre in zip(merged, preconditioned):
    if pre and d > block:
      splits.append((block_size,) * (d // block_size) + ((d % block_size,) if d % block_size else ()))
    else:
      splits.append((d,))
  return LeafPlan(shape, merged, preconditioned, tuple(splits))


def split(x: jax.Array, plan: LeafPlan) -> list[jax.Array]:
  """The blocks of `x`, in C order over the per-dimension splits."""
  blocks = [x.reshape(plan.merged)]
  for axis, sizes in enumerate(plan.splits):
    if len(sizes) > 1:
      cuts = np.cumsum(sizes)[:-1].tolist()
      blocks = [part for b in blocks for part in jnp.split(b, cuts, axis=axis)]
  return blocks


def join(blocks: Sequence[jax.Array], plan: LeafPlan) -> jax.Array:
  """Inverse of `split`: reassembles the blocks into an array of `plan.shape`."""
  blocks = list(blocks)
  for axis in reversed(range(len(plan.splits))):
    n = len(plan.splits[axis])
    if n > 1:
      blocks = [jnp.concatenate(blocks[i:i + n], axis=axis) for i in range(0, len(blocks), n)]
  (whole,) = blocks
  return whole.reshape(plan.shape)


def group_key(block_shape: Sequence[int], preconditioned: Sequence[bool]) -> str:
  """'128x128'; a dimension without a factor is marked 'u' (unpreconditioned): '128x5000u'."""
  return "x".join(f"{d}" if pre else f"{d}u" for d, pre in zip(block_shape, preconditioned))


class Layout:
  """Blocks of every leaf, grouped by block shape; built from the leaves' shapes (static).

  Attributes:
    plans: per leaf, its LeafPlan or None (grafting only).
    members: per group key, the (leaf index, block index) of each stacked block, in order.
    shapes: per group key, the block shape.
    dims: per group key, the dimensions that have factors.
  """

  def __init__(self, shapes: Sequence[Sequence[int]], **options):
    self.plans = [plan_leaf(s, **options) for s in shapes]
    members: dict[str, list[tuple[int, int]]] = {}
    self.shapes: dict[str, tuple[int, ...]] = {}
    self.dims: dict[str, tuple[int, ...]] = {}
    for leaf, plan in enumerate(self.plans):
      if plan is None:
        continue
      for b, shape in enumerate(plan.block_shapes()):
        key = group_key(shape, plan.preconditioned)
        members.setdefault(key, []).append((leaf, b))
        self.shapes[key] = shape
        self.dims[key] = tuple(i for i, pre in enumerate(plan.preconditioned) if pre)
    self.members = dict(sorted(members.items()))

  def factor_shapes(self) -> dict[str, tuple[tuple[int, ...], ...]]:
    """Per group, the stacked (num_blocks, d, d) shape of each factor."""
    return {key: tuple((len(m), self.shapes[key][i], self.shapes[key][i])
                       for i in self.dims[key]) for key, m in self.members.items()}

  def zero_factors(self) -> dict[str, tuple[jax.Array, ...]]:
    """Per group, float32 zeros for each factor (the statistics before any gradient)."""
    return {k: tuple(jnp.zeros(s, jnp.float32) for s in shapes)
            for k, shapes in self.factor_shapes().items()}

  def identity_factors(self) -> dict[str, tuple[jax.Array, ...]]:
    """Per group, a float32 stack of identities for each factor (roots or bases at start)."""
    return {k: tuple(jnp.broadcast_to(jnp.eye(s[-1], dtype=jnp.float32), s) for s in shapes)
            for k, shapes in self.factor_shapes().items()}

  def gather(self, leaves: Sequence[jax.Array]) -> dict[str, jax.Array]:
    """Per group, its blocks of `leaves` stacked: (num_blocks, *block_shape)."""
    parts = [None if p is None else split(x, p) for x, p in zip(leaves, self.plans)]
    return {key: jnp.stack([parts[leaf][b] for leaf, b in m])
            for key, m in self.members.items()}

  def scatter(self, groups: dict[str, jax.Array]) -> list[jax.Array | None]:
    """Inverse of `gather`: per leaf, the reassembled array (None for grafting-only leaves)."""
    parts: list[dict[int, jax.Array]] = [{} for _ in self.plans]
    for key, m in self.members.items():
      for row, (leaf, b) in enumerate(m):
        parts[leaf][b] = groups[key][row]
    return [None if p is None else join([parts[i][b] for b in range(len(parts[i]))], p)
            for i, p in enumerate(self.plans)]
