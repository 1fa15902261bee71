"""Dion: low-rank orthonormalized updates by amortized power iteration with error feedback.

For each matrix (Dion leaves, routed like Muon's), in the orientation B (m x n, m >= n) the
authors use (their (fan_out, fan_in) weight, transposed when fan_out < fan_in), with the
warm-started right factor Q (n x r) kept in the state:

  B <- M + G                        momentum plus gradient
  P <- orthonormalize(B Q)          one power-iteration step (QR), m x r
  R <- B^T P                        n x r
  M <- B - (1 - mu) P R^T           error feedback: only the part applied decays
  Q <- R / (||R_:j|| + eps)         column-normalized, the next step's warm start
  theta <- theta - lr * (s * P Q^T + weight_decay * theta)

with s = sqrt(fan_out / fan_in) (the paper's scale; `scale` also takes Muon's). r =
floor(rank_fraction * min(m, n)) (at least 1). At full rank P R^T = B, so M = mu B (heavy-ball
momentum) and P Q^T converges to the orthogonal polar factor of the momentum, Muon's direction.
An all-zero B leaves Q unchanged and gives a zero update (as the authors' code does). Embeddings,
head, norms and scalars go to AdamW or Lion (`scalar_optimizer`).

How it shards (`dion_matrices` takes whole-matrix stacks, so it runs unchanged on owner devices
under `jax.shard_map`): with owner-based sharding each device receives the momentum and gradient
of the matrices it owns (all-to-all), runs `dion_matrices` on its local stack and sends back the
factors P (m x r) and Q (n x r), not the m x n update: (m + n) r numbers per matrix instead of
m n, the saving the paper is about. Under FSDP-style row sharding of B instead, P = B Q is local
row by row, the QR needs the r x r Gram P^T P (an all-reduce, then Cholesky) and R = B^T P an
all-reduce of n x r; the error feedback and the update stay local. Either way no full matrix
crosses the network after the gradient's own reduction.

Reference:
  Ahn, Xu, Abreu, Langford, "Dion: Distributed Orthonormalized Updates", 2025, arXiv 2504.05295
  (Algorithm 1; the authors' code: github.com/microsoft/dion, `dion_update`).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from optimizers import _hparams
from optimizers import muon
from optimizers import routing
from optimizers import nonfinite
from optimizers.shampoo import linalg
from optimizers._registry import register

SCALES = ("spectral_norm",) + muon.SCALES
SCALAR_OPTIMIZERS = ("adamw", "lion")


class ScaleByDionState(NamedTuple):
  """momentum: per Dion leaf, the error-fed momentum M (the leaf's shape, float32);
  q: per leaf, the right factors Q (batch, n, r) float32, n the smaller side."""
  momentum: Any
  q: Any


def rank(shape: tuple[int, int], rank_fraction: float) -> int:
  """r = floor(rank_fraction * min(m, n)), at least 1 and at most min(m, n)."""
  _hparams.require_static("dion", "rank_fraction", rank_fraction, "it sets the rank, a shape")
  if not 0.0 < rank_fraction <= 1.0:
    raise ValueError(f"rank_fraction must be in (0, 1], got {rank_fraction}")
  small = min(shape)
  return max(1, min(small, int(rank_fraction * small)))


def dion_matrices(bs: Sequence[jax.Array], qs: Sequence[jax.Array], mu: float,
                  eps: float = 1e-8) -> list[tuple[jax.Array, jax.Array, jax.Array]]:
  """One Dion step on stacks of whole matrices: per stack (direction, new momentum, new Q).

  Args:
    bs: stacks (batch, m, n), m >= n, of momentum plus gradient B.
    qs: the warm-start right factors (batch, n, r).
    mu: momentum decay (the error feedback keeps 1 - mu of the applied part out).
    eps: added to R's column norms.

  Returns:
    Per stack: P Q^T (batch, m, n), the new momentum B - (1 - mu) P R^T, the new Q (batch, n, r).
  """
  ps = linalg.qr_orthogonal([b @ q for b, q in zip(bs, qs)])
  out = []
  for b, q, p in zip(bs, qs, ps):
    is_zero = jnp.all(b == 0, axis=(-2, -1), keepdims=True)
    p = jnp.where(is_zero, 0.0, p)
    r = jnp.where(is_zero, q, jnp.swapaxes(b, -1, -2) @ p)
    new_m = b - (1.0 - mu) * (p @ jnp.swapaxes(r, -1, -2))
    new_q = r / (jnp.linalg.norm(r, axis=-2, keepdims=True) + eps)
    out.append((p @ jnp.swapaxes(new_q, -1, -2), new_m, new_q))
  return out


def _tall(mats: jax.Array) -> tuple[jax.Array, bool]:
  """(batch, fan_in, fan_out) -> the authors' B: (fan_out, fan_in) unless fan_out < fan_in."""
  transposed = mats.shape[-1] >= mats.shape[-2]
  return (jnp.swapaxes(mats, -1, -2) if transposed else mats), transposed


def _dion_scale(scale: str, fan_in: int, fan_out: int) -> float:
  if scale == "spectral_norm":
    return math.sqrt(fan_out / fan_in)
  return muon._shape_scale(scale, fan_in, fan_out)  # pylint: disable=protected-access


def scale_by_dion(*, momentum: float = 0.95, rank_fraction: float = 1.0,
                  scale: str = "spectral_norm", eps: float = 1e-8, seed: int = 0,
                  dimension_numbers: routing.DimNumRule | Any | None = None,
                  ) -> optax.GradientTransformation:
  """Replaces each matrix update by Dion's s * P Q^T (module docstring); keeps M and Q.

  Args:
    momentum: the paper's mu.
    rank_fraction: r / min(m, n).
    scale: "spectral_norm" (sqrt(fan_out / fan_in), the paper's) or one of `muon.SCALES`.
    eps: added to R's column norms.
    seed: seeds the random normal initial Q (each leaf folds in its index).
    dimension_numbers: matrix view of each leaf (`routing.dimension_numbers_rule`).

  Returns:
    An `optax.GradientTransformation` whose state is a `ScaleByDionState`.
  """
  if scale not in SCALES:
    raise ValueError(f"unknown scale {scale!r}; choose from {SCALES}")
  rank((1, 1), rank_fraction)  # validates now
  resolve = routing.dimension_numbers_rule(dimension_numbers)

  def init_fn(params):
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    qs = []
    for i, (path, x) in enumerate(leaves):
      fan_in, fan_out = routing.fans(x.shape, resolve(path, x))
      n = min(fan_in, fan_out)
      shape = (x.size // (fan_in * fan_out), n, rank((fan_in, fan_out), rank_fraction))
      qs.append(jax.random.normal(jax.random.fold_in(jax.random.key(seed), i), shape))
    return ScaleByDionState(
        momentum=jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), params),
        q=jax.tree.unflatten(treedef, qs))

  def update_fn(updates, state, params=None):
    del params
    leaves, treedef = jax.tree_util.tree_flatten_with_path(updates)
    moms = treedef.flatten_up_to(state.momentum)
    bs, inverses, flips, factors = [], [], [], []
    for (path, g), m in zip(leaves, moms):
      dn = resolve(path, g)
      mats, inverse = routing.to_matrices(m + g.astype(jnp.float32), dn)
      b, flipped = _tall(mats)
      bs.append(b)
      inverses.append(inverse)
      flips.append(flipped)
      factors.append(_dion_scale(scale, *routing.fans(g.shape, dn)))
    outs = dion_matrices(bs, treedef.flatten_up_to(state.q), momentum, eps)
    back = lambda x, flipped, inverse: inverse(jnp.swapaxes(x, -1, -2) if flipped else x)
    new_updates, new_moms, new_qs = [], [], []
    for (_, g), (d, m, q), inv, flipped, f in zip(leaves, outs, inverses, flips, factors):
      new_updates.append((f * back(d, flipped, inv)).astype(g.dtype))
      new_moms.append(back(m, flipped, inv))
      new_qs.append(q)
    return jax.tree.unflatten(treedef, new_updates), ScaleByDionState(
        momentum=jax.tree.unflatten(treedef, new_moms), q=jax.tree.unflatten(treedef, new_qs))

  return optax.GradientTransformation(init_fn, update_fn)


@register("dion")
def dion(*, learning_rate: Any, momentum: float = 0.95, rank_fraction: float = 1.0,
         scale: str = "spectral_norm", eps: float = 1e-8, weight_decay: float = 0.0,
         seed: int = 0, scalar_optimizer: str = "adamw", adam_learning_rate: Any = 3e-3,
         adam_b1: float = 0.9, adam_b2: float = 0.95, adam_eps: float = 1e-8,
         adam_weight_decay: float = 0.0, labels: routing.LabelRule | Any | None = None,
         dimension_numbers: routing.DimNumRule | Any | None = None,
         ) -> optax.GradientTransformation:
  """Dion (Ahn et al., 2025) on hidden matrices, AdamW or Lion on the rest.

  B = M + G;  P = orthonormalize(B Q);  R = B^T P;  M <- B - (1 - mu) P R^T
  Q <- R / (||R_:j|| + eps);  theta <- theta - lr * (s * P Q^T + weight_decay * theta)
  on Dion leaves (the module docstring has the details); routing as `muon`'s
  (`routing.label_fn`).

  Args:
    learning_rate: Dion learning rate (float or optax schedule).
    momentum: the paper's mu (0.95).
    rank_fraction: r / min(m, n); 1 is full rank.
    scale: "spectral_norm" (sqrt(fan_out / fan_in)), "original" or "match_adamw_rms".
    eps: added to R's column norms.
    weight_decay: decoupled weight decay on Dion leaves (multiplied by the learning rate).
    seed: seeds the initial right factors Q.
    scalar_optimizer: "adamw" or "lion" for the other leaves; both take `adam_learning_rate`,
      `adam_b1`, `adam_b2`, `adam_weight_decay` (the authors share betas between the two).
    adam_learning_rate, adam_b1, adam_b2, adam_eps, adam_weight_decay: the scalar optimizer.
    labels, dimension_numbers: as in `muon.muon`.

  Parity: none, because the authors' code (microsoft/dion) is not on the package index;
  tests/test_dion.py checks 25 steps against a float64 NumPy version of the paper's
  Algorithm 1 (the authors' (out, in) layout) instead, and that full rank gives Muon's
  orthogonalized momentum.

  Returns:
    An `optax.GradientTransformation`.

  References:
    Ahn et al., "Dion: Distributed Orthonormalized Updates", 2025, arXiv 2504.05295.
  """
  if scalar_optimizer not in SCALAR_OPTIMIZERS:
    raise ValueError(f"unknown scalar_optimizer {scalar_optimizer!r}; choose from "
                     f"{SCALAR_OPTIMIZERS}")
  dion_tx = optax.chain(
      scale_by_dion(momentum=momentum, rank_fraction=rank_fraction, scale=scale, eps=eps,
                    seed=seed, dimension_numbers=dimension_numbers),
      optax.add_decayed_weights(weight_decay),
      optax.scale_by_learning_rate(learning_rate),
  )
  if scalar_optimizer == "adamw":
    return muon._with_routing(  # pylint: disable=protected-access
        dion_tx, labels, dimension_numbers, adam_learning_rate=adam_learning_rate,
        adam_b1=adam_b1, adam_b2=adam_b2, adam_eps=adam_eps,
        adam_weight_decay=adam_weight_decay)
  lion = optax.lion(adam_learning_rate, b1=adam_b1, b2=adam_b2, weight_decay=adam_weight_decay)
  return nonfinite.guard(optax.partition({routing.MUON: dion_tx, routing.ADAM: lion},
                         routing.label_fn(labels, dimension_numbers)), check_state=True)
