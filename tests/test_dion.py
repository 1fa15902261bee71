"""Dion against an independent float64 NumPy version of the paper's Algorithm 1; full rank: Muon."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optimizers
from optimizers import dion as dion_lib
from optimizers import routing
from tests import optimizer_contract
from tests.test_muon import MUON_PATHS, SHAPES, _flat, _run, _tree
from tests.test_normuon import check_three_finite_steps, run_config_three_steps


# ---- the reference: Ahn et al. (2025), Algorithm 1, in the authors' (out, in) layout ----------

def _np_dion_reference(params, grads_seq, q0, hp):
  """len(grads_seq) steps; `q0[path]` is the initial right factor (n, r) the optimizer drew."""
  theta = _flat(params)
  mu, lr, wd, eps = hp["momentum"], hp["learning_rate"], hp["weight_decay"], hp["eps"]
  state = {k: [np.zeros_like(v), np.zeros_like(v)] for k, v in theta.items()}
  for k in MUON_PATHS:
    state[k] = [np.zeros_like(theta[k].T), q0[k]]
  for t, grads in enumerate(grads_seq, start=1):
    for k, g in _flat(grads).items():
      if k in MUON_PATHS:
        x = theta[k].T  # (fan_out, fan_in)
        flip = x.shape[0] < x.shape[1]  # the authors iterate on the tall orientation
        b = state[k][0] + g.T
        b = b.T if flip else b
        q = state[k][1]
        p = np.linalg.qr(b @ q)[0]
        r = b.T @ p
        b = b - (1 - mu) * p @ r.T
        q = state[k][1] = r / (np.linalg.norm(r, axis=0, keepdims=True) + eps)
        d = p @ q.T
        state[k][0] = b.T if flip else b
        d = d.T if flip else d
        x = x * (1 - lr * wd) - lr * np.sqrt(x.shape[0] / x.shape[1]) * d
        theta[k] = x.T
      elif hp["scalar_optimizer"] == "lion":  # Chen et al. (2023)
        b1, b2 = hp["adam_b1"], hp["adam_b2"]
        step = np.sign(b1 * state[k][0] + (1 - b1) * g)
        state[k][0] = b2 * state[k][0] + (1 - b2) * g
        theta[k] = theta[k] * (1 - hp["adam_learning_rate"] * hp["adam_weight_decay"]) - (
            hp["adam_learning_rate"] * step)
      else:  # AdamW (Loshchilov & Hutter 2019)
        b1, b2 = hp["adam_b1"], hp["adam_b2"]
        m = state[k][0] = b1 * state[k][0] + (1 - b1) * g
        v = state[k][1] = b2 * state[k][1] + (1 - b2) * g * g
        step = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + hp["adam_eps"])
        theta[k] = theta[k] - hp["adam_learning_rate"] * (step + hp["adam_weight_decay"] * theta[k])
  return theta


def _dion_state(state):
  """The ScaleByDionState inside the partitioned chain."""
  found = [s for s in jax.tree.leaves(state, is_leaf=lambda s: isinstance(
      s, dion_lib.ScaleByDionState)) if isinstance(s, dion_lib.ScaleByDionState)]
  assert len(found) == 1
  return found[0]


CASES = {
    "full_rank_adamw": dict(rank_fraction=1.0, weight_decay=0.0, scalar_optimizer="adamw"),
    "half_rank_wd_adamw": dict(rank_fraction=0.5, weight_decay=0.1, scalar_optimizer="adamw"),
    "quarter_rank_lion": dict(rank_fraction=0.25, weight_decay=0.0, scalar_optimizer="lion"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_25_steps_match_float64_numpy(case):
  hp = dict(learning_rate=0.02, momentum=0.9, eps=1e-8, adam_learning_rate=1e-2, adam_b1=0.8,
            adam_b2=0.95, adam_eps=1e-8, adam_weight_decay=0.05, seed=3, **CASES[case])
  tx = optimizers.create("dion", **hp)
  params = _tree(SHAPES, seed=0, scale=0.5)
  grads_seq = [_tree(SHAPES, seed=50 + t) for t in range(25)]
  q0 = {routing.path_str(p): np.asarray(q[0], np.float64) for p, q in
        jax.tree_util.tree_flatten_with_path(_dion_state(tx.init(params)).q)[0]}
  for k, q in q0.items():  # rank r = floor(fraction * min(m, n)) on the smaller side
    small = min(_flat(params)[k].shape)
    assert q.shape == (small, max(1, int(hp["rank_fraction"] * small))), k
  got, _ = _run(tx, params, grads_seq)
  ref = _np_dion_reference(params, grads_seq, q0, hp)
  got = _flat(got)
  assert set(got) == set(ref)
  for k in ref:
    np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("shape", [(12, 6), (6, 12)])
def test_full_rank_converges_to_the_orthogonalized_momentum(shape):
  # A fixed gradient with singular values 1, 1/2, 1/4, ...: at full rank the momentum stays
  # proportional to it, and each step is one subspace-iteration step, converging at rate 1/2.
  rng = np.random.default_rng(0)
  u = np.linalg.qr(rng.standard_normal((shape[0], 6)))[0]
  v = np.linalg.qr(rng.standard_normal((shape[1], 6)))[0]
  g = (u * 0.5 ** np.arange(6)) @ v.T
  polar = u @ v.T
  tx = optimizers.create("dion", learning_rate=1.0, momentum=0.95, rank_fraction=1.0,
                         labels=lambda p, x: "muon")
  params = {"w": jnp.zeros(shape)}
  grads = {"w": jnp.asarray(g, jnp.float32)}
  state, step = tx.init(params), jax.jit(tx.update)
  errors = []
  for _ in range(30):
    updates, state = step(grads, state, params)
    direction = -np.asarray(updates["w"], np.float64) / np.sqrt(shape[1] / shape[0])
    errors.append(np.abs(direction - polar).max())
  # Measured: max |P Q^T - U V^T| 0.33 / 0.49 at step 1, ~5e-6 at step 10, ~1e-6 (float32
  # rounding) from step 13 on.
  assert errors[0] > 1e-1 and errors[9] < 1e-4 and max(errors[15:]) < 5e-6, errors
  s = np.linalg.svd(direction, compute_uv=False)
  np.testing.assert_allclose(s, 1.0, atol=5e-6)


@pytest.mark.slow
def test_stacks_are_whole_matrices_and_match_one_at_a_time():
  # dion_matrices on a stack of 3 (and with a second stack of another shape, one QR call) gives
  # what each matrix gives alone.
  rng = np.random.default_rng(1)
  bs = [jnp.asarray(rng.standard_normal((3, 10, 4)), jnp.float32),
        jnp.asarray(rng.standard_normal((2, 7, 5)), jnp.float32)]
  qs = [jnp.asarray(rng.standard_normal((3, 4, 2)), jnp.float32),
        jnp.asarray(rng.standard_normal((2, 5, 5)), jnp.float32)]
  together = dion_lib.dion_matrices(bs, qs, 0.9)
  for b, q, outs in zip(bs, qs, together):
    for i in range(b.shape[0]):
      alone = dion_lib.dion_matrices([b[i:i + 1]], [q[i:i + 1]], 0.9)[0]
      for x, y in zip(outs, alone):
        np.testing.assert_allclose(np.asarray(x[i]), np.asarray(y[0]), rtol=1e-5, atol=1e-6)
  # A zero matrix: zero direction, Q kept.
  d, m, q = dion_lib.dion_matrices([jnp.zeros((1, 6, 3))], [qs[0][:1, :3]], 0.9)[0]
  assert not np.any(np.asarray(d)) and not np.any(np.asarray(m))
  np.testing.assert_allclose(np.asarray(q), np.asarray(
      qs[0][:1, :3] / (jnp.linalg.norm(qs[0][:1, :3], axis=-2, keepdims=True) + 1e-8)), rtol=1e-6)


@pytest.mark.slow
def test_contract_scalars_vectors_matrices_3d_jit_dtypes_orbax(tmp_path):
  params = optimizer_contract.contract_tree(0)
  tx = optimizers.create("dion", learning_rate=0.02, rank_fraction=0.5, weight_decay=0.1,
                         dimension_numbers={"stack": routing.DimensionNumbers(1, 2)})
  grads = [optimizer_contract.contract_tree(1 + i) for i in range(3)]
  optimizer_contract.check_contract(tx, params, grads, tmp_path)


def test_bad_hyperparameters_are_errors():
  with pytest.raises(ValueError, match="rank_fraction"):
    optimizers.create("dion", learning_rate=0.01, rank_fraction=0.0)
  with pytest.raises(ValueError, match="scalar_optimizer"):
    optimizers.create("dion", learning_rate=0.01, scalar_optimizer="sgd")
  with pytest.raises(ValueError, match="unknown scale"):
    optimizers.create("dion", learning_rate=0.01, scale="spectral")


@pytest.mark.slow
def test_speedrun_dion_config_trains_three_steps(tmp_path):
  code, out = run_config_three_steps("speedrun_cpu_dion.py", tmp_path)
  assert code == 0, out[-3000:]
  check_three_finite_steps(tmp_path / "w")


def test_a_model_without_matrices_trains_on_the_scalar_branch():
  tx = optimizers.create("dion", learning_rate=1e-2)
  params = {"x": jnp.ones((31,)), "b": jnp.zeros(())}
  state = tx.init(params)
  updates, _ = jax.jit(tx.update)({"x": jnp.ones((31,)), "b": jnp.ones(())}, state, params)
  assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))
  assert float(jnp.abs(updates["x"]).sum()) > 0
