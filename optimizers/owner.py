"""Owner-based computation on stacks of whole matrices spread over the devices of a mesh.

Newton–Schulz, matrix roots, eigendecompositions and QR need whole matrices, while under FSDP
each device holds a slice of every matrix. `apply_on_owners(fn, stacks)` pads each stack
(leading axis: the matrices) to a multiple of the number of devices, reshards it so that
device i owns matrices [i n/N, (i + 1) n/N) whole (XLA emits an all-to-all from an fsdp layout,
a slice from a replicated one), runs `fn` on the local matrices only under `jax.shard_map`,
and hands the results back to the caller's layout (the inverse all-to-all, or an all-gather
where the caller wants them replicated). Each device then does about 1/N of the work and no
device holds every matrix, as in Microsoft's Dion and the NanoGPT speedrun's sharded Muon.

The mesh comes from the context (`jax.set_mesh(mesh)` around the jitted step, or its tracing),
so optimizers need no mesh hyperparameter and stay pure functions of their pytrees. Without a
mesh in context, or on a one-device mesh, `fn` runs on the whole stacks, unchanged.

Padding repeats the last matrix (a real matrix, so `fn` sees no degenerate input); its results
are dropped.

References:
  Ahn et al., "Dion: Distributed Orthonormalized Updates", 2025, arXiv 2504.05295.
  Jordan et al., modded-nanogpt (sharded Muon: matrices assigned to ranks), 2024.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P


def context_axes(axes: str | Sequence[str] | None = None) -> tuple[str, ...]:
  """The mesh axes of the context mesh to spread matrices over (all of them by default).

  Args:
    axes: an axis name, names, or None for every axis of the context mesh; names that the
      context mesh does not have are dropped.

  Returns:
    The axis names, () when there is no mesh in context.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return ()
  names = tuple(mesh.axis_names)
  if axes is None:
    return names
  wanted = (axes,) if isinstance(axes, str) else tuple(axes)
  return tuple(a for a in wanted if a in names)


def num_owners(axes: str | Sequence[str] | None = None) -> int:
  """How many devices share the work: the product of the context mesh's `axes` sizes."""
  names = context_axes(axes)
  if not names:
    return 1
  shape = jax.sharding.get_abstract_mesh().shape
  size = 1
  for a in names:
    size *= shape[a]
  return size


def _pad(x: jax.Array, multiple: int) -> jax.Array:
  pad = -x.shape[0] % multiple
  if not pad:
    return x
  return jnp.concatenate([x, jnp.broadcast_to(x[-1:], (pad,) + x.shape[1:])])


def apply_on_owners(fn: Callable[[Any], Any], stacks: Any,
                    axes: str | Sequence[str] | None = None) -> Any:
  """`fn(stacks)`, computed with each device owning a 1/N share of every stack's matrices.

  Args:
    fn: maps a pytree of stacks (each leaf (n_i, ...)) to a pytree with `stacks`' structure
      as a prefix, every output leaf's leading axis matching its input stack's. It must treat
      the matrices of a stack independently (a batched computation).
    stacks: a pytree of arrays, each with the matrices along axis 0.
    axes: mesh axes to spread over (None: all axes of the context mesh).

  Returns:
    `fn(stacks)`, each output leaf with the leading length of its input stack.
  """
  names = context_axes(axes)
  n_owners = num_owners(names) if names else 1
  if n_owners == 1:
    return fn(stacks)
  lengths = jax.tree.map(lambda x: x.shape[0], stacks)
  spec = P(names)
  explicit = all(t == jax.sharding.AxisType.Explicit
                 for t in jax.sharding.get_abstract_mesh().axis_types)
  place = jax.sharding.reshard if explicit else jax.lax.with_sharding_constraint
  padded = jax.tree.map(lambda x: place(_pad(x, n_owners), spec), stacks)
  # `fn` is local (no collectives), so the varying-axes check has nothing to find; off, it lets
  # loops with constant initial carries (power iterations, Newton) run unchanged.
  out = jax.shard_map(fn, in_specs=spec, out_specs=spec, axis_names=frozenset(names),
                      check_vma=False)(padded)
  if explicit:  # explicit sharding types cannot slice an uneven share: gather first
    out = jax.tree.map(lambda y: jax.sharding.reshard(y, P()), out)
  return jax.tree.map(lambda n, sub: jax.tree.map(lambda y: y[:n], sub), lengths, out)
