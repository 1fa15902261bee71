"""What Shampoo and SOAP share: their schedule checks, each parameter's blocks, the factor state.

Both optimizers keep, per group of equal blocks (blocking.py), one stack of Kronecker factors
per factored dimension, initialized at zero, and one stack of matrices applied to the blocks
(Shampoo's inverse roots, SOAP's eigenbases), initialized at the identity; moments are
parameter-shaped float32 arrays. On a mesh the moments follow their parameters and the stacks
split along the block axis (`state_specs`, see optimizers/partition.py).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from optimizers import partition
from optimizers.shampoo import blocking


def check_schedule(*, precondition_every: int, statistics_every: int,
                   start_preconditioning_step: int) -> None:
  """Raises unless every period and the first preconditioned step are >= 1."""
  if min(precondition_every, statistics_every, start_preconditioning_step) < 1:
    raise ValueError("precondition_every, statistics_every and start_preconditioning_step "
                     "must be >= 1")


def layout_fn(*, block_size: int | None, max_preconditioner_dim: int | None,
              graft_only_dim: int, merge_small_dims: bool,
              batch_axes: Any | None) -> Callable[[Any], blocking.Layout]:
  """`tree -> blocking.Layout` of its leaves (params, updates or their shapes), all static.

  Args: the blocking hyperparameters of `shampoo` and `soap` (blocking.py).
  """
  options = dict(block_size=block_size, max_preconditioner_dim=max_preconditioner_dim,
                 graft_only_dim=graft_only_dim, merge_small_dims=merge_small_dims)

  def layout_of(tree: Any) -> blocking.Layout:
    return blocking.Layout([x.shape for x in jax.tree.leaves(tree)],
                           blocking.resolve_batch_axes(tree, batch_axes), **options)

  return layout_of


def zeros(params: Any, dtype: Any = jnp.float32) -> Any:
  """A moment of zeros shaped like `params` (float32)."""
  return jax.tree.map(lambda p: jnp.zeros(p.shape, dtype), params)


def init_factors(layout: blocking.Layout, dtype: Any = jnp.float32
                 ) -> tuple[dict[str, tuple[jax.Array, ...]], dict[str, tuple[jax.Array, ...]]]:
  """(statistics, applied matrices) before any gradient: per group, zeros and identities."""
  return layout.zero_factors(dtype), layout.identity_factors(dtype)


def state_specs(state: Any, path: tuple, ctx: partition.Context, *,
                stacks: Sequence[str]) -> Any:
  """Specs of a Shampoo-like NamedTuple state, for `partition.register`.

  `mu` and `nu` follow their parameters, the fields named in `stacks` split along the block
  axis, every other field (counts, metrics) is replicated.
  """
  specs = {}
  for name, value in zip(state._fields, state):
    if name in ("mu", "nu"):
      specs[name] = ctx.specs(value, path + (name,))
    elif name in stacks:
      specs[name] = jax.tree.map(ctx.stack_spec, value)
    else:
      specs[name] = jax.tree.map(lambda _: P(), value)
  return state._replace(**specs)
