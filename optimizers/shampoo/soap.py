"""SOAP: Adam run in the eigenbasis of Shampoo's Kronecker factors.

Per block G (a matrix: factors L, R with orthogonal bases Q_L, Q_R; rank k: one per dim):
  step 1:  L = (1 - sb) G G^T, R = (1 - sb) G^T G  (the moving average from zero; sb =
           shampoo_b2, default b2);  Q_L, Q_R = their eigenvectors (eigenvalues descending);
           no step, no weight decay (the basis never contains the gradient it is applied to).
  step t:  s = t - 1 (Adam's step)
           mu <- b1 mu + (1 - b1) G                     (original space)
           G' = Q_L^T G Q_R;   M' = Q_L^T m Q_R          (m = mu / (1 - b1^s))
           nu <- b2 nu + (1 - b2) G'^2                  (rotated space)
           d = Q_L (M' / (sqrt(nu) + eps)) Q_R^T * sqrt(1 - b2^s)
           theta <- (theta - lr d)(1 - lr wd)
           L <- sb L + (1 - sb) G G^T,  R likewise
           every `precondition_every` Adam steps, per factor: order Q's columns by the
             estimated eigenvalues diag(Q^T L Q) (descending, nu permuted alike), then
             Q <- QR(L Q) (one power-iteration step warm-started from Q).
With `start_preconditioning_step` N > 1, steps 1..N-1 are Adam (Q = I) while L, R accumulate
and step N computes the first bases as step 1 does; `statistics_every` k updates L, R only at
steps 1, 1 + k, ... (as Meta's Distributed Shampoo does for its eigenvalue-corrected variant).
Leaves without factors (rank <= 1, embeddings; see blocking.py) run plain Adam with the same
bias correction and eps, and also stand still at step 1. On a mesh (in
context, see optimizers/owner.py) each device computes the eigenbases and QR refreshes of 1/N
of the blocks; the state's stacks are split along the block axis. Written by
hand: no library has SOAP in JAX; the moments follow optax's Adam. The registry entry is
wrapped in `nonfinite.guard`: a step whose gradient (NaN, Inf, or so large that G G^T or G'^2
overflows float32), update or new state (moments, factors, bases) is not finite is skipped
whole and counted in `metrics`.

Conventions follow the authors' code (nikhilvyas/SOAP `soap.py`, 2025, and its port in
`pytorch_optimizer` 4.1 `SOAP`), where it differs from the paper's Algorithm 3: the factors'
average starts from zero (L_1 = (1 - sb) G G^T, not G G^T: a full first step gives the first
gradient 1 / (1 - sb) times the weight of every later one, 1000x at sb = 0.999, and holds the
basis on it for hundreds of steps; `first_step_statistics="full"` keeps that behaviour); eps
is added to sqrt(nu) and the bias corrections scale the step, lr sqrt(1 - b2^s) / (1 - b1^s)
(the paper's text: eps on sqrt(nu / (1 - b2^s))); the decoupled weight decay multiplies the
already-moved parameters, theta <- (theta - lr d)(1 - lr wd) (optax's -lr (d + wd theta) is
lr^2 wd d apart per step), and is not applied at the basis step.
Parity: `pytorch_optimizer` 4.1.0 `SOAP` on full-rank square blocks
(tests/parity/test_authors.py).

References:
  Vyas et al., "SOAP: Improving and Stabilizing Shampoo using Adam", arXiv 2409.11321, 2024.
"""

from __future__ import annotations

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
from optimizers.shampoo import layout as layout_lib
from optimizers.shampoo import linalg
from optimizers.shampoo import statistics
from optimizers.shampoo.shampoo import momentum


class SoapState(NamedTuple):
  count: jax.Array  # int32, steps taken (the first one only initializes the bases)
  mu: Any  # first moment, original space (params-shaped, float32)
  nu: Any  # second moment, each block in its rotated space (params-shaped, float32)
  stats: dict[str, tuple[jax.Array, ...]]  # per block group: its factors (n, d, d)
  bases: dict[str, tuple[jax.Array, ...]]  # per block group: the eigenbases (n, d, d)


@partition.register(SoapState)
def _partition_specs(state: SoapState, path: tuple, ctx: partition.Context) -> SoapState:
  """Moments follow their parameters; factor stacks split along the block axis."""
  return layout_lib.state_specs(state, path, ctx, stacks=("stats", "bases"))


def order_by_estimate(factor: jax.Array, basis: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The power-iteration product L Q of a stack (n, d, d), columns by descending diag(Q^T L Q).

  Returns:
    (L Q with its columns reordered, order (n, d)): `order` tells how the rotated coordinates
    were permuted. The new basis is the Q factor of the first output (`linalg.qr_orthogonal`).
  """
  lq = jnp.matmul(factor, basis, precision=lax.Precision.HIGHEST)
  estimate = jnp.sum(basis * lq, axis=-2)
  order = jnp.argsort(-estimate, axis=-1, stable=True)
  return jnp.take_along_axis(lq, order[:, None, :], axis=-1), order


def scale_by_soap(*, b1: float = 0.95, b2: float = 0.95, eps: float = 1e-8,
                  weight_decay: float = 0.0, learning_rate: Any = None,
                  shampoo_b2: float | None = None,
                  nesterov: bool = False, first_step_statistics: str = "ema",
                  block_size: int | None = 1024, max_preconditioner_dim: int | None = 4096,
                  graft_only_dim: int = 1_000_000, merge_small_dims: bool = True,
                  precondition_every: int = 10, statistics_every: int = 1,
                  start_preconditioning_step: int = 1,
                  batch_axes: Any | None = None) -> optax.GradientTransformation:
  """The SOAP direction d of the module docstring, plus the weight decay (no learning rate).

  With `weight_decay`, the output is d + wd (theta - lr d), lr = `learning_rate` at this step
  (a float or schedule, the one the chain scales by afterwards), so that -lr times it moves
  theta to (theta - lr d)(1 - lr wd) as the authors' code does; nothing at the basis step.

  Args: as `soap`.

  Returns:
    An optax.GradientTransformation with state `SoapState`.
  """
  layout_lib.check_schedule(precondition_every=precondition_every,
                            statistics_every=statistics_every,
                            start_preconditioning_step=start_preconditioning_step)
  if _hparams.nonzero(weight_decay) and learning_rate is None:
    raise ValueError("scale_by_soap: weight_decay needs the learning_rate it is scaled by")
  if first_step_statistics not in ("ema", "full"):
    raise ValueError(f"soap: first_step_statistics={first_step_statistics!r}: expected 'ema' "
                     "(the authors' code: L = (1 - shampoo_b2) G G^T at step 1) or 'full' "
                     "(L = G G^T)")
  start = start_preconditioning_step
  sb = b2 if shampoo_b2 is None else shampoo_b2
  layout_of = layout_lib.layout_fn(
      block_size=block_size, max_preconditioner_dim=max_preconditioner_dim,
      graft_only_dim=graft_only_dim, merge_small_dims=merge_small_dims, batch_axes=batch_axes)

  def init_fn(params):
    dtype = statistics.state_dtype(params)  # float32 (float64 only for float64 parameters)
    stats, bases = layout_lib.init_factors(layout_of(params), dtype)
    return SoapState(count=jnp.zeros([], jnp.int32), mu=layout_lib.zeros(params, dtype),
                     nu=layout_lib.zeros(params, dtype), stats=stats, bases=bases)

  def update_fn(updates, state, params=None):
    if _hparams.nonzero(weight_decay) and params is None:
      raise ValueError("soap: weight_decay needs update(..., params)")
    leaves, treedef = jax.tree.flatten(updates)
    layout = layout_of(updates)
    count = optax.safe_increment(state.count)
    dtype = statistics.state_dtype(updates)
    grads = [g.astype(dtype) for g in leaves]
    g_blocks = layout.gather(grads)

    def first_step(state):
      # The authors' code: the average from zero, L = (1 - sb) G G^T (the same basis as G G^T,
      # but later gradients weigh as much as the first). "full": L = G G^T, as the paper
      # writes step 1. A later start adds to the factors accumulated so far.
      full = start == 1 and first_step_statistics == "full"
      stats = statistics.update_groups(state.stats, g_blocks, layout.dims, 0.0 if full else sb)
      # Every factor's eigenvectors (linalg.py: no CPU deadlock), descending.
      # On a mesh each device decomposes the blocks it owns (owner.py).
      keys = [(k, j) for k, v in stats.items() for j in range(len(v))]
      eig = dict(zip(keys, owner.apply_on_owners(linalg.eigh, [stats[k][j] for k, j in keys])))
      bases = {k: tuple(jnp.flip(eig[k, j][1], axis=-1) for j in range(len(v)))
               for k, v in stats.items()}
      return [jnp.zeros_like(g) for g in grads], state._replace(stats=stats, bases=bases)

    def adam_step(state):
      s = count - (count > start).astype(count.dtype)  # Adam's step: step `start` is no move
      mu, m = momentum(treedef.flatten_up_to(state.mu), grads, b1=b1, nesterov=nesterov,
                       count=s)
      nu_leaves = treedef.flatten_up_to(state.nu)
      # The authors' code: eps on sqrt(nu); sqrt(1 - b2^s) scales the step.
      debias = jnp.sqrt(1.0 - b2 ** s.astype(dtype))
      rotate = lambda blocks, k, back=False: statistics.batched_mode_products(
          blocks, state.bases[k], layout.dims[k], transpose=back)
      m_blocks, nu_blocks = layout.gather(m), layout.gather(nu_leaves)
      directions, new_nu = {}, {}
      for k in layout.members:
        nu_k = b2 * nu_blocks[k] + (1.0 - b2) * jnp.square(rotate(g_blocks[k], k))
        directions[k] = rotate(rotate(m_blocks[k], k) / (jnp.sqrt(nu_k) + eps), k,
                               back=True)
        new_nu[k] = nu_k
      update_stats = lambda st: statistics.update_groups(st, g_blocks, layout.dims, sb)
      if statistics_every == 1:
        stats = update_stats(state.stats)
      else:
        stats = lax.cond((count - 1) % statistics_every == 0, update_stats, lambda st: st,
                         state.stats)

      def refresh(bases, nu):
        nu = dict(nu)
        keys = [(k, j) for k, dims in layout.dims.items() for j in range(len(dims))]

        def power_step(pairs):
          ordered = [order_by_estimate(f, q) for f, q in pairs]
          # linalg.py: QRs that cannot deadlock the CPU runtime.
          return list(zip(linalg.qr_orthogonal([lq for lq, _ in ordered]),
                          [o for _, o in ordered]))

        # On a mesh each device refreshes the blocks it owns (owner.py).
        refreshed = owner.apply_on_owners(power_step,
                                          [(stats[k][j], bases[k][j]) for k, j in keys])
        for (k, j), (_, order) in zip(keys, refreshed):
          d = layout.dims[k][j]
          index = order.reshape(order.shape[:1] + (1,) * d + order.shape[1:]
                                + (1,) * (nu[k].ndim - d - 2))
          nu[k] = jnp.take_along_axis(nu[k], index, axis=d + 1)
        q = {key: qk for key, (qk, _) in zip(keys, refreshed)}
        return {k: tuple(q[k, j] for j in range(len(dims)))
                for k, dims in layout.dims.items()}, nu

      due = (count > start) & ((count - start) % precondition_every == 0)
      bases, new_nu = lax.cond(due, refresh, lambda b, n: (b, n), state.bases, new_nu)
      # Leaves without factors: plain Adam.
      plain_nu = [b2 * n + (1.0 - b2) * jnp.square(g) for n, g in zip(nu_leaves, grads)]
      out, nu = [], []
      for i, (d, n) in enumerate(zip(layout.scatter(directions), layout.scatter(new_nu))):
        out.append(debias * (m[i] / (jnp.sqrt(plain_nu[i]) + eps) if d is None else d))
        nu.append(plain_nu[i] if n is None else n)
      if _hparams.nonzero(weight_decay):
        # The same lr as optax.scale_by_learning_rate's at this step (its count is ours).
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        lr = jnp.asarray(lr, dtype)
        p_leaves = treedef.flatten_up_to(params)
        out = [o + weight_decay * (p.astype(dtype) - lr * o)
               for o, p in zip(out, p_leaves)]
      return out, SoapState(count, treedef.unflatten(mu), treedef.unflatten(nu), stats, bases)

    out, new_state = lax.cond(count == start, first_step, adam_step, state)
    new_state = new_state._replace(count=count)
    return treedef.unflatten([o.astype(g.dtype) for o, g in zip(out, leaves)]), new_state

  return optax.GradientTransformation(init_fn, update_fn)


@register("soap")
def soap(*, learning_rate: Any, b1: float = 0.95, b2: float = 0.95, eps: float = 1e-8,
         weight_decay: float = 0.0, shampoo_b2: float | None = None, nesterov: bool = False,
         first_step_statistics: str = "ema",
         block_size: int | None = 1024, max_preconditioner_dim: int | None = 4096,
         graft_only_dim: int = 1_000_000, merge_small_dims: bool = True,
         precondition_every: int = 10, statistics_every: int = 1,
         start_preconditioning_step: int = 1,
         batch_axes: Any | None = None) -> optax.GradientTransformation:
  """SOAP (Adam in Shampoo's eigenbasis) with decoupled weight decay.

  G' = Q_L^T G Q_R;  M' = Q_L^T m Q_R;  nu <- b2 nu + (1 - b2) G'^2  (Q: the factors' bases)
  d = Q_L (M' / (sqrt(nu) + eps)) Q_R^T sqrt(1 - b2^s);  theta <- (theta - lr d)(1 - lr wd)
  L <- sb L + (1 - sb) G G^T, R likewise;  every `precondition_every` steps Q <- QR(L Q).
  Step 1 (the first basis) and the conventions: the module docstring.

  Args:
    learning_rate: float or optax schedule.
    b1: Adam's first-moment decay (original space).
    b2: Adam's second-moment decay (rotated space).
    eps: Adam's epsilon.
    weight_decay: decoupled weight decay, multiplied by the learning rate (not at the step
      that computes the first basis).
    shampoo_b2: decay of the Kronecker factors (None: b2, as in the paper).
    nesterov: Nesterov momentum (NAdam form) on the first moment.
    first_step_statistics: "ema" (the authors' code: the factors' moving average starts from
      zero, L = (1 - shampoo_b2) G G^T at step 1) or "full" (L = G G^T, this project's
      behaviour before 2026-12).
    block_size: dimensions above it are split into blocks of this size (None: never).
    max_preconditioner_dim: dimensions above it are not rotated (None: no limit).
    graft_only_dim: leaves with a dimension at or above it run plain Adam.
    merge_small_dims: merge consecutive dimensions while their product is <= block_size.
    precondition_every: steps between basis refreshes (counted from the first basis).
    statistics_every: the factors are updated at steps 1, 1 + k, 1 + 2k, ...
    start_preconditioning_step: the step that computes the first eigenbasis and does not move
      (the paper: 1); before it, Adam (identity basis) while the factors accumulate.
    batch_axes: leading batch axes of stacked tensors, as in `shampoo` (each index rotated
      as a tensor of its own); None: every leaf is one tensor.

  Returns:
    optax.GradientTransformation (state: SoapState, an empty slot (weight decay moved into
    SoapState's transformation; kept for checkpoints), learning rate and
    `nonfinite.NonfiniteState`).

  References:
    Vyas et al. 2024, arXiv 2409.11321.
  """
  return nonfinite.guard(
      scale_by_soap(b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                    learning_rate=learning_rate, shampoo_b2=shampoo_b2,
                    nesterov=nesterov, first_step_statistics=first_step_statistics,
                    block_size=block_size, max_preconditioner_dim=max_preconditioner_dim,
                    graft_only_dim=graft_only_dim, merge_small_dims=merge_small_dims,
                    precondition_every=precondition_every, statistics_every=statistics_every,
                    start_preconditioning_step=start_preconditioning_step,
                    batch_axes=batch_axes),
      optax.identity(),
      optax.scale_by_learning_rate(learning_rate),
  )
