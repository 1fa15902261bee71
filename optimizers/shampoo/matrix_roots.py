"""Inverse p-th roots of symmetric positive semi-definite matrices, with a failure check.

`(A + r I)^{-1/p}` by the coupled Newton iteration (matrix products only, suited to
accelerators) or by an eigendecomposition. The ridge `r` is `eps` (absolute) or
`eps * lambda_max(A)` (relative; `lambda_max` by power iteration). Written by hand: neither
optax nor JAX has a matrix p-th root.

Every method also returns a residual, small when the root is right, so that the caller can keep
the previous root when a new one fails (`accept`).

References:
  Guo & Higham, "A Schur-Newton method for the matrix p-th root and its inverse",
  SIAM J. Matrix Anal. Appl. 28(3), 2006 (the coupled iteration).
  Anil et al., "Scalable Second Order Optimization for Deep Learning", arXiv 2002.09018, 2020
  (relative ridge, failure fallback).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

METHODS = ("newton", "eigh")
_HIGHEST = lax.Precision.HIGHEST


class RootResult(NamedTuple):
  root: jax.Array  # (d, d)
  residual: jax.Array  # scalar; NaN or large when the root cannot be trusted


def _mm(a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.matmul(a, b, precision=_HIGHEST)


def _power(a: jax.Array, p: int) -> jax.Array:
  """a^p by repeated squaring, with full-precision products."""
  result = None
  while p:
    if p & 1:
      result = a if result is None else _mm(result, a)
    p >>= 1
    if p:
      a = _mm(a, a)
  return result


def _max_abs(x: jax.Array) -> jax.Array:
  return jnp.max(jnp.abs(x))


def max_eigenvalue(a: jax.Array, num_iters: int = 20) -> jax.Array:
  """Largest eigenvalue of a symmetric PSD `a` by power iteration (Rayleigh quotient).

  lambda <- v^T A v with v <- A v / |A v|, started from a fixed non-symmetric vector.
  """
  d = a.shape[-1]
  v = 1.0 + jnp.arange(d, dtype=a.dtype) / d

  def body(_, v):
    w = jnp.matmul(a, v, precision=_HIGHEST)
    return w / jnp.maximum(jnp.linalg.norm(w), jnp.finfo(a.dtype).tiny)

  v = lax.fori_loop(0, num_iters, body, v / jnp.linalg.norm(v))
  return jnp.vdot(v, jnp.matmul(a, v, precision=_HIGHEST))


def ridge(a: jax.Array, eps: float, relative: bool) -> jax.Array:
  """The ridge `r` added to `a`: `eps * lambda_max(a)` if `relative`, else `eps`."""
  if relative:
    return eps * max_eigenvalue(a)
  return jnp.asarray(eps, a.dtype)


def inverse_pth_root_newton(a: jax.Array, p: int, *, eps: float = 1e-6,
                            relative_eps: bool = True, max_iters: int = 100,
                            tol: float = 1e-6) -> RootResult:
  """`(A + rI)^{-1/p}` by the coupled Newton iteration.

  X_0 = z^{1/p} I, M_0 = z (A + rI), z = (1 + p) / (2 |A + rI|_F);
  T = ((p + 1) I - M) / p;  X <- X T;  M <- T^p M.
  M = X^p (A + rI) stays true, so M -> I means X -> (A + rI)^{-1/p}. The iteration stops at
  `max_iters`, when max|M - I| <= tol, or when the error grows by more than 20% (float32
  rounding took over); the best iterate is returned.

  Args:
    a: (d, d) symmetric positive semi-definite matrix.
    p: the root, a positive integer.
    eps: the ridge (see `ridge`).
    relative_eps: whether `eps` is relative to the largest eigenvalue.
    max_iters: iteration limit.
    tol: stop when max|M - I| is at most this.

  Returns:
    RootResult with `residual = max|X^p (A + rI) - I|` (as tracked by M).
  """
  d = a.shape[-1]
  eye = jnp.eye(d, dtype=a.dtype)
  a = a + ridge(a, eps, relative_eps) * eye
  # The Frobenius norm bounds the spectral norm, so M_0's eigenvalues lie in (0, (p+1)/2],
  # inside the iteration's region of convergence.
  z = (1 + p) / (2 * jnp.linalg.norm(a))
  m = z * a
  x = z ** (1.0 / p) * eye
  err = _max_abs(m - eye)
  inf = jnp.asarray(jnp.inf, a.dtype)

  def cond(s):
    i, _, _, err, prev_err, _, best_err = s
    return (i < max_iters) & (best_err > tol) & (err <= 1.2 * prev_err)

  def body(s):
    i, x, m, err, _, best_x, best_err = s
    t = ((p + 1) * eye - m) / p
    m = _mm(_power(t, p), m)
    x = _mm(x, t)
    new_err = _max_abs(m - eye)
    better = new_err < best_err
    best_x = jnp.where(better, x, best_x)
    best_err = jnp.where(better, new_err, best_err)
    return i + 1, x, m, new_err, err, best_x, best_err

  init = (jnp.asarray(0), x, m, err, inf, x, err)
  *_, best_x, best_err = lax.while_loop(cond, body, init)
  return RootResult(best_x, best_err)


def inverse_pth_root_eigh(a: jax.Array, p: int, *, eps: float = 1e-6,
                          relative_eps: bool = True) -> RootResult:
  """`(A + rI)^{-1/p} = V diag(max(w, 0) + r)^{-1/p} V^T` from `A = V diag(w) V^T`.

  Negative eigenvalues (rounding of a PSD matrix) are clipped to 0 before the ridge.

  Returns:
    RootResult with `residual = max|A V - V diag(w)| / max|w|`, the eigendecomposition's
    relative backward error (NaN for a zero matrix).
  """
  w, v = jnp.linalg.eigh(a)
  return root_from_eigh(a, w, v, p, eps=eps, relative_eps=relative_eps)


def root_from_eigh(a: jax.Array, w: jax.Array, v: jax.Array, p: int, *, eps: float = 1e-6,
                   relative_eps: bool = True) -> RootResult:
  """`inverse_pth_root_eigh` given the eigendecomposition `(w, v)` of `a`.

  For callers that decompose many matrices in one call (see `linalg.eigh`).
  """
  r = ridge(a, eps, relative_eps)
  root = _mm(v * (jnp.maximum(w, 0) + r) ** (-1.0 / p), v.T)
  residual = _max_abs(_mm(a, v) - v * w) / _max_abs(w)
  return RootResult(root, residual)


def inverse_pth_root(a: jax.Array, p: int, *, method: str = "newton", eps: float = 1e-6,
                     relative_eps: bool = True, max_iters: int = 100,
                     tol: float = 1e-6) -> RootResult:
  """`(A + rI)^{-1/p}` by `method` ("newton" or "eigh"); see the two functions above."""
  if method == "newton":
    return inverse_pth_root_newton(a, p, eps=eps, relative_eps=relative_eps,
                                   max_iters=max_iters, tol=tol)
  if method == "eigh":
    return inverse_pth_root_eigh(a, p, eps=eps, relative_eps=relative_eps)
  raise ValueError(f"unknown root method {method!r}; choose from {METHODS}")


def accept(previous: jax.Array, result: RootResult,
           threshold: float) -> tuple[jax.Array, jax.Array]:
  """Keeps `previous` where the new root is not finite or its residual exceeds `threshold`.

  Works on one root (d, d) or a stack (..., d, d) with residuals (...).

  Returns:
    (root, failed): the root to use and a boolean (...) array, True where it was rejected.
  """
  finite = jnp.all(jnp.isfinite(result.root), axis=(-2, -1))
  ok = finite & (result.residual <= threshold)  # False for a NaN residual too.
  return jnp.where(ok[..., None, None], result.root, previous), ~ok
