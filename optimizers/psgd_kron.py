"""PSGD-Kron: momentum preconditioned by Kronecker factors fitted with the PSGD criterion.

For each tensor G (d dims) the preconditioner is P = kron(Q_1^T Q_1, ..., Q_d^T Q_d), each Q_i
upper triangular (size x size) or diagonal (a vector: for dims of size 1, above
`max_size_triangular`, of tensors with fewer than `min_ndim_triangular` dims, or chosen by
`memory_save_mode`). With probability p(t) per step (made deterministic: every ceil(1/p) steps)
the factors take one step on Li's criterion E[h^T P h + v^T P^{-1} v] with a random probe V:

  h = m + sqrt(eps_f32) mean|m| V          (m: bias-corrected momentum, damped by the probe;
                                            `damping=False`: h = m)
  A = h x_i Q_i (all i),   B = V x_i Q_i^{-T} (all i)
  T1_i = A_(i) A_(i)^T,    T2_i = B_(i) B_(i)^T      (mode-i Gram matrices; diagonals if diag)
  Q_i <- Q_i - lr_p triu(T1_i - T2_i) Q_i / ||T1_i + T2_i||   (triangular; ||.|| a lower bound
                                                              of the spectral norm)
  q_i <- q_i - lr_p (T1_i - T2_i) q_i / max|T1_i + T2_i|      (diagonal)

then the update is u = P m, scaled down to an RMS of at most 1.1, plus weight decay, times the
learning rate. With probability 0.01 per preconditioner update the factors are rebalanced to
equal max-norms (P unchanged). p(t) = clip(exp(-decay (t - flat_start)), min_prob, 1): 1.0 for
500 steps, then down to 0.03 (kron's default).

Random numbers come from a key in the state, seeded by `seed`; `step_randomness` is the one
place that draws them, so a reference can be fed the same probes.

Written from the psgd_jax 0.2.9 `kron` algorithm (which does not import with optax 0.2.8); the
spectral-norm lower bound is the Hermitian case of its `_norm_lower_bound`, ||S^3 e_j|| /
||S^2 e_j|| for the row j of largest norm, since T1 + T2 is symmetric.

References:
  Li, "Preconditioned Stochastic Gradient Descent", IEEE TNNLS 2018, arXiv 1512.04202.
  Li, "Black Box Lie Group Preconditioners for SGD", 2022, arXiv 2211.04422 (Kron factors).
  Walters, psgd_jax `kron` (github.com/evanatyourservice/psgd_jax), as on the NanoGPT speedrun's
  optimizer track.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optimizers import nonfinite
from optimizers._registry import register
from optimizers.shampoo import linalg

MEMORY_SAVE_MODES = (None, "one_diag", "all_diag")
BALANCE_PROBABILITY = 0.01
DAMPING = float(np.sqrt(np.finfo(np.float32).eps))
TINY = float(np.finfo(np.float32).tiny)
RMS_CAP = 1.1


class ScaleByKronState(NamedTuple):
  count: jax.Array  # steps taken
  key: jax.Array  # raw uint32 PRNG key (orbax-friendly)
  update_counter: jax.Array  # steps since the last preconditioner update
  mu: Any  # momentum, per leaf
  qs: Any  # per leaf, a tuple of factors: (size, size) upper triangular or (size,) diagonal


def update_probability_schedule(max_prob: float = 1.0, min_prob: float = 0.03,
                                decay: float = 0.001, flat_start: int = 500
                                ) -> Callable[[jax.Array], jax.Array]:
  """p(n) = clip(max_prob exp(-decay (n - flat_start)), min_prob, max_prob) (kron's default)."""
  return lambda n: jnp.minimum(
      jnp.maximum(max_prob * jnp.exp(-decay * (n - flat_start)), min_prob), max_prob)


def diagonal_dims(shape: tuple[int, ...], *, max_size_triangular: int,
                  min_ndim_triangular: int, memory_save_mode: str | None) -> list[bool]:
  """Which dims of a tensor get a diagonal factor (a scalar is one diagonal dim of size 1)."""
  if memory_save_mode not in MEMORY_SAVE_MODES:
    raise ValueError(f"unknown memory_save_mode {memory_save_mode!r}; choose from "
                     f"{MEMORY_SAVE_MODES}")
  shape = shape or (1,)
  forced = [memory_save_mode == "all_diag"] * len(shape)
  if memory_save_mode == "one_diag":
    forced[int(np.argsort(shape)[::-1][0])] = True  # the largest (last of equals)
  return [f or size == 1 or size > max_size_triangular or len(shape) < min_ndim_triangular
          for f, size in zip(forced, shape)]


def step_randomness(key: jax.Array, shapes: list[tuple[int, ...]]
                    ) -> tuple[jax.Array, jax.Array, list[jax.Array]]:
  """(next key, whether to rebalance, one standard normal float32 probe per leaf shape)."""
  key, step_key = jax.random.split(key)
  balance_key, probe_key = jax.random.split(step_key)
  probe_keys = jax.random.split(probe_key, len(shapes))
  probes = [jax.random.normal(k, s, jnp.float32) for k, s in zip(probe_keys, shapes)]
  return key, jax.random.uniform(balance_key) < BALANCE_PROBABILITY, probes


def _along(x: jax.Array, q: jax.Array, axis: int, transpose: bool = False) -> jax.Array:
  """x with factor q applied along `axis`: diagonal q scales, a matrix multiplies (q or q^T)."""
  if q.ndim == 1:
    return x * q.reshape((-1,) + (1,) * (x.ndim - 1 - axis))
  return jnp.moveaxis(jnp.tensordot(q.T if transpose else q, x, axes=(1, axis)), 0, axis)


def _solve_transposed_along(x: jax.Array, q: jax.Array, axis: int) -> jax.Array:
  """x with q^{-T} applied along `axis` (one 2-D triangular solve: no batched LAPACK call,
  also under vmap: linalg.solve_upper_transposed)."""
  if q.ndim == 1:
    return x / q.reshape((-1,) + (1,) * (x.ndim - 1 - axis))
  moved = jnp.moveaxis(x, axis, 0)
  flat = moved.reshape(moved.shape[0], -1)
  solved = linalg.solve_upper_transposed(q, flat)
  return jnp.moveaxis(solved.reshape(moved.shape), 0, axis)


def _gram(x: jax.Array, axis: int, diagonal: bool) -> jax.Array:
  """Mode-`axis` Gram matrix X_(i) X_(i)^T, or only its diagonal."""
  flat = jnp.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)
  return jnp.sum(flat * flat, axis=1) if diagonal else flat @ flat.T


def _norm_lower_bound_sym(s: jax.Array) -> jax.Array:
  """||S^3 e_j|| / ||S^2 e_j|| <= ||S||_2 for symmetric S, j its row of largest norm; 0 if S = 0."""
  max_abs = jnp.max(jnp.abs(s))
  safe = jnp.where(max_abs > 0, max_abs, 1.0)
  s = s / safe
  j = jnp.argmax(jnp.sum(s * s, axis=1))
  x = s[:, j] @ s
  x = x / jnp.where(max_abs > 0, jnp.linalg.norm(x), 1.0)
  return jnp.where(max_abs > 0, max_abs * jnp.linalg.norm(x @ s), 0.0)


def update_factors(qs: tuple[jax.Array, ...], h: jax.Array, v: jax.Array,
                   precond_lr: float) -> tuple[jax.Array, ...]:
  """One step of every factor of one tensor on the PSGD criterion (module docstring)."""
  a, b = h, v
  for i, q in enumerate(qs):
    a = _along(a, q, i)
    b = _solve_transposed_along(b, q, i)
  new = []
  for i, q in enumerate(qs):
    t1, t2 = _gram(a, i, q.ndim == 1), _gram(b, i, q.ndim == 1)
    if q.ndim == 1:
      new.append(q - precond_lr * (t1 - t2) * q / (jnp.max(jnp.abs(t1 + t2)) + TINY))
    else:
      new.append(q - precond_lr * jnp.triu(t1 - t2) @ q / (_norm_lower_bound_sym(t1 + t2) + TINY))
  return tuple(new)


def _balance(qs: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
  """Equal max-norms across a tensor's factors (their product, hence P, unchanged)."""
  if len(qs) < 2:
    return qs
  norms = jnp.stack([jnp.max(jnp.abs(q)) for q in qs])
  gmean = jnp.prod(norms) ** (1.0 / len(qs))
  return tuple(q * (gmean / n) for q, n in zip(qs, norms))


def precondition(qs: tuple[jax.Array, ...], g: jax.Array) -> jax.Array:
  """P g with P = kron(Q_i^T Q_i)."""
  for i, q in enumerate(qs):
    g = _along(_along(g, q, i), q, i, transpose=True)
  return g


def scale_by_kron(*, b1: float = 0.9, preconditioner_update_probability: Any = None,
                  max_size_triangular: int = 8192, min_ndim_triangular: int = 2,
                  memory_save_mode: str | None = None, momentum_into_precond_update: bool = True,
                  preconditioner_lr: float = 0.1, preconditioner_init_scale: float = 1.0,
                  mu_dtype: Any = None, seed: int = 0,
                  damping: bool = True) -> optax.GradientTransformation:
  """PSGD-Kron's preconditioned, RMS-capped direction (module docstring); see `psgd_kron`."""
  prob = preconditioner_update_probability
  if prob is None:
    prob = update_probability_schedule()
  dims = lambda shape: diagonal_dims(shape, max_size_triangular=max_size_triangular,
                                     min_ndim_triangular=min_ndim_triangular,
                                     memory_save_mode=memory_save_mode)
  dims(())  # validates memory_save_mode now

  def init_factors(x):
    shape = x.shape or (1,)
    scale = preconditioner_init_scale ** (1.0 / len(shape))
    return tuple(scale * (jnp.ones(n) if diag else jnp.eye(n))
                 for n, diag in zip(shape, dims(x.shape)))

  def init_fn(params):
    return ScaleByKronState(
        count=jnp.zeros([], jnp.int32), key=jax.random.PRNGKey(seed),
        update_counter=jnp.zeros([], jnp.int32),
        mu=jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype if mu_dtype is None else mu_dtype),
                        params),
        qs=jax.tree.map(init_factors, params))

  def update_fn(updates, state, params=None):
    del params
    count = optax.safe_increment(state.count)
    leaves, treedef = jax.tree.flatten(updates)
    grads = [g.astype(jnp.float32).reshape(g.shape or (1,)) for g in leaves]
    mus = [b1 * m.astype(jnp.float32).reshape(g.shape) + (1.0 - b1) * g
           for m, g in zip(treedef.flatten_up_to(state.mu), grads)]
    moms = [m / (1.0 - b1**count.astype(jnp.float32)) for m in mus]
    qs = treedef.flatten_up_to(state.qs)

    key, do_balance, probes = step_randomness(state.key, [g.shape for g in grads])
    p = prob(count) if callable(prob) else prob
    counter = optax.safe_increment(state.update_counter)
    do_update = counter >= 1.0 / p
    counter = jnp.where(do_update, 0, counter)

    def fit(qs):
      qs = jax.lax.cond(do_balance, lambda q: [_balance(x) for x in q], lambda q: q, qs)
      inputs = moms if momentum_into_precond_update else grads
      damp = DAMPING if damping else 0.0
      return [update_factors(q, x + damp * jnp.mean(jnp.abs(x)) * v, v, preconditioner_lr)
              for q, x, v in zip(qs, inputs, probes)]

    qs = jax.lax.cond(do_update, fit, lambda q: q, qs)
    out = []
    for q, m, g in zip(qs, moms, leaves):
      u = precondition(q, m)
      u = u / jnp.maximum(1.0, jnp.sqrt(jnp.mean(u * u)) / RMS_CAP)
      out.append(u.reshape(g.shape).astype(g.dtype))
    new_mu = [m.reshape(g.shape).astype(old.dtype)
              for m, g, old in zip(mus, leaves, treedef.flatten_up_to(state.mu))]
    return jax.tree.unflatten(treedef, out), ScaleByKronState(
        count=count, key=key, update_counter=counter, mu=jax.tree.unflatten(treedef, new_mu),
        qs=jax.tree.unflatten(treedef, [tuple(q) for q in qs]))

  return optax.GradientTransformation(init_fn, update_fn)


@register("psgd_kron")
def psgd_kron(*, learning_rate: Any, b1: float = 0.9, weight_decay: float = 0.0,
              preconditioner_update_probability: float | None = None,
              update_prob_flat_start: int = 500, update_prob_min: float = 0.03,
              update_prob_decay: float = 0.001, max_size_triangular: int = 8192,
              min_ndim_triangular: int = 2, memory_save_mode: str | None = None,
              momentum_into_precond_update: bool = True, preconditioner_lr: float = 0.1,
              preconditioner_init_scale: float = 1.0, mu_dtype: str | None = None,
              seed: int = 0, damping: bool = True) -> optax.GradientTransformation:
  """PSGD-Kron (Li 2018; Walters' kron): Kronecker-factored PSGD preconditioner on momentum.

  u = clip_rms(P m_hat, 1.1);  theta <- theta - lr * (u + weight_decay * theta), on every leaf.

  Args:
    learning_rate: float or optax schedule.
    b1: momentum (bias-corrected; 0 preconditions the gradient itself).
    weight_decay: decoupled weight decay (multiplied by the learning rate).
    preconditioner_update_probability: a constant probability, or None for the schedule below.
    update_prob_flat_start, update_prob_min, update_prob_decay: the schedule
      clip(exp(-decay (t - flat_start)), min, 1) (kron's 500, 0.03, 0.001).
    max_size_triangular: dims larger than this get a diagonal factor.
    min_ndim_triangular: tensors with fewer dims get diagonal factors only (vectors, scalars).
    memory_save_mode: None, "one_diag" (the largest dim diagonal) or "all_diag".
    momentum_into_precond_update: fit the factors on the momentum (True) or the gradient.
    preconditioner_lr: the factors' step size (0.1).
    preconditioner_init_scale: P starts as this times the identity.
    mu_dtype: momentum dtype (None: the parameter's).
    seed: seeds the probes and rebalancing draws.
    damping: fit the factors on h = x + sqrt(eps_f32) mean|x| V (psgd_jax 0.2.9); False fits
      them on x itself, as pytorch_optimizer's `Kron` (4.1.0) does.

  Parity: pytorch_optimizer.Kron (tests/parity/test_pytorch_optimizer.py), ours with damping=False,
  theirs fed our probes and rebalancing draws (the fit is random by design).

  Returns:
    An `optax.GradientTransformation`.

  References:
    Li, "Preconditioned Stochastic Gradient Descent", 2018, arXiv 1512.04202.
  """
  prob = preconditioner_update_probability
  if prob is None:
    prob = update_probability_schedule(1.0, update_prob_min, update_prob_decay,
                                       update_prob_flat_start)
  return nonfinite.guard(
      scale_by_kron(b1=b1, preconditioner_update_probability=prob,
                    max_size_triangular=max_size_triangular,
                    min_ndim_triangular=min_ndim_triangular, memory_save_mode=memory_save_mode,
                    momentum_into_precond_update=momentum_into_precond_update,
                    preconditioner_lr=preconditioner_lr,
                    preconditioner_init_scale=preconditioner_init_scale,
                    mu_dtype=None if mu_dtype is None else jnp.dtype(mu_dtype), seed=seed,
                    damping=damping),
      optax.add_decayed_weights(weight_decay),
      optax.scale_by_learning_rate(learning_rate),
      check_state=True)
