"""PSGD-Kron against an independent float64 NumPy version fed the same random probes."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optimizers
from optimizers import psgd_kron as kron_lib
from tests import optimizer_contract
from tests.test_normuon import check_three_finite_steps, run_config_three_steps

SHAPES = {"scale": (), "bias": (5,), "w": (6, 4), "wide": (3, 10), "row": (1, 5),
          "stack": (2, 3, 4)}


def _tree(seed, scale=1.0):
  keys = jax.random.split(jax.random.key(seed), len(SHAPES))
  return {n: scale * jax.random.normal(k, s) for k, (n, s) in zip(keys, SHAPES.items())}


# ---- the reference: Li (2018) Kron PSGD as in psgd_jax's kron, in float64 ---------------------

def _np_mode(x, m, axis):
  """x multiplied along `axis` by the matrix m (m[a, b] x[..b..])."""
  return np.moveaxis(np.tensordot(m, x, axes=(1, axis)), 0, axis)


def _np_lower_bound(s):
  j = np.argmax(np.sum(s * s, axis=1))
  return np.linalg.norm(s @ s @ s[:, j]) / np.linalg.norm(s @ s[:, j]) if np.any(s) else 0.0


def _np_kron_step(qs, h, v, lr):
  """One PSGD fit of the factors (as dense matrices; `diag[i]` marks diagonal ones)."""
  a, b = h, v
  for i, (q, _) in enumerate(qs):
    a, b = _np_mode(a, q, i), _np_mode(b, np.linalg.inv(q).T, i)
  new = []
  for i, (q, diag) in enumerate(qs):
    others = [k for k in range(h.ndim) if k != i]
    t1, t2 = np.tensordot(a, a, (others, others)), np.tensordot(b, b, (others, others))
    if diag:
      d1, d2 = np.diag(t1), np.diag(t2)
      new.append((q - lr * np.diag((d1 - d2) * np.diag(q)) / np.max(np.abs(d1 + d2)), True))
    else:
      new.append((q - lr * np.triu(t1 - t2) @ q / _np_lower_bound(t1 + t2), False))
  return new


def _np_reference(params, grads_seq, keys, hp):
  theta = {k: np.asarray(v, np.float64).reshape(v.shape or (1,)) for k, v in params.items()}
  qs = {}
  for k, x in theta.items():
    d = x.ndim if params[k].ndim else 1
    big = np.argsort(x.shape)[::-1][0]
    qs[k] = [(np.eye(n) * hp["preconditioner_init_scale"] ** (1 / d),
              n == 1 or n > hp["max_size_triangular"] or params[k].ndim < 2
              or hp["memory_save_mode"] == "all_diag"
              or (hp["memory_save_mode"] == "one_diag" and i == big))
             for i, n in enumerate(x.shape)]
  mu = {k: np.zeros_like(x) for k, x in theta.items()}
  counter, b1, updates = 0, hp["b1"], 0
  for t, (grads, key) in enumerate(zip(grads_seq, keys), start=1):
    names = sorted(theta)  # the leaves' order in a pytree
    _, balance, probes = kron_lib.step_randomness(key, [theta[k].shape for k in names])
    probes = dict(zip(names, [np.asarray(v, np.float64) for v in probes]))
    p = min(max(np.exp(-hp["decay"] * (t - hp["flat_start"])), hp["min_prob"]), 1.0)
    counter += 1
    do_update = counter >= 1 / p
    counter = 0 if do_update else counter
    updates += do_update
    for k, g in grads.items():
      g = np.asarray(g, np.float64).reshape(theta[k].shape)
      mu[k] = b1 * mu[k] + (1 - b1) * g
      m = mu[k] / (1 - b1**t)
      if do_update:
        if bool(balance) and len(qs[k]) > 1:  # equal max-norms; P unchanged
          norms = [np.max(np.abs(q)) for q, _ in qs[k]]
          gmean = np.prod(norms) ** (1 / len(norms))
          qs[k] = [(q * gmean / n, d) for (q, d), n in zip(qs[k], norms)]
        h = m + np.sqrt(np.finfo(np.float32).eps) * np.mean(np.abs(m)) * probes[k]
        qs[k] = _np_kron_step(qs[k], h, probes[k], hp["preconditioner_lr"])
      u = m
      for i, (q, _) in enumerate(qs[k]):
        u = _np_mode(u, q.T @ q, i)
      u = u / max(1.0, np.sqrt(np.mean(u * u)) / 1.1)
      theta[k] = theta[k] - hp["learning_rate"] * (u + hp["weight_decay"] * theta[k])
  return {k: v.reshape(params[k].shape) for k, v in theta.items()}, updates


CASES = {
    "triangular_and_diagonal": dict(memory_save_mode=None, b1=0.9, weight_decay=0.0),
    "one_diag_wd": dict(memory_save_mode="one_diag", b1=0.9, weight_decay=0.1),
    "all_diag_no_momentum": dict(memory_save_mode="all_diag", b1=0.0, weight_decay=0.0),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_25_steps_match_float64_numpy_with_the_same_probes(case):
  # The update probability falls from 1 after step 3 to 0.2: some steps skip the fit.
  hp = dict(learning_rate=0.01, preconditioner_lr=0.1, preconditioner_init_scale=1.0,
            max_size_triangular=8, flat_start=3, decay=0.1, min_prob=0.2, seed=7, **CASES[case])
  tx = optimizers.create(
      "psgd_kron", learning_rate=hp["learning_rate"], b1=hp["b1"],
      weight_decay=hp["weight_decay"], update_prob_flat_start=hp["flat_start"],
      update_prob_decay=hp["decay"], update_prob_min=hp["min_prob"],
      max_size_triangular=hp["max_size_triangular"], memory_save_mode=hp["memory_save_mode"],
      seed=hp["seed"])
  params = _tree(0)
  grads_seq = [_tree(100 + t) for t in range(25)]
  state, step, keys = tx.init(params), jax.jit(tx.update), []
  got = params
  for grads in grads_seq:
    keys.append(state[0].key)
    updates, state = step(grads, state, got)
    got = optax.apply_updates(got, updates)
  ref, n_fits = _np_reference(params, grads_seq, keys, hp)
  assert 5 < n_fits < 25  # some steps fitted the preconditioner (9), some did not
  for k in ref:
    np.testing.assert_allclose(np.asarray(got[k], np.float64), ref[k], rtol=1e-5, atol=1e-6,
                               err_msg=k)


def test_factor_kinds_and_memory_save_modes():
  kinds = lambda mode, shape, max_size=8192: [
      q.ndim for q in kron_lib.scale_by_kron(memory_save_mode=mode, max_size_triangular=max_size)
      .init({"x": jnp.zeros(shape)}).qs["x"]]
  assert kinds(None, ()) == [1] and kinds(None, (7,)) == [1]
  assert kinds(None, (6, 4)) == [2, 2] and kinds(None, (1, 5)) == [1, 2]
  assert kinds(None, (6, 40), max_size=16) == [2, 1]
  assert kinds("one_diag", (6, 40, 3)) == [2, 1, 2] and kinds("all_diag", (6, 4)) == [1, 1]
  with pytest.raises(ValueError, match="memory_save_mode"):
    optimizers.create("psgd_kron", learning_rate=1e-3, memory_save_mode="some_diag")


def test_default_schedule_is_krons():
  p = kron_lib.update_probability_schedule()
  np.testing.assert_allclose([float(p(n)) for n in (1, 500, 1000, 4000, 4100)],
                             [1.0, 1.0, np.exp(-0.5), np.exp(-3.5), 0.03], rtol=1e-6)


def test_fitted_preconditioner_whitens_a_fixed_gradient_distribution():
  # Rows of the gradient with scales spanning 100x: the PSGD criterion's minimizer is
  # P = E[g g^T]^(-1/2), so P's row factor times the row scale tends to a constant.
  rng = np.random.default_rng(0)
  scales = np.logspace(0, 2, 6)
  tx = kron_lib.scale_by_kron(b1=0.0, preconditioner_update_probability=1.0)
  params = {"w": jnp.zeros((6, 5))}
  state, step = tx.init(params), jax.jit(tx.update)
  for _ in range(400):
    g = {"w": jnp.asarray(scales[:, None] * rng.standard_normal((6, 5)), jnp.float32)}
    _, state = step(g, state)
  q = np.asarray(state.qs["w"][0], np.float64)
  ratio = np.diag(q.T @ q) * scales  # 100x apart at the start (P = I)
  assert ratio.max() / ratio.min() < 2.0, ratio  # measured 1.79 after 400 fits


@pytest.mark.slow
def test_contract_scalars_vectors_matrices_3d_jit_dtypes_orbax(tmp_path):
  params = optimizer_contract.contract_tree(0)
  tx = optimizers.create("psgd_kron", learning_rate=1e-3, weight_decay=0.1,
                         max_size_triangular=10)
  grads = [optimizer_contract.contract_tree(1 + i) for i in range(3)]
  optimizer_contract.check_contract(tx, params, grads, tmp_path)


@pytest.mark.slow
def test_speedrun_psgd_kron_config_trains_three_steps(tmp_path):
  code, out = run_config_three_steps("speedrun_cpu_psgd_kron.py", tmp_path)
  assert code == 0, out[-3000:]
  check_three_finite_steps(tmp_path / "w")
