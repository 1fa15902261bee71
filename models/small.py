"""The course notes' small problems as pure functions of plain-dict parameters.

- Multidimensional scaling (Torgerson 1952; Kruskal 1964): recover coordinates W (n x d) from
  squared distances, `L(W) = sum_ij (||w_i - w_j||^2 - D_ij)^2`.
- L2-regularized logistic regression: `mu/2 ||x||^2 + 1/m sum_i log(1 + exp(-y_i <a_i, x>))`,
  labels in {-1, +1}.
- A ReLU MLP classifier with softmax cross entropy.

Every loss takes a batch whose leaves share a leading example axis and returns the batch mean,
so gradients accumulate over micro-batches and split over data-parallel devices as the GPT's do.
Kernels are stored (fan_in, fan_out), like the GPT's.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


# ---------------------------------------------------------------------------------------------
# Multidimensional scaling.

def mds_squared_distances(points_NxD: np.ndarray) -> np.ndarray:
  """D_ij = ||p_i - p_j||^2 (float64), the data of the MDS problem."""
  p = np.asarray(points_NxD, np.float64)
  sq = np.sum(p * p, axis=1)
  return np.maximum(sq[:, None] + sq[None, :] - 2.0 * p @ p.T, 0.0)


def mds_init(key: jax.Array, num_points: int, dim: int, scale: float = 1.0) -> dict:
  return {"w": scale * jax.random.normal(key, (num_points, dim), jnp.float32)}


def mds_loss(params: dict, batch: dict) -> jax.Array:
  """The MDS loss restricted to rows `batch["index"]` (B of them), scaled to the full sum.

  `batch["dist"]` (B x n) holds those rows of D. With every row in the batch this is exactly
  `L(W)`; a random subset of rows gives an unbiased estimate (the sum over i times n / B).
  """
  w_NxD = params["w"]
  w_BxD = w_NxD[batch["index"]]
  diff_BxNxD = w_BxD[:, None, :] - w_NxD[None, :, :]
  resid_BxN = jnp.sum(diff_BxNxD * diff_BxNxD, axis=-1) - batch["dist"]
  return w_NxD.shape[0] * jnp.mean(jnp.sum(resid_BxN * resid_BxN, axis=-1))


# ---------------------------------------------------------------------------------------------
# Logistic regression.

def logistic_init(key: jax.Array, dim: int) -> dict:
  del key  # the problem is strongly convex: start at the origin, as the notes do
  return {"x": jnp.zeros((dim,), jnp.float32)}


def logistic_loss(params: dict, batch: dict, mu: float) -> jax.Array:
  """mu/2 ||x||^2 + mean_i log(1 + exp(-y_i <a_i, x>)) over the batch; y in {-1, +1}."""
  x = params["x"]
  margins_B = batch["y"] * (batch["a"] @ x)
  return 0.5 * mu * jnp.sum(x * x) + jnp.mean(jax.nn.softplus(-margins_B))


# ---------------------------------------------------------------------------------------------
# MLP classifier.

def mlp_init(key: jax.Array, sizes: Sequence[int]) -> dict:
  """He-normal kernels (He et al. 2015) and zero biases for layer widths `sizes`."""
  keys = jax.random.split(key, len(sizes) - 1)
  return {f"layer{i}": {"kernel": jax.random.normal(k, (m, n), jnp.float32) * np.sqrt(2.0 / m),
                        "bias": jnp.zeros((n,), jnp.float32)}
          for i, (k, m, n) in enumerate(zip(keys, sizes[:-1], sizes[1:]))}


def mlp_logits(params: dict, x_BxF: jax.Array) -> jax.Array:
  h = x_BxF
  n = len(params)
  for i in range(n):
    layer = params[f"layer{i}"]
    h = h @ layer["kernel"] + layer["bias"]
    if i < n - 1:
      h = jax.nn.relu(h)
  return h


def mlp_loss(params: dict, batch: dict) -> jax.Array:
  """Mean softmax cross entropy (nats) of integer labels `batch["y"]`."""
  logp_BxC = jax.nn.log_softmax(mlp_logits(params, batch["x"]), axis=-1)
  return -jnp.mean(jnp.take_along_axis(logp_BxC, batch["y"][:, None], axis=-1))


def mlp_error(params: dict, batch: dict) -> jax.Array:
  """Fraction of the batch misclassified."""
  pred = jnp.argmax(mlp_logits(params, batch["x"]), axis=-1)
  return jnp.mean((pred != batch["y"]).astype(jnp.float32))
