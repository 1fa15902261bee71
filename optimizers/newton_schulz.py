"""Newton–Schulz orthogonalization: X -> approximately U V^T for X = U S V^T.

Odd polynomial iterations act on every singular value separately: after normalizing X by its
Frobenius norm (so that every singular value is in (0, 1]), each step computes

  X <- a X + (b A + c A^2) X,    A = X X^T,

which maps every singular value s to p(s) = a s + b s^3 + c s^5. Coefficient sets:

  quintic        (3.4445, -4.7750, 2.0315) each step (Jordan et al. 2024): 5 steps leave
                 singular values in about [0.68, 1.13] (for s / ||X||_F above ~1e-2).
  polar_express  one triple per step (Amsel et al. 2025, as used in modded-nanogpt), with the
                 norm inflated by 1.02: 5 steps give [0.86, 1.14] for s / ||X||_F >= 1e-3; each
                 further step applies the classical quintic Newton–Schulz step
                 (15/8, -5/4, 3/8), which converges to 1 (6 steps: within 1% of 1).
  cubic          (1.5, -0.5, 0): the classical Newton–Schulz step; slow but never above 1.

Gram Newton–Schulz (written here; no library has it). For X_0 of shape m x n with m < n every
iterate is X_k = Q_k X_0 with Q_k an m x m polynomial in G = X_0 X_0^T, so the iteration can run
on m x m matrices only: with A_k = X_k X_k^T and P_k = a I + b A_k + c A_k^2,

  Q_{k+1} = P_k Q_k,    A_{k+1} = P_k A_k P_k = P_k (a A_k + b A_k^2 + c A_k^3),

(P_k commutes with A_k), and X_K = Q_K X_0 at the end. A step costs four m^3 products instead
of about 2 m^2 n + m^3 (G and the final product cost m^2 n each, once): 5 quintic steps on
768 x 3072 take 25 m^3 multiply-adds instead of 45. Q_k grows like p'(0)^k (~500 for the
quintic) in the directions of the small singular values, so rounding in A_k is amplified
there: in float32 the result matches the plain iteration to ~1e-5 relative on random
matrices (~5e-4 with singular values spread over 1e-3..1); in bfloat16 it does not hold
without restarts. `gram_restarts` recomputes X = Q X_0 and A = X X^T in float32 before the
listed steps; the default is none in float32 and steps (2, 4) in bfloat16 (error then
comparable to the plain bfloat16 iteration's).

References:
  Jordan et al., "Muon: An optimizer for hidden layers in neural networks", 2024,
  https://kellerjordan.github.io/posts/muon/
  Amsel et al., "The Polar Express: Optimal Matrix Sign Methods and Their Application to the
  Muon Algorithm", 2025, arXiv 2505.16932.
  Higham, "Functions of Matrices: Theory and Computation", SIAM 2008, ch. 8 (Newton–Schulz).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from optimizers import owner

Triple = tuple[float, float, float]

QUINTIC: Triple = (3.4445, -4.7750, 2.0315)
CUBIC: Triple = (1.5, -0.5, 0.0)
NEWTON_SCHULZ_QUINTIC: Triple = (15 / 8, -5 / 4, 3 / 8)
POLAR_EXPRESS: tuple[Triple, ...] = (
    (8.1566, -22.4833, 15.8788),
    (4.0429, -2.8089, 0.5000),
    (3.8917, -2.7725, 0.5061),
    (3.2858, -2.3681, 0.4645),
    (2.3465, -1.7098, 0.4232),
)


class Schedule(NamedTuple):
  """Per-step coefficients and the normalization X / (||X||_F * norm_scale + eps)."""
  coeffs: tuple[Triple, ...]
  norm_scale: float = 1.0
  eps: float = 1e-7


def schedule(ns_coeffs: str | Sequence[Any] = "quintic", ns_steps: int = 5) -> Schedule:
  """Resolves a preset name, one triple, or one triple per step, into `ns_steps` triples.

  Args:
    ns_coeffs: "quintic", "polar_express", "cubic", a triple (a, b, c) used at every step, or a
      sequence of exactly `ns_steps` triples.
    ns_steps: number of iterations.

  Returns:
    A `Schedule`.
  """
  if ns_steps < 1:
    raise ValueError(f"ns_steps must be >= 1, got {ns_steps}")
  if isinstance(ns_coeffs, str):
    if ns_coeffs == "quintic":
      return Schedule((QUINTIC,) * ns_steps)
    if ns_coeffs == "cubic":
      return Schedule((CUBIC,) * ns_steps)
    if ns_coeffs == "polar_express":
      extra = (NEWTON_SCHULZ_QUINTIC,) * max(0, ns_steps - len(POLAR_EXPRESS))
      return Schedule(POLAR_EXPRESS[:ns_steps] + extra, norm_scale=1.02, eps=1e-6)
    raise ValueError(
        f"unknown ns_coeffs preset {ns_coeffs!r}; choose quintic, polar_express or cubic")
  arr = np.asarray(ns_coeffs, dtype=np.float64)
  if arr.shape == (3,):
    arr = np.broadcast_to(arr, (ns_steps, 3))
  if arr.shape != (ns_steps, 3):
    raise ValueError(
        f"ns_coeffs must be a preset name, a triple or {ns_steps} triples; got shape {arr.shape}")
  return Schedule(tuple(tuple(float(v) for v in row) for row in arr))


def _matmul(x, y, dtype, *, transpose_y: bool = False):
  """Batched x @ y (or x @ y^T, without materializing the transpose); float32 accumulation.

  float32 inputs ask for full precision: GPUs would otherwise use TF32 products.
  """
  contract_y = 2 if transpose_y else 1
  dims = (((2,), (contract_y,)), ((0,), (0,)))
  precision = jax.lax.Precision.HIGHEST if dtype == jnp.float32 else None
  return jax.lax.dot_general(x.astype(dtype), y.astype(dtype), dims, precision=precision,
                             preferred_element_type=jnp.float32)


def _plain(x, coeffs, dtype):
  for a, b, c in coeffs:
    gram = _matmul(x, x, dtype, transpose_y=True)
    poly = b * gram + c * _matmul(gram, gram, dtype)
    x = a * x + _matmul(poly, x, dtype)
  return x


def _gram(x0, coeffs, dtype, restarts):
  eye = jnp.eye(x0.shape[1], dtype=jnp.float32)
  gram = _matmul(x0, x0, dtype, transpose_y=True)  # A_0 = X_0 X_0^T
  q = None  # None stands for the identity.
  last = len(coeffs) - 1
  for k, (a, b, c) in enumerate(coeffs):
    if k in restarts and q is not None:
      x0, q = _matmul(q, x0, jnp.float32), None
      gram = _matmul(x0, x0, jnp.float32, transpose_y=True)
    gram2 = _matmul(gram, gram, dtype)
    p = a * eye + b * gram + c * gram2
    q = p if q is None else _matmul(p, q, dtype)
    if k < last:
      gram = _matmul(p, a * gram + b * gram2 + c * _matmul(gram2, gram, dtype), dtype)
      gram = 0.5 * (gram + jnp.swapaxes(gram, 1, 2))  # round-off breaks the symmetry
  return x0 if q is None else _matmul(q, x0, dtype)


def _frobenius_norm(x3: jax.Array) -> jax.Array:
  """||X||_F of each matrix of a (B, m, n) stack, (B, 1, 1); no overflow for finite X.

  sum(X^2) overflows float32 once |X| reaches about 1e19 / sqrt(mn), and X / inf would be a
  silent zero step; those matrices are scaled by max|X| first. Others keep the plain sum, so
  their result is unchanged bit for bit. A NaN or Inf element still gives NaN.
  """
  norm = jnp.sqrt(jnp.sum(jnp.square(x3), axis=(1, 2), keepdims=True))
  peak = jnp.max(jnp.abs(x3), axis=(1, 2), keepdims=True)
  unit = x3 / jnp.where(peak > 0, peak, 1.0)
  scaled = peak * jnp.sqrt(jnp.sum(jnp.square(unit), axis=(1, 2), keepdims=True))
  return jnp.where(jnp.isfinite(norm), norm, scaled)


def orthogonalize(x: jax.Array, *, ns_coeffs: str | Sequence[Any] = "quintic",
                  ns_steps: int = 5, ns_dtype: Any = jnp.float32, gram: bool = False,
                  gram_restarts: Sequence[int] | None = None) -> jax.Array:
  """Approximate orthogonal factor U V^T of each matrix in `x` by Newton–Schulz.

  X <- X / (||X||_F s + eps);  repeat: X <- a X + (b A + c A^2) X,  A = X X^T  (see module doc).
  ||X||_F is computed without overflow for any finite X (`_frobenius_norm`), so a huge X is
  orthogonalized like X / max|X| instead of collapsing to zero.

  Args:
    x: array of shape (..., m, n); leading axes are batch axes. Tall matrices are transposed
      internally so the iteration always runs on the smaller side.
    ns_coeffs: preset name or coefficients (see `schedule`).
    ns_steps: number of iterations.
    ns_dtype: dtype of the matrix-product inputs (float32 or bfloat16); products accumulate in
      float32 and the iterate is kept in float32 between steps.
    gram: iterate on the m x m Gram matrix (cheaper when n is well above m, about n > 1.5 m).
    gram_restarts: steps (from 0) before which the Gram iteration recomputes X and X X^T in
      float32; None: none for float32, (2, 4) for lower precision.

  Returns:
    An array of the shape and dtype of `x`.
  """
  if x.ndim < 2:
    raise ValueError(f"orthogonalize needs a matrix (..., m, n); got shape {x.shape}")
  sched = schedule(ns_coeffs, ns_steps)
  lead, (m, n) = x.shape[:-2], x.shape[-2:]
  x3 = x.reshape((-1, m, n)).astype(jnp.float32)
  tall = m > n
  if tall:
    x3 = jnp.swapaxes(x3, 1, 2)
  x3 = x3 / (_frobenius_norm(x3) * sched.norm_scale + sched.eps)
  dtype = jnp.dtype(ns_dtype)
  if gram:
    if gram_restarts is None:
      gram_restarts = () if dtype == jnp.float32 else (2, 4)
    y = _gram(x3, sched.coeffs, dtype, frozenset(gram_restarts))
  else:
    y = _plain(x3, sched.coeffs, dtype)
  if tall:
    y = jnp.swapaxes(y, 1, 2)
  return y.reshape(lead + (m, n)).astype(x.dtype)


def orthogonalize_many(xs: Sequence[jax.Array], *, gram_min_aspect: float | None = None,
                       **kwargs) -> list[jax.Array]:
  """`orthogonalize` on a list of (B_i, m_i, n_i) stacks, one batched call per matrix shape.

  Stacks whose matrices have the same shape up to transposition, and the same dtype, are
  concatenated along the batch axis and orthogonalized together.

  Args:
    xs: arrays of shape (B_i, m_i, n_i).
    gram_min_aspect: if set, matrices with max(m, n) / min(m, n) >= this use the Gram iteration.
    **kwargs: passed to `orthogonalize` (ns_coeffs, ns_steps, ns_dtype, gram_restarts).

  Returns:
    The orthogonalized arrays, in the order of `xs`.
  """
  groups: dict[tuple, list[int]] = {}
  for i, x in enumerate(xs):
    if x.ndim != 3:
      raise ValueError(f"orthogonalize_many needs (B, m, n) stacks; got shape {x.shape}")
    m, n = x.shape[1:]
    groups.setdefault((min(m, n), max(m, n), jnp.dtype(x.dtype)), []).append(i)
  out: list[Any] = [None] * len(xs)
  for (small, big, _), idx in groups.items():
    wide = [xs[i] if xs[i].shape[1] == small else jnp.swapaxes(xs[i], 1, 2) for i in idx]
    use_gram = gram_min_aspect is not None and big >= gram_min_aspect * small
    # On a mesh (in context) each device orthogonalizes the matrices it owns (owner.py).
    y = owner.apply_on_owners(functools.partial(orthogonalize, gram=use_gram, **kwargs),
                              jnp.concatenate(wide) if len(wide) > 1 else wide[0])
    start = 0
    for i, w in zip(idx, wide):
      part = y[start:start + w.shape[0]]
      start += w.shape[0]
      out[i] = part if xs[i].shape[1] == small else jnp.swapaxes(part, 1, 2)
  return out
