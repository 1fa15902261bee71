"""Newton–Schulz orthogonalization against the scalar polynomial map, in float64 NumPy.

An odd polynomial iteration acts on each singular value on its own, so the singular values
of the output are phi(s / (||X||_F c + eps)), phi the composition of the per-step polynomials:
the reference below computes phi and the full float64 matrix iteration independently.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optimizers import newton_schulz as ns

QUINTIC = [(3.4445, -4.7750, 2.0315)] * 5
POLAR = [(8.1566, -22.4833, 15.8788), (4.0429, -2.8089, 0.5000), (3.8917, -2.7725, 0.5061),
         (3.2858, -2.3681, 0.4645), (2.3465, -1.7098, 0.4232)]
# name -> (steps, norm factor, eps, promised range [lo, hi] for s / ||X||_F >= floor)
PROMISES = {
    ("quintic", 5): (QUINTIC, 1.0, 1e-7, 0.01, 0.68, 1.135),
    ("polar_express", 5): (POLAR, 1.02, 1e-6, 1e-3, 0.85, 1.15),
    ("polar_express", 6): (POLAR + [(1.875, -1.25, 0.375)], 1.02, 1e-6, 1e-3, 0.99, 1.01),
    ("cubic", 5): ([(1.5, -0.5, 0.0)] * 5, 1.0, 1e-7, 0.0, 0.0, 1.0),
}
KINDS = ("random", "low_rank", "ill_conditioned")


def _matrix(kind, m=24, n=72, seed=0):
  rng = np.random.default_rng(seed)
  if kind == "random":
    return rng.standard_normal((m, n))
  u, _ = np.linalg.qr(rng.standard_normal((m, m)))
  v, _ = np.linalg.qr(rng.standard_normal((n, m)))
  if kind == "low_rank":
    s = np.r_[np.linspace(1.0, 0.3, 6), np.zeros(m - 6)]
  else:
    s = np.geomspace(1.0, 1e-3, m)
  return (u * s) @ v.T


def _phi(s, coeffs):
  for a, b, c in coeffs:
    s = a * s + b * s**3 + c * s**5
  return s


def _reference(x, coeffs, norm_scale, eps):
  x = np.asarray(x, np.float64)
  x = x / (np.linalg.norm(x) * norm_scale + eps)
  for a, b, c in coeffs:
    gram = x @ x.T
    x = a * x + (b * gram + c * gram @ gram) @ x
  return x


def _svals(x):
  return np.linalg.svd(np.asarray(x, np.float64), compute_uv=False)


def _split_error(y, x, ref):
  """Relative errors of `y` inside the row/column span of `x` and outside it.

  Outside the span the exact result is 0; float32 round-off there (~1e-7 |X|) is multiplied
  by up to phi'(0) = prod(a_k) (~500 for the quintic), so it is bounded separately.
  """
  u, s, vt = np.linalg.svd(x, full_matrices=False)
  r = int((s > 1e-12 * s[0]).sum())
  u, vt = u[:, :r], vt[:r]
  y = np.asarray(y, np.float64)
  inside = u @ (u.T @ y @ vt.T) @ vt
  scale = np.linalg.norm(ref)
  return np.linalg.norm(inside - ref) / scale, np.linalg.norm(y - inside) / scale


@pytest.mark.parametrize("gram", [False, True])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("preset", list(PROMISES))
def test_singular_values_follow_the_polynomial_and_stay_in_range(preset, kind, gram):
  name, steps = preset
  coeffs, norm_scale, eps, floor, lo, hi = PROMISES[preset]
  x = _matrix(kind)
  s_in = _svals(x) / (np.linalg.norm(x) * norm_scale + eps)
  y = jax.jit(lambda v: ns.orthogonalize(v, ns_coeffs=name, ns_steps=steps, gram=gram))(
      jnp.asarray(x, jnp.float32))
  s_out = _svals(y)
  nonzero = s_in > 1e-12
  # phi is not monotone, so compare sorted values; zero singular values come last.
  expected = np.sort(_phi(s_in[nonzero], coeffs))[::-1]
  slope = np.prod([a for a, _, _ in coeffs])
  np.testing.assert_array_less(s_out[~nonzero], slope * 1e-6)
  # Gram NS without restarts: A_{k+1} = P_k^2 A_k multiplies the absolute round-off of A_k
  # by ~a^2 (~12) per step in the small directions; measured up to 4e-5 (low rank) and 2e-3
  # (singular values over 1e-3..1, 6 steps). See test_plain_and_gram_iterations_match_float64.
  rtol = 1e-5 if not gram or kind == "random" else 5e-3
  np.testing.assert_allclose(s_out[nonzero], expected, rtol=rtol, atol=1e-7)
  promised = _phi(s_in[s_in >= floor], coeffs)
  assert promised.size >= 6
  assert lo <= promised.min() and promised.max() <= hi


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["quintic", "polar_express", "cubic"])
def test_plain_and_gram_iterations_match_float64(name, kind):
  """Gram NS carries Q_k (up to ~phi'(0) = 500-1000 in the small directions) instead of X_k.

  Round-off in A_k is amplified by Q_k, so without restarts the Gram result is ~100x further
  from the float64 iteration than the plain one on ill-conditioned inputs (measured 5e-4);
  one float32 restart before step 3 leaves two steps of amplification (measured 1.2e-5).
  """
  coeffs, norm_scale, eps = PROMISES[(name, 5)][:3]
  slope = np.prod([a for a, _, _ in coeffs])
  x = _matrix(kind, m=32, n=128, seed=2)
  ref = _reference(x, coeffs, norm_scale, eps)
  x32 = jnp.asarray(x, jnp.float32)
  run = lambda **kw: _split_error(ns.orthogonalize(x32, ns_coeffs=name, **kw), x, ref)
  plain, gram, restarted = run(), run(gram=True), run(gram=True, gram_restarts=(3,))
  assert plain[0] < 1e-5 and plain[1] < slope * 6e-8
  assert gram[0] < (1e-5 if kind == "random" else 1e-3) and gram[1] < slope * 6e-7
  assert restarted[0] < 3e-5 and restarted[1] < slope * 6e-8


@pytest.mark.parametrize("gram", [False, True])
def test_bfloat16_keeps_the_range(gram):
  x = jnp.asarray(_matrix("ill_conditioned", m=32, n=128, seed=3), jnp.bfloat16)
  y = ns.orthogonalize(x, ns_dtype=jnp.bfloat16, gram=gram)
  assert y.dtype == jnp.bfloat16
  ref = _reference(np.asarray(x, np.float64), QUINTIC, 1.0, 1e-7)
  s = _svals(y.astype(jnp.float32))
  s_ref = _svals(ref)
  # bfloat16 products (8-bit mantissa, float32 accumulation): a few 1e-2 in the singular values.
  np.testing.assert_allclose(s, s_ref, atol=0.05)


def test_tall_and_batched_inputs():
  x = jnp.asarray(np.stack([_matrix("random", 40, 16, seed=i) for i in range(3)]), jnp.float32)
  y = jax.jit(ns.orthogonalize)(x)
  chex.assert_shape(y, (3, 40, 16))
  for i in range(3):
    ref = _reference(np.asarray(x[i]).T, QUINTIC, 1.0, 1e-7).T
    np.testing.assert_allclose(np.asarray(y[i]), ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def test_orthogonalize_many_groups_by_shape_and_matches_single_calls():
  rng = np.random.default_rng(4)
  shapes = [(2, 8, 24), (1, 24, 8), (3, 8, 8), (1, 8, 24)]
  xs = [jnp.asarray(rng.standard_normal(s), jnp.float32) for s in shapes]
  outs = jax.jit(lambda xs: ns.orthogonalize_many(xs, gram_min_aspect=1.5))(xs)
  for x, y in zip(xs, outs):
    chex.assert_shape(y, x.shape)
    single = ns.orthogonalize(x, gram=x.shape[1] != x.shape[2])
    # Another batch size may change XLA's summation order: float32 round-off only.
    chex.assert_trees_all_close(y, single, rtol=1e-5, atol=1e-6)
  lowered = jax.jit(lambda xs: ns.orthogonalize_many(xs)).lower(xs).as_text()
  # Two groups (8x24 with its transpose, 8x8): 2 x 5 steps x 3 products.
  assert lowered.count("dot_general") == 2 * 5 * 3


def test_schedule_resolution_and_errors():
  assert ns.schedule("quintic", 3).coeffs == (ns.QUINTIC,) * 3
  assert ns.schedule("polar_express", 7).coeffs[5:] == (ns.NEWTON_SCHULZ_QUINTIC,) * 2
  assert ns.schedule((1.5, -0.5, 0.0), 2).coeffs == ((1.5, -0.5, 0.0),) * 2
  with pytest.raises(ValueError, match="unknown ns_coeffs"):
    ns.schedule("quartic")
  with pytest.raises(ValueError, match="2 triples"):
    ns.schedule([(1.0, 0.0, 0.0)] * 3, 2)
  with pytest.raises(ValueError, match="matrix"):
    ns.orthogonalize(jnp.ones(4))
