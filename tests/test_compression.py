"""experiments/parallel/compression.py on 8 fake devices: exact means, a float64 PowerSGD reference,
error feedback, and the bytes each device sends."""

import math
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from experiments.parallel import compression
from experiments import configs_util
from experiments.training import metrics as metrics_lib
from experiments.training import loop as trainer
from tests.test_train import ROOT, TINY, restore_params

N = 8
AXIS = "data"


@pytest.fixture(scope="module")
def mesh():
  return jax.make_mesh((N,), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def exchange_fn(compressor, mesh):
  """(per-device grads [N, ...], state [N, ...]) -> (mean grads, new state, stats)."""

  def per_device(grads, state):
    squeeze = lambda t: jax.tree.map(lambda x: x[0], t)
    mean, state, stats = compressor.compress_and_mean(squeeze(grads), squeeze(state), AXIS)
    return mean, jax.tree.map(lambda x: x[None], state), stats

  return jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(AXIS), P(AXIS)),
                               out_specs=(P(), P(AXIS), P())))


def random_grads(shapes, seed, n=N):
  rng = np.random.default_rng(seed)
  return {k: rng.standard_normal((n, *s)).astype(np.float32) for k, s in shapes.items()}


SHAPES = {"w": (16, 8), "wide": (4, 12), "b": (8,)}


@pytest.mark.parametrize("kind,options", [
    ("none", {}),
    # Full rank (min(n, m)), compressed even though it sends more: P Q^T = P P^T M = M.
    ("powersgd", {"rank": 16, "min_compression_ratio": 0.0}),
    ("topk", {"fraction": 1.0}),
])
def test_lossless_settings_give_the_plain_mean(mesh, kind, options):
  compressor = compression.make_compressor(kind, **options)
  params = {k: jnp.zeros(s) for k, s in SHAPES.items()}
  state = compression.init_state(compressor, params, mesh, AXIS)
  grads = random_grads(SHAPES, seed=0)
  mean, _, _ = exchange_fn(compressor, mesh)(grads, state)
  # float32 sums of 8 terms (and, for PowerSGD, a rank-16 projection): |error| ~ 1e-6 on O(1).
  chex.assert_trees_all_close(mean, {k: g.mean(0) for k, g in grads.items()}, atol=2e-6)


def orthonormalize64(p):
  q, r = np.linalg.qr(p)
  return q * np.sign(np.diag(r))  # the QR with R's diagonal positive: what Gram-Schmidt gives


def test_powersgd_two_steps_match_a_float64_reference(mesh):
  """Vogels et al. 2019, Algorithm 1 with error feedback, in NumPy: P = mean_i(M_i Q),
  P <- orth(P), Q = mean_i(M_i^T P), update P Q^T, e_i = M_i - P Q^T, Q warm-starts step 2."""
  shapes = {"w": (12, 10), "b": (10,)}
  compressor = compression.make_compressor("powersgd", rank=3)
  params = {k: jnp.zeros(s) for k, s in shapes.items()}
  state = compression.init_state(compressor, params, mesh, AXIS)
  step = exchange_fn(compressor, mesh)
  leaves = jax.tree.leaves(params)
  w_index = [l.shape for l in leaves].index((12, 10))
  q = np.asarray(state["codec"][w_index]["q"][0], np.float64)
  err = np.zeros((N, 12, 10))
  for seed in (1, 2):
    grads = random_grads(shapes, seed)
    mean, state, _ = step(grads, state)
    m = grads["w"].astype(np.float64) + err
    p = orthonormalize64(np.mean(m @ q, axis=0))
    q = np.mean(np.swapaxes(m, 1, 2) @ p, axis=0)
    update = p @ q.T
    err = m - update
    np.testing.assert_allclose(mean["w"], update, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(mean["b"], grads["b"].mean(0), atol=1e-6)  # sent uncompressed
    for i in range(N):
      np.testing.assert_allclose(state["codec"][w_index]["q"][i], q, atol=1e-5, rtol=1e-5)
      np.testing.assert_allclose(state["codec"][w_index]["error"][i], err[i], atol=1e-5, rtol=1e-5)
  assert np.linalg.norm(err) > 1.0  # rank 3 of 10: the error feedback holds something


def topk64(m, fraction):
  k = math.ceil(fraction * m.size)
  flat = m.reshape(-1)
  keep = np.zeros(flat.size, bool)
  keep[np.argsort(-np.abs(flat), kind="stable")[:k]] = True
  return np.where(keep, flat, 0.0).reshape(m.shape)


def sign64(m):
  return np.mean(np.abs(m)) * np.where(m >= 0, 1.0, -1.0)


@pytest.mark.parametrize("kind,options,compress", [
    ("topk", {"fraction": 0.05}, lambda m: topk64(m, 0.05)),
    ("sign", {}, sign64)])
def test_error_feedback_compressors_match_float64_references(mesh, kind, options, compress):
  """Three steps of p_i = g_i + e_i, c_i = C(p_i), e_i <- p_i - c_i, applied mean_i c_i
  (top-k: the ceil(5% size) largest |p|; sign: mean|p| sign(p), Karimireddy et al. 2019)."""
  shapes = {"w": (16, 8), "b": (8,)}
  compressor = compression.make_compressor(kind, **options)
  params = {k: jnp.zeros(s) for k, s in shapes.items()}
  state = compression.init_state(compressor, params, mesh, AXIS)
  step = exchange_fn(compressor, mesh)
  err = {k: np.zeros((N, *s)) for k, s in shapes.items()}
  for seed in (11, 12, 13):
    grads = random_grads(shapes, seed)
    mean, state, _ = step(grads, state)
    for k in shapes:
      p = grads[k].astype(np.float64) + err[k]
      c = np.stack([compress(p[i]) for i in range(N)])
      err[k] = p - c
      np.testing.assert_allclose(mean[k], c.mean(0), rtol=1e-5, atol=1e-6)
  for k, s in zip(sorted(shapes), state["codec"]):  # leaves in jax.tree order: "b", "w"
    np.testing.assert_allclose(s["error"], err[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind,options", [
    ("topk", {"fraction": 0.1}), ("sign", {}), ("powersgd", {"rank": 1})])
def test_error_feedback_tracks_the_sum_of_true_mean_gradients(mesh, kind, options):
  """sum_t applied_t = sum_t mean_i g_it - mean_i e_iT exactly; with a persistent signal under
  per-device noise the sums grow like T while the residual grows slower, so the relative gap
  shrinks. Top-k and PowerSGD residuals stay flat here (~30 and ~60 against a per-step mean
  gradient of norm 11); sign's grows like sqrt(T) over these 80 steps (its contraction factor
  is only mean|p|^2 / mean(p^2) per leaf, so its theoretical bound is far larger)."""
  shapes = {"w": (16, 8), "b": (8,)}
  compressor = compression.make_compressor(kind, **options)
  params = {k: jnp.zeros(s) for k, s in shapes.items()}
  state = compression.init_state(compressor, params, mesh, AXIS)
  step = exchange_fn(compressor, mesh)
  signal = random_grads(shapes, seed=100, n=1)
  applied = {k: np.zeros(s) for k, s in shapes.items()}
  true = {k: np.zeros(s) for k, s in shapes.items()}
  gaps, residuals = {}, {}
  for t in range(1, 81):
    noise = random_grads(shapes, seed=t)
    grads = {k: signal[k] + noise[k] for k in shapes}
    mean, state, _ = step(grads, state)
    for k in shapes:
      applied[k] += np.asarray(mean[k], np.float64)
      true[k] += grads[k].astype(np.float64).mean(0)
    residuals[t] = np.sqrt(sum(np.sum((applied[k] - true[k]) ** 2) for k in shapes))
    gaps[t] = residuals[t] / np.sqrt(sum(np.sum(true[k] ** 2) for k in shapes))
  # The bookkeeping identity: what was not applied is exactly the devices' mean error.
  order = [k for k, _ in sorted(shapes.items())]  # jax.tree.leaves order: "b", "w"
  errors = {k: (np.asarray(s["error"]).mean(0) if s else 0.0)
            for k, s in zip(order, state["codec"])}
  for k in shapes:
    np.testing.assert_allclose(applied[k] + errors[k], true[k], atol=1e-4)
  assert gaps[80] < 0.5 * gaps[10], gaps
  if kind != "sign":
    late, early = max(residuals[t] for t in range(41, 81)), max(residuals[t] for t in range(1, 21))
    assert late < 1.5 * early, residuals


def test_bytes_sent_match_hand_computed_figures(mesh):
  shapes = {"w": (64, 32), "b": (32,), "small": (4, 4)}
  params = {k: jnp.zeros(s) for k, s in shapes.items()}
  full = 4 * (64 * 32 + 32 + 16)  # 8,384 bytes: the float32 all-reduce
  expected = {
      ("none", ()): full,
      # rank 2: P (64x2) + Q (32x2) floats = 768; "b" and "small" (2*4*8 = 64 > 16 elements)
      # go uncompressed: 128 + 64.
      ("powersgd", (("rank", 2),)): 768 + 128 + 64,
      # 1%: k = 21, 1, 1 (value + int32 index each).
      ("topk", (("fraction", 0.01),)): 8 * (21 + 1 + 1),
      # one bit per element plus a float32 scale per leaf.
      ("sign", ()): (256 + 4) + (4 + 4) + (2 + 4),
  }
  grads = random_grads(shapes, seed=3)
  for (kind, options), nbytes in expected.items():
    compressor = compression.make_compressor(kind, **dict(options))
    assert compressor.bytes_sent(params) == nbytes, kind
    state = compression.init_state(compressor, params, mesh, AXIS)
    _, _, stats = exchange_fn(compressor, mesh)(grads, state)
    assert float(stats["bytes_sent_per_device"]) == nbytes
    np.testing.assert_allclose(float(stats["compression_ratio"]), full / nbytes, rtol=1e-6)


@pytest.mark.parametrize("axis_type", ["Auto", "Explicit"])
def test_data_parallel_grads_on_a_sharded_batch(axis_type):
  """Through the shard_map wrapper: "none" gives the jitted global-batch loss and gradient;
  the state is per device (leading axis 8, sharded over data)."""
  mesh = jax.make_mesh((N,), (AXIS,), axis_types=(getattr(jax.sharding.AxisType, axis_type),))
  rng = np.random.default_rng(5)
  params = {"w": jnp.asarray(rng.standard_normal((6, 3)), jnp.float32),
            "b": jnp.zeros((3,), jnp.float32)}
  batch = jnp.asarray(rng.standard_normal((2, 32, 7)), jnp.float32)  # [accum, rows, 6 + 1]

  def loss(p, b):
    pred = b[..., :6] @ p["w"] + p["b"]
    return jnp.mean((pred - b[..., 6:]) ** 2)

  loss_and_grads = jax.value_and_grad(loss)
  want_loss, want_grads = jax.jit(loss_and_grads)(params, batch)
  for kind in ("none", "sign"):
    compressor = compression.make_compressor(kind)
    state = compression.init_state(compressor, params, mesh, AXIS)
    fn = jax.jit(compression.data_parallel_grads(compressor, loss_and_grads, mesh, AXIS,
                                                 batch_axis=1))
    got_loss, got_grads, new_state, stats = fn(params, batch, state)
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-6)
    if kind == "none":
      chex.assert_trees_all_close(got_grads, want_grads, rtol=1e-5, atol=1e-7)
    else:
      # EF-signSGD's first step from each device's own gradient (its 4 rows of both micro-
      # batches): mean_i mean|g_i| sign(g_i); per-leaf bytes ceil(18 / 8) + 4 and 1 + 4.
      local = [jax.grad(loss)(params, batch[:, 4 * i:4 * (i + 1)]) for i in range(N)]
      for k in params:
        g = np.stack([np.asarray(l[k], np.float64) for l in local])
        axes = tuple(range(1, g.ndim))
        scaled = np.abs(g).mean(axis=axes, keepdims=True) * np.where(g >= 0, 1.0, -1.0)
        np.testing.assert_allclose(got_grads[k], scaled.mean(0), rtol=1e-5, atol=1e-6)
      assert float(stats["compression_ratio"]) == 4 * 21 / ((3 + 4) + (1 + 4))
      for leaf in jax.tree.leaves(new_state):
        assert leaf.shape[0] == N and leaf.sharding.spec[0] == AXIS


def test_unknown_kind_lists_the_known_ones():
  with pytest.raises(ValueError, match="powersgd.*sign.*topk"):
    compression.make_compressor("qsgd")


def recipe64(grads_T, kind, fraction, warmup, refresh, momentum, b2, after=False, eps=1e-8):
  """The recipe in float64 NumPy, per device i at step t (1-based):
  v <- b2 v + (1 - b2) mean_i(g_i)^2 while t <= warmup and when (t - warmup) % refresh == 0,
  v_hat = v / (1 - b2^(number of v updates)); x_i = clip(g_i / (sqrt(v_hat) + eps),
  +-1/sqrt(1 - b2)); u_i <- mu u_i + x_i; warm-up: applied mean_i u_i; after: p_i = u_i + e_i,
  c_i = topk(p_i), e_i = p_i - c_i, u_i zeroed where c_i was sent (DGC's momentum factor
  masking), applied mean_i c_i. after: x_i = g_i and the applied mean is preconditioned (and
  clipped) instead."""
  n, shape = grads_T[0].shape[0], grads_T[0].shape[1:]
  v, u, e = np.zeros(shape), np.zeros((n, *shape)), np.zeros((n, *shape))
  count = 0
  bound = 1.0 / np.sqrt(1.0 - b2)
  applied = []
  for t, g in enumerate(grads_T, start=1):
    g = g.astype(np.float64)
    if t <= warmup or (refresh and (t - warmup) % refresh == 0):
      v, count = b2 * v + (1.0 - b2) * g.mean(0) ** 2, count + 1
    v_hat = v / (1.0 - b2 ** count)
    pre = lambda x: np.clip(x / (np.sqrt(v_hat) + eps), -bound, bound)
    u = momentum * u + (g if after else pre(g))
    post = pre if after else lambda x: x
    if t <= warmup or kind == "none":
      applied.append(post(u.mean(0)))
      continue
    p = u + e
    c = np.stack([topk64(p[i], fraction) for i in range(n)])
    e = p - c
    u = np.where(c != 0, 0.0, u)
    applied.append(post(c.mean(0)))
  return applied, u, e


@pytest.mark.parametrize("kind,refresh,after", [
    ("none", 0, False), ("topk", 0, False), ("topk", 2, False), ("topk", 2, True)])
def test_adam_preconditioned_momentum_recipe_matches_a_float64_reference(mesh, kind, refresh,
                                                                         after):
  """1-bit Adam's frozen variance (Tang et al. 2021; refreshed every 2 steps as 0/1 Adam does
  at intervals) with DGC's momentum correction and masking (Lin et al. 2018): 2 uncompressed
  warm-up steps, then 3 compressed ones."""
  shapes = {"w": (16, 8), "b": (8,)}
  options = {"fraction": 0.1} if kind == "topk" else {}
  compressor = compression.make_compressor(kind, warmup_steps=2, momentum=0.9,
                                           precondition="adam", b2=0.95,
                                           variance_refresh_every=refresh,
                                           precondition_after=after, **options)
  params = {k: jnp.zeros(s) for k, s in shapes.items()}
  state = compression.init_state(compressor, params, mesh, AXIS)
  step = exchange_fn(compressor, mesh)
  grads_T = [random_grads(shapes, seed) for seed in range(20, 25)]
  # Coordinates whose mean gradient is small during the warm-up: frozen v is tiny there and
  # the clip to Adam's bound is what keeps the step finite.
  for g in grads_T[:2]:
    g["w"][:, :, 0] *= 1e-3
  full, sent = 4 * (16 * 8 + 8), 8 * (13 + 1)
  got = []
  for t, grads in enumerate(grads_T, start=1):
    mean, state, stats = step(grads, state)
    got.append(mean)
    want_bytes = full if t <= 2 or kind == "none" else sent
    if t > 2 and refresh and (t - 2) % refresh == 0:
      want_bytes += full  # the all-reduce that refreshes v
    assert float(stats["bytes_sent_per_device"]) == want_bytes, t
  for k, s in sorted(shapes.items()):
    applied, u, e = recipe64([g[k] for g in grads_T], kind, 0.1, warmup=2, refresh=refresh,
                             momentum=0.9, b2=0.95, after=after)
    for t in range(5):
      np.testing.assert_allclose(got[t][k], applied[t], rtol=1e-5, atol=1e-5, err_msg=f"{k} {t}")
    leaf = sorted(shapes).index(k)
    np.testing.assert_allclose(state["velocity"][leaf], u, rtol=1e-5, atol=1e-5)
    if kind == "topk":
      np.testing.assert_allclose(state["codec"][leaf]["error"], e, rtol=1e-5, atol=1e-5)
  assert np.all(np.asarray(state["step"]) == 5)
  # Column 0's frozen v is ~1e-6 of the others': unclipped, its entries would be ~1000x Adam's
  # bound of 4.5, so the comparison above checks the clip.
  v = sum(0.95 ** (2 - t) * 0.05 * g["w"][:, :, 0].mean(0) ** 2
          for t, g in enumerate(grads_T[:2], 1))
  assert np.max(np.abs(grads_T[2]["w"][:, :, 0]) / np.sqrt(v / (1 - 0.95 ** 2))) > 100 * 4.5


@pytest.mark.parametrize("kind", ["powersgd", "topk", "sign"])
def test_every_kind_goes_from_the_warm_up_to_compression(mesh, kind):
  """Step 1 is the plain mean (full bytes), step 2 compressed; the warm-up and compressed
  branches of the switch must agree on every state leaf's type (PowerSGD's Q included)."""
  compressor = compression.make_compressor(kind, warmup_steps=1)
  params = {k: jnp.zeros(s) for k, s in SHAPES.items()}
  state = compression.init_state(compressor, params, mesh, AXIS)
  step = exchange_fn(compressor, mesh)
  grads = random_grads(SHAPES, seed=30)
  mean, state, stats = step(grads, state)
  chex.assert_trees_all_close(mean, {k: g.mean(0) for k, g in grads.items()}, atol=2e-6)
  assert float(stats["compression_ratio"]) == 1.0
  mean, state, stats = step(random_grads(SHAPES, seed=31), state)
  chex.assert_tree_all_finite(mean)
  assert float(stats["bytes_sent_per_device"]) == compressor.bytes_sent(params)


def test_adam_preconditioning_needs_a_warm_up():
  with pytest.raises(ValueError, match="warmup_steps >= 1"):
    compression.make_compressor("topk", precondition="adam")


@pytest.mark.slow
def test_the_trainer_runs_the_recipe_on_8_devices(tmp_path):
  """configs/speedrun_cpu_compressed.py (top-k) on a tiny GPT: 2 uncompressed steps then
  compressed ones (logged bytes), one state per device in the checkpoint."""
  values = dict(TINY, **{"data.cache_dir": str(tmp_path / "corpus"), "mesh.data": N,
                         "train.steps": 6, "train.eval_every": 6,
                         "compression.warmup_steps": 2})
  cfg = configs_util.load(os.path.join(ROOT, "configs", "speedrun_cpu_compressed.py:topk"),
                          values)
  trainer.train_and_evaluate(cfg, str(tmp_path / "w"))
  _, state = restore_params(tmp_path / "w")
  comp = state["compression"]
  assert np.all(np.asarray(comp["step"]) == 6)
  for leaf in jax.tree.leaves(comp):
    assert leaf.shape[0] == N
  # Devices saw different rows: their error-feedback memories differ.
  errors = np.asarray(comp["codec"][0]["error"])
  assert not np.allclose(errors[0], errors[1])
  rows = [r for r in metrics_lib.read_metrics(str(tmp_path / "w"))
          if "comm/bytes_sent_per_device" in r]
  sent = {r["step"]: r["comm/bytes_sent_per_device"] for r in rows}
  n_params = sum(x.size for x in jax.tree.leaves(state["params"]))
  assert sent[1] == sent[2] == 4 * n_params
  assert 30 < 4 * n_params / sent[6] < 60  # 8 bytes per sent element, 1% of each leaf


def test_shared_index_topk_matches_a_float64_reference(mesh):
  """Cyclic local top-k (ScaleCom, Chen et al. 2020): at step t every device sends its p_i =
  g_i + e_i at device (t mod N)'s top-k indices, the values are averaged in place, and every
  device's error is cleared there."""
  shapes = {"w": (16, 8), "b": (8,)}
  compressor = compression.make_compressor("topk", fraction=0.1, shared_indices=True)
  params = {k: jnp.zeros(s) for k, s in shapes.items()}
  state = compression.init_state(compressor, params, mesh, AXIS)
  step = exchange_fn(compressor, mesh)
  err = {k: np.zeros((N, *s)) for k, s in shapes.items()}
  for t, seed in enumerate((11, 12, 13)):
    grads = random_grads(shapes, seed)
    mean, state, stats = step(grads, state)
    for k in shapes:
      p = grads[k].astype(np.float64) + err[k]
      sent = topk64(p[t % N], 0.1) != 0
      err[k] = np.where(sent, 0.0, p)
      np.testing.assert_allclose(mean[k], np.where(sent, p.mean(0), 0.0), rtol=1e-5, atol=1e-6)
  for k, s in zip(sorted(shapes), state["codec"]):
    np.testing.assert_allclose(s["error"], err[k], rtol=1e-5, atol=1e-6)
  assert float(stats["bytes_sent_per_device"]) == 8 * (13 + 1)


@pytest.mark.parametrize("half_steps", [1, 2, 3])
def test_alternating_powersgd_matches_a_float64_reference(mesh, half_steps):
  """The authors' later scheme (epfml/powersgd, num_iters_per_step): each half-step
  all-reduces one factor against the other, orthonormalized (Q = mean M_i^T orth(P), then
  P = mean M_i orth(Q), ...), applies P Q^T and takes it out of M before the next half-step;
  the sides alternate across steps too."""
  shape = (16, 8)
  compressor = compression.make_compressor("powersgd", rank=2, alternating=half_steps)
  params = {"w": jnp.zeros(shape)}
  state = compression.init_state(compressor, params, mesh, AXIS)
  p = np.asarray(state["codec"][0]["p"][0], np.float64)
  q = np.asarray(state["codec"][0]["q"][0], np.float64)
  step = exchange_fn(compressor, mesh)
  err, turn = np.zeros((N, *shape)), 0
  for seed in (1, 2, 3):
    grads = random_grads({"w": shape}, seed)
    mean, state, stats = step(grads, state)
    m = grads["w"].astype(np.float64) + err
    approx = np.zeros(shape)
    for it in range(half_steps):
      residual = m - approx
      if (turn * half_steps + it) % 2 == 0:
        p = orthonormalize64(p)
        q = np.mean([residual[i].T @ p for i in range(N)], axis=0)
      else:
        q = orthonormalize64(q)
        p = np.mean([residual[i] @ q for i in range(N)], axis=0)
      approx = approx + p @ q.T
    err, turn = m - approx, turn + 1
    np.testing.assert_allclose(mean["w"], approx, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(state["codec"][0]["error"], err, rtol=1e-4, atol=1e-4)
  # Q half-steps send 2 x 8 floats, P half-steps 2 x 16; odd counts: the average of a pair.
  assert compressor.bytes_sent(params) == 4 * 2 * (8 + 16) * half_steps // 2


def test_uncompressed_leaves_are_sent_whole(mesh):
  """Leaves whose path matches `uncompressed` get the plain mean and full bytes."""
  compressor = compression.make_compressor("topk", fraction=0.05, uncompressed="^emb")
  params = {"emb": jnp.zeros((16, 8)), "w": jnp.zeros((16, 8))}
  state = compression.init_state(compressor, params, mesh, AXIS)
  grads = random_grads({"emb": (16, 8), "w": (16, 8)}, seed=70)
  mean, state, stats = exchange_fn(compressor, mesh)(grads, state)
  np.testing.assert_allclose(mean["emb"], grads["emb"].mean(0), rtol=1e-5, atol=1e-6)
  assert np.count_nonzero(np.asarray(mean["w"])) <= N * 7
  assert float(stats["bytes_sent_per_device"]) == 4 * 128 + 8 * 7
  assert state["codec"][0] == ()


@pytest.mark.parametrize("field,value,message", [
    ("compression.alternating", -1, "must be >= 0"),
    ("compression.uncompressed", "embed(", "not a valid regex")])
def test_bad_compression_options_are_config_errors(field, value, message):
  from experiments.training import validate
  cfg = configs_util.load(os.path.join(ROOT, "configs", "speedrun_cpu_compressed.py:sgd_powersgd"),
                          {field: value})
  with pytest.raises(validate.ConfigError, match=message):
    validate.validate(cfg)


@pytest.mark.slow
def test_the_trainer_runs_muon_with_alternating_powersgd(tmp_path):
  """configs/speedrun_cpu_compressed.py:muon_powersgd with alternating half-steps on a tiny GPT:
  2 uncompressed steps, then PowerSGD's bytes; the factors and turn are per-device state."""
  values = dict(TINY, **{"data.cache_dir": str(tmp_path / "corpus"), "mesh.data": N,
                         "train.steps": 4, "train.eval_every": 4,
                         "compression.warmup_steps": 2, "compression.alternating": 2})
  cfg = configs_util.load(os.path.join(ROOT, "configs", "speedrun_cpu_compressed.py:muon_powersgd"),
                          values)
  summary = trainer.train_and_evaluate(cfg, str(tmp_path / "w"))
  assert np.isfinite(summary["val_loss"])
  _, state = restore_params(tmp_path / "w")
  turns = [np.asarray(s["turn"]) for s in state["compression"]["codec"] if s]
  assert turns and all(np.all(t == 2) for t in turns)  # two compressed steps
  rows = [r for r in metrics_lib.read_metrics(str(tmp_path / "w"))
          if "comm/compression_ratio" in r]
  ratio = {r["step"]: r["comm/compression_ratio"] for r in rows}
  assert ratio[1] == 1.0 and ratio[4] > 1.0
