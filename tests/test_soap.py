"""`soap`: parity with a float64 NumPy reference of Vyas et al. 2024, checkpoints, shapes."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optimizers
from tests.test_shampoo import check_checkpoint_roundtrip
from tests.test_shampoo import make_noise
from tests.test_shampoo import run_steps
from tests.test_shampoo import toy_grad


def reference_soap(w0, noise, *, lr, b1, b2, eps, every, block, stats_every=1, start=1,
                   weight_decay=0.0, full_first_step=False):
  """SOAP (Vyas et al. 2024, Algorithm 3) per 2-D block of `block` x `block`; Adam on 1-D.

  With the authors' code's conventions: the factors' moving average starts from zero (at step
  1, L = (1 - b2) GG^T; `full_first_step`: L = GG^T as the paper writes it), eps is added to
  sqrt(nu) and the step is scaled by sqrt(1 - b2^s) / (1 - b1^s), and the weight decay
  multiplies the moved parameters, w <- (w - lr d)(1 - lr wd), except at the basis step.
  Step `start` (the paper: 1) sets the eigenbases (descending) from the factors and does not
  move. Steps before `start` are Adam in the
  identity basis while the factors accumulate. Other steps: Adam with s = the number of moving
  steps so far on Q_L^T G Q_R, moments as in the paper; then the factors are updated (every
  `stats_every` steps, counted from 1) and, every `every` steps after `start`, the bases are
  re-sorted by diag(Q^T L Q) and refreshed by one QR power-iteration step.
  """
  w = dict(w0)
  mu = {k: np.zeros_like(v) for k, v in w.items()}
  nu = {k: np.zeros_like(v) for k, v in w.items()}
  cuts = {k: [(slice(r, r + block), slice(c, c + block))
              for r in range(0, v.shape[0], block) for c in range(0, v.shape[1], block)]
          for k, v in w.items() if v.ndim == 2}
  factors = {(k, b): [np.zeros((block, block)), np.zeros((block, block))]
             for k, blocks in cuts.items() for b in range(len(blocks))}
  bases = {kb: [np.eye(block), np.eye(block)] for kb in factors}
  history = []
  for t, n in enumerate(noise, start=1):
    g = toy_grad(w, n)
    if t == start:
      for k, blocks in cuts.items():
        for b, (rows, cols) in enumerate(blocks):
          gb, f = g[k][rows, cols], factors[k, b]
          decay = 0.0 if t == 1 and full_first_step else b2
          f[0] = decay * f[0] + (1 - decay) * gb @ gb.T
          f[1] = decay * f[1] + (1 - decay) * gb.T @ gb
          bases[k, b] = [np.linalg.eigh(x)[1][:, ::-1] for x in f]
      history.append(dict(w))
      continue
    s = t - 1 if t > start else t
    for k in w:
      mu[k] = b1 * mu[k] + (1 - b1) * g[k]
      m = mu[k] / (1 - b1 ** s)
      if k not in cuts:
        nu[k] = b2 * nu[k] + (1 - b2) * g[k] ** 2
        w[k] = (w[k] - lr * np.sqrt(1 - b2 ** s) * m / (np.sqrt(nu[k]) + eps)) * (
            1 - lr * weight_decay)
        continue
      step = np.zeros_like(w[k])
      for b, (rows, cols) in enumerate(cuts[k]):
        ql, qr = bases[k, b]
        gb = g[k][rows, cols]
        nu[k][rows, cols] = b2 * nu[k][rows, cols] + (1 - b2) * (ql.T @ gb @ qr) ** 2
        rotated = (ql.T @ m[rows, cols] @ qr) / (np.sqrt(nu[k][rows, cols]) + eps)
        step[rows, cols] = np.sqrt(1 - b2 ** s) * ql @ rotated @ qr.T
        f = factors[k, b]
        if (t - 1) % stats_every == 0:
          f[0] = b2 * f[0] + (1 - b2) * gb @ gb.T
          f[1] = b2 * f[1] + (1 - b2) * gb.T @ gb
        if t > start and (t - start) % every == 0:
          for axis in range(2):
            q = bases[k, b][axis]
            order = np.argsort(-np.diag(q.T @ f[axis] @ q), kind="stable")
            bases[k, b][axis] = np.linalg.qr(f[axis] @ q[:, order])[0]
            nu[k][rows, cols] = np.take(nu[k][rows, cols], order, axis=axis)
      w[k] = (w[k] - lr * step) * (1 - lr * weight_decay)
    history.append(dict(w))
  return history


@pytest.mark.parametrize("flags", [{}, dict(weight_decay=0.5), dict(first_step_statistics="full")],
                         ids=["default", "weight_decay", "full_first_step"])
def test_matches_reference_for_ten_steps(flags):
  rng = np.random.default_rng(0)
  # Square blocks: a factor of one gradient then has no repeated (zero) eigenvalues, so its
  # eigenvectors, hence the whole trajectory, are unique.
  w0 = {"a": rng.standard_normal((4, 4)), "b": rng.standard_normal((4, 8)),
        "v": rng.standard_normal((6,))}
  noise = make_noise({k: v.shape for k, v in w0.items()}, 11, seed=1)
  # Reverse the rows' and columns' scales halfway, so that the eigenvalue order changes and
  # the refresh has to re-sort the bases (and the second moment with them).
  ramp = np.array([1.0, 2.0, 4.0, 8.0])
  for t, n in enumerate(noise):
    r = ramp if t < 5 else ramp[::-1]
    n["a"] *= r[:, None] * r[None, :]
    n["b"] *= r[:, None] * np.tile(r, 2)[None, :]
  hp = dict(b1=0.9, b2=0.6, eps=1e-8)
  want = reference_soap(w0, noise, lr=0.01, every=3, block=4, **hp,
                        weight_decay=flags.get("weight_decay", 0.0),
                        full_first_step="first_step_statistics" in flags)
  # In float64 (x64 mode: the state follows the parameters' dtype), so that the comparison
  # is at float64 rounding. In float32 the trajectory hangs on the float32 eigenvectors, whose
  # rounding depends on the LAPACK build: on this problem (eigenvalue gaps ~1/36 of the norm)
  # jaxlib's ssyevd on an AVX2 CPU is 1.2e-6 from the exact eigenvectors, NumPy's 1.4e-7, both
  # within the backward-stable bound eps |L| / gap ~ 4e-6; the float32 run came to 1.06x a
  # 1e-5 tolerance there (it had passed on the AVX-512 machines). In float64: 3e-15.
  with jax.enable_x64(True):
    tx = optimizers.create("soap", learning_rate=0.01, block_size=4, precondition_every=3,
                           **hp, **flags)
    got, state = run_steps(tx, w0, noise, dtype=jnp.float64)
  assert all(x.dtype == jnp.float64 for x in jax.tree.leaves(state[0].stats))
  chex.assert_trees_all_equal(got[0], w0)  # the first step
  for g, r in zip(got, want):
    chex.assert_trees_all_close(g, r, rtol=1e-12, atol=1e-12)


def test_delayed_start_and_sparse_statistics_match_reference():
  # Adam (identity basis) for 3 steps while the factors gather, bases at step 4 (no move),
  # factors every 2nd step, refresh every 3 steps after that.
  rng = np.random.default_rng(5)
  w0 = {"a": rng.standard_normal((4, 4)), "b": rng.standard_normal((4, 8)),
        "v": rng.standard_normal((6,))}
  noise = make_noise({k: v.shape for k, v in w0.items()}, 12, seed=6)
  hp = dict(b1=0.9, b2=0.6, eps=1e-8)
  tx = optimizers.create("soap", learning_rate=0.01, block_size=4, precondition_every=3,
                         statistics_every=2, start_preconditioning_step=4, **hp)
  got, _ = run_steps(tx, w0, noise)
  want = reference_soap(w0, noise, lr=0.01, every=3, block=4, stats_every=2, start=4, **hp)
  chex.assert_trees_all_equal(got[3], got[2])  # step 4 sets the bases and does not move
  adam = run_steps(optimizers.create("adam", learning_rate=0.01, **hp), w0, noise[:3])[0]
  for g, a in zip(got[:3], adam):  # before it: Adam
    chex.assert_trees_all_close(g, a, rtol=1e-6, atol=1e-7)
  for g, r in zip(got, want):
    chex.assert_trees_all_close(g, r, rtol=1e-5, atol=1e-6)


def test_state_survives_orbax_and_training_continues_identically(tmp_path):
  rng = np.random.default_rng(2)
  w0 = {"w": rng.standard_normal((8, 6)), "b": np.zeros((6,))}
  tx = optimizers.create("soap", learning_rate=0.01, block_size=4, precondition_every=2)
  check_checkpoint_roundtrip(tx, w0, make_noise({"w": (8, 6), "b": (6,)}, 6, seed=3), tmp_path)


def test_init_on_abstract_shapes_and_dtypes_kept():
  params = {"w": jnp.ones((8, 6), jnp.bfloat16), "b": jnp.ones((6,), jnp.bfloat16)}
  tx = optimizers.create("soap", learning_rate=0.01, block_size=4, precondition_every=1)
  abstract = jax.eval_shape(tx.init, params)
  state = tx.init(params)
  chex.assert_trees_all_equal_shapes_and_dtypes(abstract, state)
  update = jax.jit(tx.update)
  rng = np.random.default_rng(4)
  for _ in range(3):
    grads = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
    updates, state = update(grads, state, params)
  chex.assert_trees_all_equal_dtypes(updates, params)
  chex.assert_tree_all_finite(updates)
  # The refreshed bases stay orthogonal.
  for q in jax.tree.leaves(state[0].bases):
    chex.assert_trees_all_close(jnp.einsum("nji,njk->nik", q, q),
                                jnp.broadcast_to(jnp.eye(q.shape[-1]), q.shape), atol=1e-5)
