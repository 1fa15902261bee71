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

A leaf may have leading batch axes (`batch_axes`: a stack of layers, (layers, fan_in, fan_out)
kernels and (layers, width) scales, as the pipeline holds them): each index along them is a
tensor of its own, blocked and preconditioned exactly as the unstacked layer would be (a stack
of vectors gets no factor), so that stacking a model's layers does not change the optimizer.

References:
  Anil et al., "Scalable Second Order Optimization for Deep Learning", arXiv 2002.09018, 2020
  (blocking, merging of small dimensions).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from optimizers import routing


@dataclasses.dataclass(frozen=True)
class LeafPlan:
  shape: tuple[int, ...]  # the leaf's own shape
  merged: tuple[int, ...]  # after dropping size-1 dims and merging small ones
  preconditioned: tuple[bool, ...]  # per merged dim: whether it gets a factor
  splits: tuple[tuple[int, ...], ...]  # per merged dim: the sizes of its blocks
  batch: tuple[int, ...] = ()  # the leading batch axes' sizes (each index its own tensor)

  def block_shapes(self) -> list[tuple[int, ...]]:
    """Every block's shape, batch index major (the batch axes are not part of a block)."""
    return list(itertools.product(*self.splits)) * math.prod(self.batch)


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
              merge_small_dims: bool = True, batch_axes: int = 0) -> LeafPlan | None:
  """How a leaf of `shape` is blocked; None when it gets no factor (grafting only).

  The first `batch_axes` axes are a batch: the rest of the shape is planned as a leaf of its
  own, once for every batch index.
  """
  shape = tuple(int(d) for d in shape)
  batch, inner = shape[:batch_axes], shape[batch_axes:]
  if len(inner) <= 1 or max(inner) >= graft_only_dim:
    return None
  block = block_size or math.inf
  max_dim = max_preconditioner_dim or math.inf
  merged = merge_dims(inner, min(block, max_dim)) if merge_small_dims else inner
  preconditioned = tuple(d <= max_dim for d in merged)
  if not any(preconditioned):
    return None
  splits = []
  for d, pre in zip(merged, preconditioned):
    if pre and d > block:
      rest = (d % block_size,) if d % block_size else ()
      splits.append((block_size,) * (d // block_size) + rest)
    else:
      splits.append((d,))
  return LeafPlan(shape, merged, preconditioned, tuple(splits), batch)


def _split_one(x: jax.Array, plan: LeafPlan) -> list[jax.Array]:
  blocks = [x.reshape(plan.merged)]
  for axis, sizes in enumerate(plan.splits):
    if len(sizes) > 1:
      cuts = np.cumsum(sizes)[:-1].tolist()
      blocks = [part for b in blocks for part in jnp.split(b, cuts, axis=axis)]
  return blocks


def split(x: jax.Array, plan: LeafPlan) -> list[jax.Array]:
  """The blocks of `x`, batch index major, then in C order over the per-dimension splits."""
  if not plan.batch:
    return _split_one(x, plan)
  stack = x.reshape((math.prod(plan.batch),) + plan.merged)
  return [b for i in range(stack.shape[0]) for b in _split_one(stack[i], plan)]


def _join_one(blocks: Sequence[jax.Array], plan: LeafPlan) -> jax.Array:
  blocks = list(blocks)
  for axis in reversed(range(len(plan.splits))):
    n = len(plan.splits[axis])
    if n > 1:
      blocks = [jnp.concatenate(blocks[i:i + n], axis=axis) for i in range(0, len(blocks), n)]
  (whole,) = blocks
  return whole


def join(blocks: Sequence[jax.Array], plan: LeafPlan) -> jax.Array:
  """Inverse of `split`: reassembles the blocks into an array of `plan.shape`."""
  if not plan.batch:
    return _join_one(blocks, plan).reshape(plan.shape)
  per = math.prod(len(s) for s in plan.splits)
  mats = [_join_one(blocks[i:i + per], plan) for i in range(0, len(blocks), per)]
  return jnp.stack(mats).reshape(plan.shape)


def resolve_batch_axes(params: Any, batch_axes: Any | None) -> list[int]:
  """Per leaf of `params`, its number of leading batch axes.

  Args:
    params: the parameters (or updates, or their shapes).
    batch_axes: None (no leaf has any), a function `(path, leaf) -> int`, or a pytree of ints
      (missing leaves: 0).
  """
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  if batch_axes is None:
    return [0] * len(flat)
  rule = routing.as_rule(batch_axes, lambda x: x is None or isinstance(x, int))
  out = []
  for path, leaf in flat:
    n = int(rule(path, leaf) or 0)
    if not 0 <= n <= len(leaf.shape):
      raise ValueError(f"{routing.path_str(path)!r} of shape {tuple(leaf.shape)} cannot have "
                       f"{n} batch axes")
    out.append(n)
  return out


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

  def __init__(self, shapes: Sequence[Sequence[int]],
               batch_axes: Sequence[int] | None = None, **options):
    batch_axes = batch_axes or [0] * len(shapes)
    self.plans = [plan_leaf(s, batch_axes=b, **options) for s, b in zip(shapes, batch_axes)]
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

  def zero_factors(self, dtype: Any = jnp.float32) -> dict[str, tuple[jax.Array, ...]]:
    """Per group, zeros (float32 by default) for each factor: the statistics before any data."""
    return {k: tuple(jnp.zeros(s, dtype) for s in shapes)
            for k, shapes in self.factor_shapes().items()}

  def identity_factors(self, dtype: Any = jnp.float32) -> dict[str, tuple[jax.Array, ...]]:
    """Per group, identities (float32 by default) for each factor: roots or bases at start."""
    return {k: tuple(jnp.broadcast_to(jnp.eye(s[-1], dtype=dtype), s) for s in shapes)
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
