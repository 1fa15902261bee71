"""`optimizers.shampoo.linalg`: one LAPACK call per matrix on CPU, same answers as batched calls.

Why it exists (see its docstring): concurrent batched LAPACK kernels deadlock XLA's CPU thread
pool; a batch of one never touches the pool. The last tests pin that down: every decomposition
in the lowered SOAP, Shampoo (eigh roots) and Dion updates is unbatched, and a SOAP update with
several block groups runs to the end.
"""

import os
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import configs_util
from experiments.harness import records as records_lib
from experiments.training import train_state
import optimizers
from optimizers.shampoo import linalg


def _stacks(seed=0):
  """Symmetric stacks of three sizes: PSD full rank, PSD rank-deficient, indefinite."""
  rng = np.random.default_rng(seed)
  out = []
  for n, d, rank in [(3, 5, 5), (2, 8, 3), (4, 8, 8)]:
    g = rng.standard_normal((n, d, rank))
    a = g @ np.swapaxes(g, 1, 2)
    if d == 8 and rank == 8:
      a = a - 4.0 * np.eye(d)  # indefinite: the padding must still go below every eigenvalue
    out.append(a.astype(np.float32))
  return out


def test_qr_equals_the_batched_call_bitwise():
  stacks = _stacks() + [np.random.default_rng(1).standard_normal((3, 9, 4)).astype(np.float32)]
  got = jax.jit(linalg.qr_orthogonal)([jnp.asarray(s) for s in stacks])
  for q, s in zip(got, stacks):
    want = np.asarray(jnp.linalg.qr(jnp.asarray(s))[0])  # one batched LAPACK call
    assert q.shape == s.shape
    np.testing.assert_array_equal(np.asarray(q), want)
    eye = np.broadcast_to(np.eye(s.shape[-1]), s.shape[:1] + (s.shape[-1],) * 2)
    np.testing.assert_allclose(np.swapaxes(q, 1, 2) @ q, eye, atol=2e-6)


def test_eigh_matches_float64():
  stacks = _stacks()
  got = linalg.eigh([jnp.asarray(s) for s in stacks])
  for (w, v), s in zip(got, stacks):
    w, v = np.asarray(w, np.float64), np.asarray(v, np.float64)
    w64, v64 = np.linalg.eigh(s.astype(np.float64))
    scale = np.max(np.abs(w64), axis=-1, keepdims=True)
    assert np.all(np.abs(w - w64) < 1e-5 * scale), np.max(np.abs(w - w64) / scale)
    # Eigenvectors up to sign (eigenvalues here are distinct, or zero for the rank-deficient
    # stack, where only the reconstruction is unique).
    recon = (v * w[:, None, :]) @ np.swapaxes(v, 1, 2)
    assert np.all(np.abs(recon - s) < 1e-5 * scale[..., None]), np.max(np.abs(recon - s))
    eye = np.broadcast_to(np.eye(s.shape[-1]), s.shape)
    np.testing.assert_allclose(np.swapaxes(v, 1, 2) @ v, eye, atol=2e-6)


def test_nan_matrix_does_not_spoil_the_others():
  stacks = [jnp.asarray(s) for s in _stacks()]
  stacks[0] = stacks[0].at[1, 2, 2].set(jnp.nan)
  (w0, _), (w1, v1), _ = linalg.eigh(stacks)
  assert not np.all(np.isfinite(w0[1]))
  assert np.all(np.isfinite(w0[0])) and np.all(np.isfinite(w0[2]))
  assert np.all(np.isfinite(w1)) and np.all(np.isfinite(v1))


def _params():
  """Three block groups of different sizes, two factors each."""
  return {"a": jnp.ones((6, 10)), "b": jnp.ones((12, 4)), "c": jnp.ones((7, 7)),
          "bias": jnp.ones((5,))}


def _lapack_calls(tx, trials=None):
  """{kernel: [num_batch_dims of each call]} in the lowered update; `trials`: the update vmapped
  over a leading trial axis of that size (experiments/harness/vectorized.py)."""
  params = _params()
  state = tx.init(params)
  update = tx.update
  if trials:
    params, state = jax.tree.map(lambda x: jnp.stack([x] * trials), (params, state))
    update = jax.vmap(update)
  text = jax.jit(update).lower(params, state, params).as_text()
  calls = {}
  for line in text.splitlines():
    for name in ("geqrf", "orgqr", "syevd", "trsm"):
      if f"lapack_s{name}_ffi" in line:
        calls.setdefault(name, []).append(re.search(r'num_batch_dims = "(\d+)"', line)[1])
  return calls


@pytest.mark.parametrize("trials", [None, 3])
@pytest.mark.parametrize("name,kw,kernels", [
    ("soap", {"block_size": 16}, {"geqrf", "orgqr", "syevd"}),
    ("shampoo", {"block_size": 16, "root_method": "eigh"}, {"syevd"}),
    ("dion", {}, {"geqrf", "orgqr"}),
    ("psgd_kron", {}, {"trsm"}),
])
def test_every_decomposition_is_one_matrix_per_call(name, kw, kernels, trials):
  # Also under vmap over trials, which would otherwise batch every per-matrix call by K (an
  # mlp_digits Shampoo sweep of 5 vectorized trials hung so, and PSGD-Kron's 15 on its trsm).
  calls = _lapack_calls(optimizers.create(name, learning_rate=1e-3, **kw), trials)
  assert set(calls) == kernels
  assert all(n == "0" for batch_dims in calls.values() for n in batch_dims), calls


_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SOAP_RUN = textwrap.dedent("""
    import jax, jax.numpy as jnp
    import optimizers
    params = {"a": jnp.ones((512, 256)), "b": jnp.ones((384, 96)), "c": jnp.ones((64, 64))}
    tx = optimizers.create("soap", learning_rate=1e-3, block_size=128, precondition_every=1)
    state = tx.init(params)
    step = jax.jit(tx.update)
    for i in range(12):
      grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(i), p.shape), params)
      _, state = step(grads, state, params)
      jax.block_until_ready(state)
    print("finished")
""")


@pytest.mark.slow
def test_soap_with_many_groups_does_not_deadlock():
  # Factors of three block groups (sizes 128, 96, 64) refreshed at every step: with one QR per
  # factor this hung at once on 2 cores (batches this large are split over the thread pool).
  # In a subprocess, so that a regression fails here instead of hanging the suite.
  # One CPU device, as in training: conftest's 8 fake devices come with a larger thread pool,
  # under which the old code did not hang.
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env = dict(os.environ, XLA_FLAGS=" ".join(flags))
  try:
    out = subprocess.run([sys.executable, "-c", _SOAP_RUN], capture_output=True, text=True,
                         timeout=120, check=True, cwd=_ROOT, env=env)
  except subprocess.TimeoutExpired:
    pytest.fail("SOAP's update did not return within 120 s: LAPACK deadlock")
  assert "finished" in out.stdout


@pytest.mark.parametrize("name", sorted(records_lib.SEARCH_SPACES))
def test_no_swept_optimizer_batches_a_lapack_call_under_vmap(name):
  """Every optimizer a sweep vectorizes, built as the sweep builds it (its CPU speedrun
  config's block) and vmapped over 3 trials: any LAPACK kernel in its update, whichever, is
  called one matrix at a time."""
  cfg = configs_util.load(os.path.join(_ROOT, "configs", f"{records_lib.BASE_CONFIGS[name]}.py"))
  tx, _ = train_state.make_optimizer(cfg)
  params = _params()
  state = tx.init(params)
  stacked = jax.tree.map(lambda x: jnp.stack([x] * 3), (params, state))
  text = jax.jit(jax.vmap(tx.update)).lower(stacked[0], stacked[1], stacked[0]).as_text()
  batch_dims = [re.search(r'num_batch_dims = "(\d+)"', ln) for ln in text.splitlines()
                if "lapack_" in ln]
  assert all(m is None or m[1] == "0" for m in batch_dims), [m[0] for m in batch_dims if m]
