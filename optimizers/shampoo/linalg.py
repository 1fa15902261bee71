"""Batched QR and eigh over stacks of matrices that cannot deadlock XLA's CPU runtime.

Why: on the CPU backend (jaxlib 0.10.2) a batched LAPACK kernel (geqrf, orgqr, syevd, ...)
splits its batch over XLA's intra-op thread pool and then blocks the worker it runs on until
every chunk is done (`ParallelBatchMap` in jaxlib/cpu/lapack_kernels.cc). XLA runs independent
ops concurrently, and with several devices every device's program at once, so a few such
kernels can hold every worker while their own chunks wait for a free one: the program never
returns. SOAP's two factor QRs were enough on 2 cores; SOAP, Shampoo's eigh roots and Dion hung
on any CPU mesh. A batch of ONE matrix is never split (the chunk covers the whole batch and runs
inline on the calling thread), so on CPU every matrix gets its own call inside a `lax.map`:
the results are bitwise those of the batched call, and no call ever waits for the pool.

Other backends get one batched call per stack. Written by hand: no library works around a
runtime's thread pool.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp


def _sequential_under_vmap(fn: Callable) -> Callable:
  """fn on one matrix (or one set of arguments), which `jax.vmap` maps over one at a time
  instead of batching.

  Vectorized trials (experiments/harness/vectorized.py) vmap the whole optimizer over a trial
  axis, which would batch the per-matrix call below again (vmap of `lax.map` batches its body):
  a LAPACK batch of K, the deadlock above. This rule keeps every call at one matrix; an
  argument vmap does not batch is broadcast to the others' size.
  """
  @jax.custom_batching.custom_vmap
  def one(*args):
    return fn(*args)

  @one.def_vmap
  def _rule(axis_size, in_batched, *args):
    if not any(in_batched):
      out = one(*args)
      return out, jax.tree.map(lambda _: False, out)
    args = [a if b else jnp.broadcast_to(a, (axis_size,) + a.shape)
            for a, b in zip(args, in_batched)]
    out = jax.lax.map(lambda xs: one(*xs), args)
    return out, jax.tree.map(lambda _: True, out)

  return one


def _per_matrix(fn: Callable, stack: jax.Array):
  """fn over a stack (n, ...): batched off CPU; on CPU, one LAPACK call per matrix (see above),
  also under `jax.vmap`."""
  if jax.default_backend() != "cpu":
    return fn(stack)
  return jax.lax.map(_SEQUENTIAL[fn], stack)


def _q(a: jax.Array) -> jax.Array:
  return jnp.linalg.qr(a)[0]


_SEQUENTIAL = {f: _sequential_under_vmap(f) for f in (_q, jnp.linalg.eigh)}


def _upper_transposed_solve(q: jax.Array, b: jax.Array) -> jax.Array:
  return jax.lax.linalg.triangular_solve(q, b, left_side=True, lower=False, transpose_a=True)


_SEQUENTIAL_SOLVE = _sequential_under_vmap(_upper_transposed_solve)


def solve_upper_transposed(q: jax.Array, b: jax.Array) -> jax.Array:
  """q^{-T} b for one upper-triangular q (n, n) and b (n, m): one LAPACK trsm call, which on CPU
  stays one matrix per call under `jax.vmap` too (a batched trsm is one of the kernels above;
  PSGD-Kron's vectorized trials hung on it)."""
  if jax.default_backend() != "cpu":
    return _upper_transposed_solve(q, b)
  return _SEQUENTIAL_SOLVE(q, b)


def qr_orthogonal(stacks: Sequence[jax.Array]) -> list[jax.Array]:
  """The orthogonal factor Q of the reduced `A = QR` of every matrix of every stack (n_i, m, k).

  The same values as `jnp.linalg.qr(stack)[0]` per stack (LAPACK's sign convention).
  """
  return [_per_matrix(_q, s) for s in stacks]


def eigh(stacks: Sequence[jax.Array]) -> list[tuple[jax.Array, jax.Array]]:
  """(eigenvalues ascending (n_i, d_i), eigenvectors as columns (n_i, d_i, d_i)) per stack.

  The same values as `jnp.linalg.eigh(stack)` per stack (symmetric input assumed).
  """
  return [tuple(_per_matrix(jnp.linalg.eigh, s)) for s in stacks]
