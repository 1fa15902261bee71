"""Layer-wise grafting: the Shampoo direction takes, per block, the norm of a diagonal method's.

With `m` the (filtered) gradient, `g` the raw gradient and `t` the step, the grafting
direction `d` is:
  none     (no grafting; blocks keep the Shampoo norm, unfactored leaves follow m)
  sgd      d = m
  adagrad  n <- n + g^2;                  d = m / (sqrt(n) + eps)
  rmsprop  n <- b2 n + (1 - b2) g^2;      d = m / (sqrt(n) + eps)
  adam     n <- b2 n + (1 - b2) g^2;      d = m / (sqrt(n / (1 - b2^t)) + eps)
and a Shampoo block `S` becomes `S |d_block| / |S|`. With a bias-corrected `m` and b1, b2 as
Adam's, `adam` grafting gives every block exactly Adam's step length. Written by hand: optax's
`scale_by_rss`/`scale_by_rms`/`scale_by_adam` divide their own input, while grafting needs the
second moment of `g` applied to `m`.

References:
  Agarwal, Anil, Hazan, Koren & Zhang, "Disentangling Adaptive Gradient Methods from Learning
  Rates", arXiv 2002.11803, 2020.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

GRAFTINGS = ("none", "sgd", "adagrad", "rmsprop", "adam")


def check(grafting: str) -> None:
  if grafting not in GRAFTINGS:
    raise ValueError(f"unknown grafting {grafting!r}; choose from {GRAFTINGS}")


def has_second_moment(grafting: str) -> bool:
  return grafting in ("adagrad", "rmsprop", "adam")


def update_second_moment(nu: Sequence[jax.Array], grads: Sequence[jax.Array], grafting: str,
                         b2: float) -> list[jax.Array]:
  """n <- n + g^2 (adagrad) or b2 n + (1 - b2) g^2 (rmsprop, adam)."""
  if grafting == "adagrad":
    return [n + jnp.square(g) for n, g in zip(nu, grads)]
  return [b2 * n + (1.0 - b2) * jnp.square(g) for n, g in zip(nu, grads)]


def direction(m: Sequence[jax.Array], nu: Sequence[jax.Array] | None, grafting: str, *,
              b2: float, eps: float, count: jax.Array) -> list[jax.Array]:
  """The grafting direction d of the table above, leaf by leaf (`m` itself for none/sgd)."""
  if not has_second_moment(grafting):
    return list(m)
  scale = 1.0 / (1.0 - b2 ** count.astype(jnp.float32)) if grafting == "adam" else 1.0
  return [x / (jnp.sqrt(n * scale) + eps) for x, n in zip(m, nu)]


def rescale(blocks: jax.Array, graft_blocks: jax.Array) -> jax.Array:
  """Each block of a stack (num_blocks, ...) rescaled to the norm of its grafting block."""
  axes = tuple(range(1, blocks.ndim))
  norm = jnp.sqrt(jnp.sum(jnp.square(blocks), axis=axes, keepdims=True))
  graft_norm = jnp.sqrt(jnp.sum(jnp.square(graft_blocks), axis=axes, keepdims=True))
  return blocks * jnp.where(norm > 0, graft_norm / jnp.where(norm > 0, norm, 1.0), 0.0)
