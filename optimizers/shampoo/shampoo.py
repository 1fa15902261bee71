"""Shampoo: Kronecker-factored preconditioning with inverse 2k-th roots, grafted per block.

For a block G of rank k (a matrix: k = 2), with m the bias-corrected momentum of the gradient:
  L_i <- b2 L_i + (1 - b2) G_(i) G_(i)^T       (the plain sum when b2 = 1; every
                                                `statistics_every` steps)
  P_i = (L_i + r I)^{-1/(2k)}                  (every `precondition_every` steps from
                                                `start_preconditioning_step`; 2k can be
                                                overridden by `root_override`)
  S = m x_1 P_1 ... x_k P_k                    (L^{-1/4} m R^{-1/4} for a matrix)
  update = S |d| / |S|                         (d: the grafting direction, see grafting.py)
Before `start_preconditioning_step`, and for leaves without factors (rank <= 1, embeddings),
the update is the grafting direction d (m itself with grafting "none"). A dimension above
`max_preconditioner_dim` gets no factor, and k counts only the factored dimensions. With
grafting "adam" and the same b1, b2 and eps as AdamW, the first steps are exactly AdamW's.

The roots run inside `lax.cond`, so their cost is paid once per `precondition_every` steps;
blocks and factors of equal shape are stacked and processed batched. On a mesh (in context,
see optimizers/owner.py) each device computes the roots of 1/N of the blocks; the state's
factor stacks are split along the block axis (`_partition_specs`). Blocks are cut from the
whole (logical) gradient, so tensor-parallel layouts (a `model` mesh axis splitting heads or MLP
units) do not change them: every root is computed on a whole block by its owner device, over
every axis of the mesh, and the update equals the unsharded one. A block lies within one
device's shard of a split dimension when `block_size` divides that shard. A root that is not
finite or whose residual exceeds `failure_threshold` is rejected: the previous one (initially
the identity) is kept and the failure is counted in `metrics`. The registry entry is wrapped
in `nonfinite.guard`: a step whose gradient (NaN, Inf, or |g| so large that G G^T overflows
float32, from about 1e19), update or new statistics are not finite is skipped whole (zero
update, every statistic, root and count kept) and counted in `metrics`.

References:
  Gupta, Koren & Singer, "Shampoo: Preconditioned Stochastic Tensor Optimization",
  ICML 2018, arXiv 1802.09568.
  Anil et al., "Scalable Second Order Optimization for Deep Learning", arXiv 2002.09018, 2020.
  Shi et al., "A Distributed Data-Parallel PyTorch Implementation of the Distributed Shampoo
  Optimizer for Training Neural Networks At-Scale", arXiv 2309.06497, 2023.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from optimizers import _hparams
from optimizers import nonfinite
from optimizers import owner
from optimizers import partition
from optimizers._registry import register
from optimizers.shampoo import grafting as grafting_lib
from optimizers.shampoo import layout as layout_lib
from optimizers.shampoo import linalg
from optimizers.shampoo import matrix_roots
from optimizers.shampoo import statistics


class ShampooState(NamedTuple):
  count: jax.Array  # int32, steps taken
  mu: Any  # momentum of the gradient (params-shaped, float32), or () when b1 == 0
  nu: Any  # grafting second moment (params-shaped, float32), or () when not needed
  stats: dict[str, tuple[jax.Array, ...]]  # per block group: its factors (n, d, d)
  roots: dict[str, tuple[jax.Array, ...]]  # per block group: the inverse roots (n, d, d)
  metrics: dict[str, jax.Array]  # root_failures (cumulative), root_residual (last max)


@partition.register(ShampooState)
def _partition_specs(state: ShampooState, path: tuple, ctx: partition.Context) -> ShampooState:
  """Moments follow their parameters; factor stacks split along the block axis."""
  return layout_lib.state_specs(state, path, ctx, stacks=("stats", "roots"))


def momentum(mu, grads, *, b1: float, nesterov: bool, count: jax.Array):
  """mu <- b1 mu + (1 - b1) g; returns (mu, bias-corrected m), Nesterov as in NAdam.

  m = mu / (1 - b1^t), or with Nesterov b1 mu / (1 - b1^{t+1}) + (1 - b1) g / (1 - b1^t).
  With b1 == 0, m = g and mu stays ().
  """
  if _hparams.is_zero(b1):
    return mu, list(grads)
  mu = [b1 * m + (1.0 - b1) * g for m, g in zip(mu, grads)]
  t = count.astype(statistics.state_dtype(grads))
  if nesterov:
    m = [b1 * x / (1.0 - b1 ** (t + 1)) + (1.0 - b1) * g / (1.0 - b1 ** t)
         for x, g in zip(mu, grads)]
  else:
    m = [x / (1.0 - b1 ** t) for x in mu]
  return mu, m


def scale_by_shampoo(*, b1: float = 0.9, b2: float = 0.95, eps: float = 1e-6,
                     relative_eps: bool = True, nesterov: bool = False,
                     block_size: int | None = 1024, max_preconditioner_dim: int | None = 4096,
                     graft_only_dim: int = 1_000_000, merge_small_dims: bool = True,
                     precondition_every: int = 10, statistics_every: int = 1,
                     start_preconditioning_step: int = 25, grafting: str = "adam",
                     graft_eps: float = 1e-8, root_method: str = "newton",
                     root_override: int | None = None, newton_iters: int = 100,
                     newton_tol: float = 1e-6, failure_threshold: float = 0.1,
                     batch_axes: Any | None = None) -> optax.GradientTransformation:
  """The Shampoo direction of the module docstring (no learning rate, no weight decay).

  Args: as `shampoo`.

  Returns:
    An optax.GradientTransformation with state `ShampooState`.
  """
  grafting_lib.check(grafting)
  if root_method not in matrix_roots.METHODS:
    raise ValueError(f"unknown root_method {root_method!r}; choose from {matrix_roots.METHODS}")
  layout_lib.check_schedule(precondition_every=precondition_every,
                            statistics_every=statistics_every,
                            start_preconditioning_step=start_preconditioning_step)
  layout_of = layout_lib.layout_fn(
      block_size=block_size, max_preconditioner_dim=max_preconditioner_dim,
      graft_only_dim=graft_only_dim, merge_small_dims=merge_small_dims, batch_axes=batch_axes)
  root_fn = functools.partial(matrix_roots.inverse_pth_root, method=root_method, eps=eps,
                              relative_eps=relative_eps, max_iters=newton_iters, tol=newton_tol)
  eigh_root_fn = functools.partial(matrix_roots.root_from_eigh, eps=eps,
                                   relative_eps=relative_eps)

  def init_fn(params):
    stats, roots = layout_lib.init_factors(layout_of(params))
    return ShampooState(
        count=jnp.zeros([], jnp.int32),
        mu=layout_lib.zeros(params) if _hparams.positive(b1) else (),
        nu=layout_lib.zeros(params) if grafting_lib.has_second_moment(grafting) else (),
        stats=stats, roots=roots,
        metrics={"root_failures": jnp.zeros([], jnp.int32),
                 "root_residual": jnp.zeros([], jnp.float32)})

  def compute_roots(layout, stats, roots, metrics):
    """Every factor's root, batched over the factors of equal size and root."""
    buckets: dict[tuple[int, int], list[tuple[str, int]]] = {}
    for key, dims in layout.dims.items():
      for j, d in enumerate(dims):
        p = root_override or 2 * len(dims)
        buckets.setdefault((layout.shapes[key][d], p), []).append((key, j))
    new = {k: list(v) for k, v in roots.items()}
    failures, residual = metrics["root_failures"], jnp.zeros([], jnp.float32)
    order = sorted(buckets)
    mats = [jnp.concatenate([stats[k][j] for k, j in buckets[b]]) for b in order]

    def roots_of(mats):
      if root_method == "eigh":
        # linalg.py: eigendecompositions that cannot deadlock the CPU runtime.
        return [jax.vmap(functools.partial(eigh_root_fn, p=b[1]))(m, *e)
                for b, m, e in zip(order, mats, linalg.eigh(mats))]
      return [jax.vmap(functools.partial(root_fn, p=b[1]))(m) for b, m in zip(order, mats)]

    # Each device computes the roots of the blocks it owns (owner.py).
    results = owner.apply_on_owners(roots_of, mats)
    for b, result in zip(order, results):
      items = buckets[b]
      prev = jnp.concatenate([roots[k][j] for k, j in items])
      root, failed = matrix_roots.accept(prev, result, failure_threshold)
      failures += jnp.sum(failed, dtype=jnp.int32)
      residual = jnp.maximum(residual, jnp.max(jnp.where(failed, 0.0, result.residual)))
      start = 0
      for k, j in items:
        n = stats[k][j].shape[0]
        new[k][j] = root[start:start + n]
        start += n
    return ({k: tuple(v) for k, v in new.items()},
            {"root_failures": failures, "root_residual": residual})

  def update_fn(updates, state, params=None):
    del params
    leaves, treedef = jax.tree.flatten(updates)
    layout = layout_of(updates)
    count = optax.safe_increment(state.count)
    grads = [g.astype(jnp.float32) for g in leaves]

    mu, m = momentum(treedef.flatten_up_to(state.mu) if _hparams.positive(b1) else (), grads,
                     b1=b1, nesterov=nesterov, count=count)
    nu = None
    if grafting_lib.has_second_moment(grafting):
      nu = grafting_lib.update_second_moment(treedef.flatten_up_to(state.nu), grads,
                                             grafting, b2)
    graft_dir = grafting_lib.direction(m, nu, grafting, b2=b2, eps=graft_eps, count=count)

    def update_stats(stats):
      return statistics.update_groups(stats, layout.gather(grads), layout.dims, b2)

    if statistics_every == 1:
      stats = update_stats(state.stats)
    else:
      stats = lax.cond(count % statistics_every == 0, update_stats, lambda s: s, state.stats)

    since_start = count - start_preconditioning_step
    roots, metrics = lax.cond(
        (since_start >= 0) & (since_start % precondition_every == 0),
        functools.partial(compute_roots, layout),
        lambda stats, roots, metrics: (roots, metrics),
        stats, state.roots, state.metrics)

    m_blocks = layout.gather(m)
    directions = {k: statistics.batched_mode_products(m_blocks[k], roots[k], layout.dims[k])
                  for k in m_blocks}
    if grafting != "none":
      graft_blocks = layout.gather(graft_dir)
      directions = {k: grafting_lib.rescale(v, graft_blocks[k]) for k, v in directions.items()}
    preconditioned = count >= start_preconditioning_step
    out = [d if s is None else jnp.where(preconditioned, s, d)
           for s, d in zip(layout.scatter(directions), graft_dir)]
    out = [o.astype(g.dtype) for o, g in zip(out, leaves)]
    new_state = ShampooState(
        count=count,
        mu=treedef.unflatten(mu) if _hparams.positive(b1) else (),
        nu=treedef.unflatten(nu) if nu is not None else (),
        stats=stats, roots=roots, metrics=metrics)
    return treedef.unflatten(out), new_state

  return optax.GradientTransformation(init_fn, update_fn)


@register("shampoo")
def shampoo(*, learning_rate: Any, b1: float = 0.9, b2: float = 0.95, eps: float = 1e-6,
            relative_eps: bool = True, weight_decay: float = 0.0, nesterov: bool = False,
            block_size: int | None = 1024, max_preconditioner_dim: int | None = 4096,
            graft_only_dim: int = 1_000_000, merge_small_dims: bool = True,
            precondition_every: int = 10, statistics_every: int = 1,
            start_preconditioning_step: int = 25, grafting: str = "adam",
            graft_eps: float = 1e-8, root_method: str = "newton",
            root_override: int | None = None, newton_iters: int = 100, newton_tol: float = 1e-6,
            failure_threshold: float = 0.1,
            batch_axes: Any | None = None) -> optax.GradientTransformation:
  """Shampoo with grafting, momentum and decoupled weight decay.

  L_i <- b2 L_i + (1 - b2) G_(i) G_(i)^T;  P_i = (L_i + eps I)^(-1/(2k))  (k: the block's rank)
  S = m x_1 P_1 ... x_k P_k  (L^(-1/4) m R^(-1/4) for a matrix; m: the momentum)
  update = -lr * (S |d| / |S| + weight_decay * theta)  (d: the grafting direction)
  Blocking, root schedule and fallbacks: the module docstring.

  Args:
    learning_rate: float or optax schedule.
    b1: momentum of the gradient (bias-corrected); 0 disables it.
    b2: decay of the factor statistics (1: the paper's plain sums) and of the grafting
      second moment.
    eps: ridge added to every factor before its root (the paper's epsilon).
    relative_eps: whether the ridge is `eps * lambda_max(factor)` (else `eps`).
    weight_decay: decoupled weight decay, multiplied by the learning rate.
    nesterov: Nesterov momentum (NAdam form).
    block_size: dimensions above it are split into blocks of this size (None: never).
    max_preconditioner_dim: dimensions above it get no factor (None: no limit).
    graft_only_dim: leaves with a dimension at or above it use the grafting direction only.
    merge_small_dims: merge consecutive dimensions while their product is <= block_size.
    precondition_every: steps between root computations.
    statistics_every: steps between factor updates.
    start_preconditioning_step: first step (from 1) that uses the Shampoo direction.
    grafting: "none", "sgd", "adagrad", "rmsprop" or "adam".
    graft_eps: epsilon of the grafting denominator.
    root_method: "newton" (coupled Newton iteration) or "eigh".
    root_override: p for every factor instead of 2k (2: L^{-1/2} G R^{-1/2}); None: 2k.
    newton_iters: Newton iteration limit.
    newton_tol: Newton stopping tolerance on max|X^p A - I|.
    failure_threshold: a root whose residual exceeds this is rejected (previous one kept).
    batch_axes: per leaf, its number of leading batch axes (a function `(path, leaf) -> int`
      or a pytree of ints; None: 0 everywhere): each index along them is preconditioned as a
      tensor of its own (`blocking.py`). The trainer sets it for the pipeline's stacked
      layers, so that stacking them does not change the optimizer.

  Returns:
    optax.GradientTransformation (state: ShampooState, weight decay, learning rate and
    `nonfinite.NonfiniteState`).

  Parity: pytorch_optimizer.Shampoo (tests/parity/test_pytorch_optimizer.py), the paper's Algorithm
  (matrices only) with b1=0, b2=1, eps=1e-6, relative_eps=False, grafting="none",
  start_preconditioning_step=1, precondition_every=1, root_method="eigh", no blocking.

  References:
    Gupta, Koren & Singer 2018, arXiv 1802.09568; Anil et al. 2020, arXiv 2002.09018.
  """
  return nonfinite.guard(
      scale_by_shampoo(
          b1=b1, b2=b2, eps=eps, relative_eps=relative_eps, nesterov=nesterov,
          block_size=block_size, max_preconditioner_dim=max_preconditioner_dim,
          graft_only_dim=graft_only_dim, merge_small_dims=merge_small_dims,
          precondition_every=precondition_every, statistics_every=statistics_every,
          start_preconditioning_step=start_preconditioning_step, grafting=grafting,
          graft_eps=graft_eps, root_method=root_method, root_override=root_override,
          newton_iters=newton_iters,
          newton_tol=newton_tol, failure_threshold=failure_threshold,
          batch_axes=batch_axes),
      (optax.add_decayed_weights(weight_decay) if _hparams.nonzero(weight_decay)
       else optax.identity()),
      optax.scale_by_learning_rate(learning_rate),
  )
