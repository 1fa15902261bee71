"""Inverse p-th roots against a float64 eigendecomposition, and their failure handling."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optimizers.shampoo import matrix_roots


def _spd(d, cond, seed):
  """A float64 SPD matrix with eigenvalues spread geometrically over [1, cond]."""
  q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
  return (q * np.geomspace(1.0, cond, d)) @ q.T


def _root64(a, p, ridge):
  w, v = np.linalg.eigh(a)
  return (v * (w + ridge) ** (-1.0 / p)) @ v.T


def _rel_err(x, ref):
  return np.linalg.norm(np.asarray(x, np.float64) - ref) / np.linalg.norm(ref)


@pytest.mark.parametrize("method", matrix_roots.METHODS)
@pytest.mark.parametrize("p", [2, 4, 6])
def test_root_matches_float64_eigh(method, p):
  mats = np.stack([_spd(24, cond, seed) for seed, cond in enumerate([1.0, 10.0, 1e3])])
  fn = jax.jit(jax.vmap(lambda a: matrix_roots.inverse_pth_root(
      a, p, method=method, eps=1e-6, relative_eps=True)))
  result = fn(jnp.asarray(mats, jnp.float32))
  chex.assert_shape(result.root, mats.shape)
  assert result.root.dtype == jnp.float32
  for a, root, residual in zip(mats, result.root, result.residual):
    ref = _root64(a, p, 1e-6 * np.linalg.eigvalsh(a).max())
    assert _rel_err(root, ref) < 1e-4
    assert residual < 1e-4


def test_absolute_ridge_and_max_eigenvalue():
  a = _spd(16, 100.0, 3)
  lam = matrix_roots.max_eigenvalue(jnp.asarray(a, jnp.float32))
  np.testing.assert_allclose(float(lam), 100.0, rtol=1e-4)
  for method in matrix_roots.METHODS:
    root = matrix_roots.inverse_pth_root(jnp.asarray(a, jnp.float32), 4, method=method,
                                         eps=0.5, relative_eps=False).root
    assert _rel_err(root, _root64(a, 4, 0.5)) < 1e-4


def _singular():
  x = np.random.default_rng(0).standard_normal((8, 3))
  return x @ x.T  # rank 3


@pytest.mark.parametrize("method", matrix_roots.METHODS)
@pytest.mark.parametrize("name, a, eps", [
    ("singular, no ridge", _singular(), 0.0),
    ("zero", np.zeros((8, 8)), 1e-6),
    ("nan", np.full((8, 8), np.nan), 1e-6),
])
def test_bad_input_is_rejected_and_previous_root_kept(method, name, a, eps):
  del name
  previous = 2.0 * jnp.eye(8)
  result = jax.jit(lambda a: matrix_roots.inverse_pth_root(
      a, 4, method=method, eps=eps, relative_eps=eps > 0))(jnp.asarray(a, jnp.float32))
  root, failed = matrix_roots.accept(previous, result, threshold=0.1)
  assert bool(failed)
  chex.assert_trees_all_equal(root, previous)


@pytest.mark.parametrize("method", matrix_roots.METHODS)
def test_singular_with_relative_ridge_is_accepted(method):
  a = _singular()
  result = matrix_roots.inverse_pth_root(jnp.asarray(a, jnp.float32), 4, method=method,
                                         eps=1e-4, relative_eps=True)
  root, failed = matrix_roots.accept(jnp.eye(8), result, threshold=0.1)
  assert not bool(failed)
  chex.assert_tree_all_finite(root)
  assert _rel_err(root, _root64(a, 4, 1e-4 * np.linalg.eigvalsh(a).max())) < 1e-4


def test_accept_is_per_matrix_in_a_stack():
  good = matrix_roots.RootResult(jnp.stack([jnp.eye(2)] * 3),
                                 jnp.asarray([0.0, 0.5, jnp.nan]))
  root, failed = matrix_roots.accept(jnp.zeros((3, 2, 2)), good, threshold=0.1)
  chex.assert_trees_all_equal(failed, jnp.asarray([False, True, True]))
  chex.assert_trees_all_equal(root[0], jnp.eye(2))
  chex.assert_trees_all_equal(root[1:], jnp.zeros((2, 2, 2)))
