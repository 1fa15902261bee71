"""Batched QR and eigh over stacks of square matrices, each done as ONE LAPACK call.

Why one call: on the CPU backend (jaxlib 0.10.2) the LAPACK kernels (geqrf, orgqr, syevd) split
their batch over XLA's intra-op thread pool and then block the worker they run on until the
batch is done. Two such kernels running at once in one program (XLA runs independent ops
concurrently) can hold every worker of a small pool while their own batch tasks wait for a free
one: the program never returns. On a 2-core machine two concurrent batched QRs (SOAP's two
factors of one block group) were enough; four hang on the first call. Ordering the calls with
`lax.optimization_barrier` does not help (the barrier aliases its operands, so the CPU runtime
sees no dependency); a single call per program cannot deadlock. So every stack is concatenated
into one batch, smaller matrices padded to the largest size with a diagonal that keeps them
block-diagonal, which Householder-based QR and eigh preserve exactly (zero columns below the
diagonal give identity reflectors), and the results are cropped back.

The CPU backend only pays for this (padding every factor to the largest): on other backends
each stack gets its own call.

Written by hand: no library batches matrices of different sizes into one decomposition.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp


def _one_batch(stacks: Sequence[jax.Array], fill: Sequence[jax.Array]) -> jax.Array:
  """Stacks (n_i, d_i, d_i) padded to the largest d with `fill[i]` (n_i,) on the new diagonal."""
  size = max(s.shape[-1] for s in stacks)
  out = []
  for s, f in zip(stacks, fill):
    pad = size - s.shape[-1]
    if pad:
      s = jnp.pad(s, ((0, 0), (0, pad), (0, pad)))
      s = s.at[:, -pad:, -pad:].set(f[:, None, None] * jnp.eye(pad, dtype=s.dtype))
    out.append(s)
  return out[0] if len(out) == 1 else jnp.concatenate(out)


def _one_call() -> bool:
  return jax.default_backend() == "cpu"


def _split(batch: jax.Array, stacks: Sequence[jax.Array]) -> list[jax.Array]:
  out, start = [], 0
  for s in stacks:
    out.append(batch[start:start + s.shape[0]])
    start += s.shape[0]
  return out


def qr_orthogonal(stacks: Sequence[jax.Array]) -> list[jax.Array]:
  """The orthogonal factor Q of `A = QR` for every matrix of every stack (n_i, d_i, d_i).

  Same result as `jnp.linalg.qr(a)[0]` per stack (LAPACK's sign convention), in one call.
  """
  if not stacks:
    return []
  if not _one_call():
    return [jnp.linalg.qr(s)[0] for s in stacks]
  ones = [jnp.ones(s.shape[:1], s.dtype) for s in stacks]
  q = jnp.linalg.qr(_one_batch(stacks, ones))[0]
  return [b[:, :s.shape[-1], :s.shape[-1]] for b, s in zip(_split(q, stacks), stacks)]


def eigh(stacks: Sequence[jax.Array]) -> list[tuple[jax.Array, jax.Array]]:
  """(eigenvalues ascending (n_i, d_i), eigenvectors as columns (n_i, d_i, d_i)) per stack.

  Same result as `jnp.linalg.eigh` per stack (symmetric input assumed), in one call. Padding
  goes below every eigenvalue (Gershgorin: -1 - 2 max row sum of |A|), so the padded
  eigenpairs come first and the matrix's own are the last d_i.
  """
  if not stacks:
    return []
  if not _one_call():
    return [tuple(jnp.linalg.eigh(s)) for s in stacks]
  fill = [-1.0 - 2.0 * jnp.max(jnp.sum(jnp.abs(s), axis=-1), axis=-1) for s in stacks]
  w, v = jnp.linalg.eigh(_one_batch(stacks, fill))
  out = []
  for wb, vb, s in zip(_split(w, stacks), _split(v, stacks), stacks):
    d = s.shape[-1]
    out.append((wb[:, -d:], vb[:, :d, -d:]))
  return out
