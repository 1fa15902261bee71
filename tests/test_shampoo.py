"""`shampoo`: parity with float64 NumPy references, blocking, grafting, failures, checkpoints."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import optimizers
from optimizers.shampoo import blocking


def make_noise(shapes, steps, seed=0):
  rng = np.random.default_rng(seed)
  return [{k: rng.standard_normal(s) for k, s in shapes.items()} for _ in range(steps)]


def toy_grad(w, noise):
  """The test's gradient: fixed noise plus the parameters (so errors carry forward)."""
  return {k: noise[k] + w[k] for k in w}


def run_steps(tx, w0, noise, dtype=jnp.float32):
  """Applies `tx` for len(noise) steps under jit; returns the parameters after each step."""
  params = {k: jnp.asarray(v, dtype) for k, v in w0.items()}
  state = tx.init(params)

  @jax.jit
  def step(params, state, noise):
    updates, state = tx.update(toy_grad(params, noise), state, params)
    return optax.apply_updates(params, updates), state

  history = []
  for n in noise:
    params, state = step(params, state, {k: jnp.asarray(v, dtype) for k, v in n.items()})
    history.append(params)
  return history, state


# ---------------------------------------------------------------------------------------------
# Independent float64 references.

def _inv_root(a, p):
  w, v = np.linalg.eigh(a)
  return (v * w ** (-1.0 / p)) @ v.T


def _unfold(g, i):
  return np.moveaxis(g, i, 0).reshape(g.shape[i], -1)


def _mode_multiply(g, mat, i):
  return np.moveaxis(np.tensordot(mat, np.moveaxis(g, i, 0), axes=1), 0, i)


def paper_shampoo(w0, noise, lr, eps, dims=None, p=None):
  """Gupta, Koren & Singer 2018, Algorithm 2: H_i = eps I + sum G_(i) G_(i)^T,
  W <- W - lr * G x_1 H_1^{-1/2k} ... x_k H_k^{-1/2k}.

  With `dims`, only those dimensions are factored (k = len(dims)); `p` replaces 2k.
  """
  w = dict(w0)
  h = {k: [eps * np.eye(d) for d in v.shape] for k, v in w.items()}
  history = []
  for n in noise:
    g = toy_grad(w, n)
    for k in w:
      factored = range(g[k].ndim) if dims is None else dims
      step = g[k]
      for i in factored:
        h[k][i] = h[k][i] + _unfold(g[k], i) @ _unfold(g[k], i).T
        step = _mode_multiply(step, _inv_root(h[k][i], p or 2 * len(factored)), i)
      w[k] = w[k] - lr * step
    history.append(dict(w))
  return history


def blocked_shampoo(w0, noise, *, lr, b1, b2, eps, block, every, start, grafting, graft_eps,
                    stats_every):
  """Shampoo with momentum, EMA factors, relative ridge, 2-D blocking and adam/no grafting.

  1-D leaves follow the grafting direction. Factors updated at t = stats_every, 2 stats_every,
  ...; roots at t = start, start + every, ...
  """
  w = dict(w0)
  mu = {k: np.zeros_like(v) for k, v in w.items()}
  nu = {k: np.zeros_like(v) for k, v in w.items()}
  blocks = {k: [(slice(r, r + block), slice(c, c + block))
                for r in range(0, v.shape[0], block) for c in range(0, v.shape[1], block)]
            for k, v in w.items() if v.ndim == 2}
  stats = {(k, b): [0.0, 0.0] for k in blocks for b in range(len(blocks[k]))}
  roots = {kb: [np.eye(1), np.eye(1)] for kb in stats}
  history = []
  for t, n in enumerate(noise, start=1):
    g = toy_grad(w, n)
    for k in w:
      mu[k] = b1 * mu[k] + (1 - b1) * g[k]
      nu[k] = b2 * nu[k] + (1 - b2) * g[k] ** 2
      m = mu[k] / (1 - b1 ** t)
      d = m / (np.sqrt(nu[k] / (1 - b2 ** t)) + graft_eps) if grafting == "adam" else m
      out = d.copy()
      for b, (rows, cols) in enumerate(blocks.get(k, [])):
        gb, st, rt = g[k][rows, cols], stats[(k, b)], roots[(k, b)]
        if t % stats_every == 0:
          st[0] = b2 * st[0] + (1 - b2) * gb @ gb.T
          st[1] = b2 * st[1] + (1 - b2) * gb.T @ gb
        if t >= start and (t - start) % every == 0:
          for i in range(2):
            ridge = eps * np.linalg.eigvalsh(st[i]).max()
            rt[i] = _inv_root(st[i] + ridge * np.eye(len(st[i])), 4)
        if t >= start:
          s = rt[0] @ m[rows, cols] @ rt[1]
          if grafting == "adam":
            s = s * np.linalg.norm(d[rows, cols]) / np.linalg.norm(s)
          out[rows, cols] = s
      w[k] = w[k] - lr * out
    history.append(dict(w))
  return history


# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("root_method", ["eigh", "newton"])
def test_matches_paper_algorithm(root_method):
  """Grafting none, b2 = 1 (sums), one block, roots every step: the paper's update."""
  rng = np.random.default_rng(1)
  w0 = {"w": rng.standard_normal((5, 3)), "t": rng.standard_normal((2, 3, 4))}
  noise = make_noise({k: v.shape for k, v in w0.items()}, 10)
  tx = optimizers.create(
      "shampoo", learning_rate=0.05, b1=0.0, b2=1.0, eps=0.1, relative_eps=False,
      grafting="none", block_size=None, merge_small_dims=False, precondition_every=1,
      start_preconditioning_step=1, root_method=root_method)
  got, _ = run_steps(tx, w0, noise)
  want = paper_shampoo(w0, noise, lr=0.05, eps=0.1)
  for g, r in zip(got, want):
    chex.assert_trees_all_close(g, r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("root_method, stats_every", [("eigh", 1), ("newton", 2)])
def test_matches_blocked_reference_with_momentum_and_adam_grafting(root_method, stats_every):
  rng = np.random.default_rng(2)
  w0 = {"w": rng.standard_normal((8, 6)), "b": rng.standard_normal((5,))}
  noise = make_noise({k: v.shape for k, v in w0.items()}, 12, seed=3)
  # Start once the 4x4 factors of the 4x2 blocks have full rank (two rank-2 updates): a
  # rank-deficient factor with a 1e-6 relative ridge has condition number 1e6, and its root
  # in float32 is then only good to about 1e-5.
  hp = dict(b1=0.9, b2=0.95, eps=1e-6, every=3, start=5, grafting="adam", graft_eps=1e-8,
            stats_every=stats_every)
  tx = optimizers.create(
      "shampoo", learning_rate=0.01, b1=hp["b1"], b2=hp["b2"], eps=hp["eps"], block_size=4,
      precondition_every=hp["every"], start_preconditioning_step=hp["start"],
      statistics_every=stats_every, grafting=hp["grafting"], graft_eps=hp["graft_eps"],
      root_method=root_method)
  got, state = run_steps(tx, w0, noise)
  want = blocked_shampoo(w0, noise, lr=0.01, block=4, **hp)
  for g, r in zip(got, want):
    chex.assert_trees_all_close(g, r, rtol=1e-5, atol=1e-6)
  metrics = optimizers.collect_metrics(state)
  assert set(metrics) == {"root_failures", "root_residual", "nonfinite_skips",
                          "nonfinite_streak"}
  assert int(metrics["root_failures"]) == int(metrics["nonfinite_skips"]) == 0
  assert 0 < float(metrics["root_residual"]) < 1e-3


@pytest.mark.parametrize("root_override", [None, 4])
def test_one_sided_above_max_preconditioner_dim(root_override):
  """A (6, 3) leaf with max_preconditioner_dim 4: only the columns are factored, G R^{-1/2}
  (k = 1), or G R^{-1/4} with root_override 4."""
  rng = np.random.default_rng(10)
  w0 = {"w": rng.standard_normal((6, 3))}
  noise = make_noise({"w": (6, 3)}, 10)
  tx = optimizers.create(
      "shampoo", learning_rate=0.05, b1=0.0, b2=1.0, eps=0.1, relative_eps=False,
      grafting="none", max_preconditioner_dim=4, merge_small_dims=False, precondition_every=1,
      start_preconditioning_step=1, root_method="eigh", root_override=root_override)
  got, _ = run_steps(tx, w0, noise)
  want = paper_shampoo(w0, noise, lr=0.05, eps=0.1, dims=[1], p=root_override)
  for g, r in zip(got, want):
    chex.assert_trees_all_close(g, r, rtol=1e-5, atol=1e-6)


def test_block_size_at_least_every_dim_equals_no_blocking_exactly():
  rng = np.random.default_rng(4)
  w0 = {"w": rng.standard_normal((6, 5)), "t": rng.standard_normal((3, 4, 2)),
        "b": rng.standard_normal((7,))}
  noise = make_noise({k: v.shape for k, v in w0.items()}, 6)
  hp = dict(learning_rate=0.01, start_preconditioning_step=1, precondition_every=2,
            merge_small_dims=False, root_method="eigh")
  unblocked, _ = run_steps(optimizers.create("shampoo", block_size=None, **hp), w0, noise)
  blocked, _ = run_steps(optimizers.create("shampoo", block_size=6, **hp), w0, noise)
  chex.assert_trees_all_equal(unblocked, blocked)


def test_blocks_are_independent_shampoos():
  """A (8, 4) leaf in blocks of 4 moves as two separate (4, 4) leaves would."""
  rng = np.random.default_rng(5)
  w = rng.standard_normal((8, 4))
  noise = make_noise({"w": (8, 4)}, 6)
  hp = dict(learning_rate=0.01, block_size=4, start_preconditioning_step=1,
            precondition_every=2)
  whole, _ = run_steps(optimizers.create("shampoo", **hp), {"w": w}, noise)
  halves, _ = run_steps(optimizers.create("shampoo", **hp), {"w0": w[:4], "w1": w[4:]},
                   [{"w0": n["w"][:4], "w1": n["w"][4:]} for n in noise])
  for a, b in zip(whole, halves):
    chex.assert_trees_all_close(a["w"], jnp.concatenate([b["w0"], b["w1"]]), rtol=1e-6,
                                atol=1e-7)


@pytest.mark.parametrize("grafting", ["sgd", "adagrad", "rmsprop", "adam"])
def test_grafting_gives_grafted_norm_per_block(grafting):
  b1, b2, eps, lr = 0.9, 0.95, 1e-8, 0.1
  grads = make_noise({"w": (8, 6)}, 3, seed=6)
  tx = optimizers.create("shampoo", learning_rate=lr, b1=b1, b2=b2, graft_eps=eps,
                         grafting=grafting, block_size=4, start_preconditioning_step=1,
                         precondition_every=1)
  params = {"w": jnp.zeros((8, 6))}
  state = tx.init(params)
  update = jax.jit(tx.update)
  for g in grads:
    updates, state = update({"w": jnp.asarray(g["w"], jnp.float32)}, state, params)
  gs = np.stack([g["w"] for g in grads])
  t = len(grads)
  m = sum((1 - b1) * b1 ** (t - 1 - i) * gs[i] for i in range(t)) / (1 - b1 ** t)
  v = sum((1 - b2) * b2 ** (t - 1 - i) * gs[i] ** 2 for i in range(t))
  denom = {"sgd": 1.0, "adagrad": np.sqrt(np.sum(gs ** 2, 0)) + eps,
           "rmsprop": np.sqrt(v) + eps, "adam": np.sqrt(v / (1 - b2 ** t)) + eps}[grafting]
  d = m / denom
  u = -np.asarray(updates["w"], np.float64) / lr
  for rows in (slice(0, 4), slice(4, 8)):
    for cols in (slice(0, 4), slice(4, 6)):
      np.testing.assert_allclose(np.linalg.norm(u[rows, cols]),
                                 np.linalg.norm(d[rows, cols]), rtol=1e-5)
  # The direction is Shampoo's, not the grafting method's own.
  assert np.abs(u / np.linalg.norm(u) - d / np.linalg.norm(d)).max() > 1e-2


@pytest.mark.parametrize("nesterov", [False, True])
def test_before_preconditioning_it_is_adamw(nesterov):
  rng = np.random.default_rng(7)
  w0 = {"w": rng.standard_normal((6, 4)), "b": rng.standard_normal((4,))}
  noise = make_noise({k: v.shape for k, v in w0.items()}, 5)
  hp = dict(learning_rate=0.01, b1=0.9, b2=0.95, weight_decay=0.1, nesterov=nesterov)
  got, _ = run_steps(optimizers.create("shampoo", start_preconditioning_step=100, graft_eps=1e-8,
                                  **hp), w0, noise)
  want, _ = run_steps(optimizers.create("adamw", eps=1e-8, **hp), w0, noise)
  chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-7)


def test_dead_parameter_counts_failures_and_stays_finite():
  """A leaf whose gradient is always zero has zero factors: every root is rejected."""
  params = {"w": jnp.ones((4, 4)), "z": jnp.ones((4, 4))}
  tx = optimizers.create("shampoo", learning_rate=0.01, block_size=4,
                         start_preconditioning_step=1, precondition_every=1)
  state = tx.init(params)
  update = jax.jit(tx.update)
  rng = np.random.default_rng(8)
  for _ in range(3):
    grads = {"w": jnp.asarray(rng.standard_normal((4, 4)), jnp.float32),
             "z": jnp.zeros((4, 4))}
    updates, state = update(grads, state, params)
    chex.assert_tree_all_finite(updates)
    params = optax.apply_updates(params, updates)
  assert int(optimizers.collect_metrics(state)["root_failures"]) == 2 * 3  # 2 factors x 3
  chex.assert_trees_all_equal(updates["z"], jnp.zeros((4, 4)))


def check_checkpoint_roundtrip(tx, w0, noise, tmp_path):
  """Saves params and state with orbax after 3 steps, restores them into abstract targets, and
  checks that they are equal and that the next steps are identical from either copy."""
  params = {k: jnp.asarray(v, jnp.float32) for k, v in w0.items()}
  state = tx.init(params)

  @jax.jit
  def step(params, state, n):
    updates, state = tx.update(toy_grad(params, n), state, params)
    return optax.apply_updates(params, updates), state

  for n in noise[:3]:
    params, state = step(params, state, n)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "ckpt", {"params": params, "opt_state": state})
  checkpointer.wait_until_finished()
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct, {"params": params, "opt_state": state})
  restored = checkpointer.restore(tmp_path / "ckpt", target)
  chex.assert_trees_all_equal(restored, {"params": params, "opt_state": state})
  p2, s2 = restored["params"], restored["opt_state"]
  for n in noise[3:]:
    params, state = step(params, state, n)
    p2, s2 = step(p2, s2, n)
  chex.assert_trees_all_equal((params, state), (p2, s2))


def test_state_survives_orbax_and_training_continues_identically(tmp_path):
  rng = np.random.default_rng(9)
  w0 = {"w": rng.standard_normal((8, 6)), "b": rng.standard_normal((6,))}
  tx = optimizers.create("shampoo", learning_rate=0.01, block_size=4,
                         start_preconditioning_step=2, precondition_every=2)
  check_checkpoint_roundtrip(tx, w0, make_noise({k: v.shape for k, v in w0.items()}, 6), tmp_path)


def test_init_on_abstract_shapes_and_dtypes_kept():
  params = {"w": jnp.ones((8, 6), jnp.bfloat16), "b": jnp.ones((6,), jnp.bfloat16)}
  tx = optimizers.create("shampoo", learning_rate=0.01, block_size=4,
                         start_preconditioning_step=1, precondition_every=1)
  abstract = jax.eval_shape(tx.init, params)
  concrete = tx.init(params)
  chex.assert_trees_all_equal_shapes_and_dtypes(abstract, concrete)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(concrete[0].stats))
  grads = jax.tree.map(lambda p: jnp.full(p.shape, 0.5, p.dtype), params)
  updates, _ = jax.jit(tx.update)(grads, concrete, params)
  chex.assert_trees_all_equal_dtypes(updates, params)
  chex.assert_tree_all_finite(updates)


def test_plans_block_merge_and_route():
  plan = blocking.plan_leaf
  assert plan((128,)) is None  # 1-D: grafting only
  assert plan((2_000_000, 64)) is None  # embedding: grafting only
  p = plan((3, 3, 64, 128), block_size=1024)
  assert p.merged == (576, 128) and p.splits == ((576,), (128,))
  p = plan((128, 512), block_size=128)
  assert p.splits == ((128,), (128,) * 4)
  p = plan((300, 100), block_size=128, merge_small_dims=False)
  assert p.splits == ((128, 128, 44), (100,))
  p = plan((10_000, 64), block_size=1024, max_preconditioner_dim=4096)
  assert p.preconditioned == (False, True) and p.splits == ((10_000,), (64,))
  assert plan((10_000, 8_000), max_preconditioner_dim=4096) is None  # diagonal fallback
  x = jnp.arange(300 * 100, dtype=jnp.float32).reshape(300, 100)
  p = plan((300, 100), block_size=64)
  chex.assert_trees_all_equal(blocking.join(blocking.split(x, p), p), x)


@pytest.mark.slow
@pytest.mark.parametrize("name,extra", [("shampoo", dict(block_size=4, root_method="newton")),
                                        ("shampoo", dict(block_size=16, root_method="eigh")),
                                        ("soap", dict(block_size=4))])
def test_stacked_layers_with_batch_axes_equal_the_unstacked_layers(name, extra):
  # The pipeline holds layers stacked: (layers, fan_in, fan_out) kernels, (layers, width)
  # scales. With `batch_axes` the layer axis is a batch, and each layer must be preconditioned
  # exactly as on its own (a stacked vector: grafting only, as a vector).
  layers, shape = 3, (6, 10)
  hp = dict(learning_rate=0.1, start_preconditioning_step=2, precondition_every=2, **extra)
  stacked_tx = optimizers.create(name, batch_axes={"w": 1, "s": 1, "v": 0}, **hp)
  plain_tx = optimizers.create(name, **hp)
  keys = jax.random.split(jax.random.key(0), 8)
  stacked = {"w": jax.random.normal(keys[0], (layers, *shape)), "s": jnp.ones((layers, 6)),
             "v": jnp.ones((5, 4))}
  unstack = lambda t: {"w": [t["w"][i] for i in range(layers)],
                       "s": [t["s"][i] for i in range(layers)], "v": t["v"]}
  s_state, p_state = stacked_tx.init(stacked), plain_tx.init(unstack(stacked))
  s_upd, p_upd = jax.jit(stacked_tx.update), jax.jit(plain_tx.update)
  for k in keys[1:]:
    g = {"w": jax.random.normal(k, (layers, *shape)), "s": jax.random.normal(k, (layers, 6)),
         "v": jax.random.normal(k, (5, 4))}
    su, s_state = s_upd(g, s_state)
    pu, p_state = p_upd(unstack(g), p_state)
    # Per layer the same products; only the batch position of each factor differs.
    chex.assert_trees_all_close(unstack(su), pu, rtol=1e-6, atol=1e-7)
  # And it is not the 3-D tensor's optimizer (which would fail the same check).
  whole_tx = optimizers.create(name, **hp)
  w_state = whole_tx.init(stacked)
  for k in keys[1:]:
    g = {"w": jax.random.normal(k, (layers, *shape)), "s": jax.random.normal(k, (layers, 6)),
         "v": jax.random.normal(k, (5, 4))}
    wu, w_state = jax.jit(whole_tx.update)(g, w_state)
  assert not np.allclose(wu["w"], su["w"], rtol=1e-3)


def test_batch_axes_resolve_and_plan_each_index():
  params = {"a": jnp.zeros((4, 6, 8)), "b": jnp.zeros((6, 4, 8)), "c": jnp.zeros((4, 6))}
  assert blocking.resolve_batch_axes(params, {"a": 1, "c": 1}) == [1, 0, 1]
  assert blocking.resolve_batch_axes(params, lambda path, x: x.ndim - 2) == [1, 1, 0]
  assert blocking.resolve_batch_axes(params, None) == [0, 0, 0]
  with pytest.raises(ValueError, match="cannot have 3 batch axes"):
    blocking.resolve_batch_axes(params, {"c": 3})
  p = blocking.plan_leaf((3, 300, 100), block_size=64, batch_axes=1)
  assert p.batch == (3,) and len(p.block_shapes()) == 3 * 5 * 2
  assert blocking.plan_leaf((3, 100), batch_axes=1) is None  # a stack of vectors
  x = jnp.arange(3 * 300 * 100, dtype=jnp.float32).reshape(3, 300, 100)
  chex.assert_trees_all_equal(blocking.join(blocking.split(x, p), p), x)
  chex.assert_trees_all_equal(blocking.split(x, p)[5 * 2], x[1, :64, :64])
