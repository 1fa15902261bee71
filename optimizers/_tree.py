"""Tree helpers the optimizers share and no library provides."""

from __future__ import annotations

from typing import Any, Iterable

import jax


def unzip(treedef: jax.tree_util.PyTreeDef, per_leaf: Iterable[tuple[Any, ...]],
          n: int) -> tuple[Any, ...]:
  """`n` trees shaped by `treedef` from one `n`-tuple per leaf (an update and its moments).

  Written by hand because neither library call covers a tree without leaves:
  `jax.tree.transpose` raises on one ("too few leaves") and `zip(*per_leaf)` yields no tree at
  all. Such a tree is what a partition's group that holds no parameter receives
  (`optax.MaskedNode` leaves only); each of the `n` trees is then `treedef` itself, the
  structure `init` gave the state, so both branches of a `lax.cond` around the step
  (`optimizers.nonfinite`) see the same state.

  Args:
    treedef: the structure of the updates (and of the state's trees).
    per_leaf: one tuple of `n` values per leaf of `treedef`, in its leaf order.
    n: how many trees to return.

  Returns:
    A tuple of `n` trees: tree `i` holds every leaf's `i`-th value.
  """
  per_leaf = list(per_leaf)
  if not per_leaf:
    return tuple(treedef.unflatten([]) for _ in range(n))
  columns = tuple(zip(*per_leaf))
  if len(columns) != n:
    raise ValueError(f"unzip: {len(columns)} values per leaf, expected {n}")
  return tuple(treedef.unflatten(column) for column in columns)
