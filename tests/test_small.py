"""models/small.py against float64 NumPy: losses from the notes' formulas, gradients by hand."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from models import small


def _mds_data(n=12, d=2, seed=0):
  rng = np.random.default_rng(seed)
  points = rng.normal(size=(n, d))
  w = rng.normal(size=(n, d))  # the current iterate, far from the solution
  return small.mds_squared_distances(points), w


def _mds_loss_np(w, dist, rows):
  """(n / |rows|) sum_{i in rows} sum_j (||w_i - w_j||^2 - D_ij)^2."""
  n = len(w)
  total = 0.0
  for i in rows:
    for j in range(n):
      total += (np.sum((w[i] - w[j]) ** 2) - dist[i, j]) ** 2
  return n / len(rows) * total


def _mds_grad_np(w, dist, rows):
  """By hand: d/dw_k of c sum_{i in rows, j} r_ij^2 with r_ij = ||w_i - w_j||^2 - D_ij, c = n/B.

  d r_ij / d w_k = 2 (w_i - w_j) (1[i=k] - 1[j=k]), so the gradient is
  4c [sum_{i in rows, i=k} sum_j r_kj (w_k - w_j) - sum_{i in rows} r_ik (w_i - w_k)].
  """
  n = len(w)
  c = n / len(rows)
  r = np.sum((w[:, None] - w[None]) ** 2, axis=-1) - dist
  g = np.zeros_like(w)
  for i in rows:
    g[i] += 4 * c * np.sum(r[i][:, None] * (w[i] - w), axis=0)
    g -= 4 * c * r[i][:, None] * (w[i] - w)
  return g


def test_mds_squared_distances():
  points = np.array([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0]])
  np.testing.assert_allclose(small.mds_squared_distances(points),
                             [[0, 25, 1], [25, 0, 20], [1, 20, 0]], atol=1e-12)


def test_mds_full_batch_loss_and_gradient():
  dist, w = _mds_data()
  n = len(w)
  # The full-batch loss is the notes' L(W); its gradient simplifies to 8 sum_j r_kj (w_k - w_j).
  r = np.sum((w[:, None] - w[None]) ** 2, axis=-1) - dist
  loss_np = np.sum(r ** 2)
  grad_np = 8 * np.einsum("kj,kjd->kd", r, w[:, None] - w[None])
  batch = {"index": jnp.arange(n), "dist": jnp.asarray(dist, jnp.float32)}
  params = {"w": jnp.asarray(w, jnp.float32)}
  loss, grads = jax.jit(jax.value_and_grad(small.mds_loss))(params, batch)
  np.testing.assert_allclose(float(loss), loss_np, rtol=2e-6)
  np.testing.assert_allclose(loss_np, _mds_loss_np(w, dist, range(n)), rtol=1e-12)
  np.testing.assert_allclose(grads["w"], grad_np, rtol=2e-5, atol=2e-5 * np.abs(grad_np).max())


def test_mds_row_subset_loss_and_gradient():
  dist, w = _mds_data(seed=1)
  rows = np.array([3, 7, 0, 11])
  batch = {"index": jnp.asarray(rows), "dist": jnp.asarray(dist[rows], jnp.float32)}
  params = {"w": jnp.asarray(w, jnp.float32)}
  loss, grads = jax.jit(jax.value_and_grad(small.mds_loss))(params, batch)
  np.testing.assert_allclose(float(loss), _mds_loss_np(w, dist, rows), rtol=2e-6)
  grad_np = _mds_grad_np(w, dist, rows)
  np.testing.assert_allclose(grads["w"], grad_np, rtol=2e-5, atol=2e-5 * np.abs(grad_np).max())


def test_logistic_loss_and_gradient():
  rng = np.random.default_rng(0)
  m, d, mu = 40, 6, 0.1
  a = rng.normal(size=(m, d))
  y = rng.choice([-1.0, 1.0], size=m)
  x = rng.normal(size=d)
  z = y * (a @ x)
  loss_np = mu / 2 * x @ x + np.mean(np.log1p(np.exp(-z)))
  # d/dx log(1 + exp(-z_i)) = -y_i a_i exp(-z_i) / (1 + exp(-z_i)) = -y_i a_i sigmoid(-z_i).
  grad_np = mu * x - (a * (y / (1 + np.exp(z)))[:, None]).mean(axis=0)
  batch = {"a": jnp.asarray(a, jnp.float32), "y": jnp.asarray(y, jnp.float32)}
  loss, grads = jax.jit(jax.value_and_grad(lambda p, b: small.logistic_loss(p, b, mu)))(
      {"x": jnp.asarray(x, jnp.float32)}, batch)
  np.testing.assert_allclose(float(loss), loss_np, rtol=1e-6)
  np.testing.assert_allclose(grads["x"], grad_np, rtol=1e-5, atol=1e-7)
  chex.assert_trees_all_equal(small.logistic_init(jax.random.key(0), d),
                              {"x": jnp.zeros(d, jnp.float32)})


def test_logistic_loss_stable_for_large_margins():
  batch = {"a": jnp.array([[1.0], [1.0]]), "y": jnp.array([1.0, -1.0])}
  loss = small.logistic_loss({"x": jnp.array([200.0])}, batch, 0.0)
  # log(1 + e^-200) ~ 0 and log(1 + e^200) = 200 (a naive log(1 + exp) overflows to inf).
  np.testing.assert_allclose(float(loss), 100.0, rtol=1e-6)


def test_mlp_loss_error_and_shapes():
  params = small.mlp_init(jax.random.key(0), [5, 16, 3])
  chex.assert_shape(params["layer0"]["kernel"], (5, 16))
  chex.assert_shape(params["layer1"]["bias"], (3,))
  rng = np.random.default_rng(0)
  x = rng.normal(size=(8, 5)).astype(np.float32)
  y = rng.integers(0, 3, size=8)
  batch = {"x": jnp.asarray(x), "y": jnp.asarray(y)}
  p = jax.tree.map(np.asarray, params)
  h = np.maximum(x @ p["layer0"]["kernel"] + p["layer0"]["bias"], 0)
  logits = h @ p["layer1"]["kernel"] + p["layer1"]["bias"]
  logp = logits - np.log(np.sum(np.exp(logits - logits.max(1, keepdims=True)), 1,
                                keepdims=True)) - logits.max(1, keepdims=True)
  np.testing.assert_allclose(float(small.mlp_loss(params, batch)),
                             -np.mean(logp[np.arange(8), y]), rtol=1e-5)
  np.testing.assert_allclose(float(small.mlp_error(params, batch)),
                             np.mean(logits.argmax(1) != y))


def test_mds_adam_recovers_configuration():
  """A few hundred Adam steps drive the full-batch MDS loss near zero (it is 0 at the points)."""
  dist, _ = _mds_data(n=16)
  batch = {"index": jnp.arange(16), "dist": jnp.asarray(dist, jnp.float32)}
  params = small.mds_init(jax.random.key(0), 16, 2)
  tx = optax.adam(0.05)

  @jax.jit
  def run(params):
    def step(carry, _):
      p, s = carry
      g = jax.grad(small.mds_loss)(p, batch)
      u, s = tx.update(g, s, p)
      return (optax.apply_updates(p, u), s), None
    (p, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=500)
    return p

  start = float(small.mds_loss(params, batch))
  end = float(small.mds_loss(run(params), batch))
  assert end < 1e-3 * start, (start, end)
