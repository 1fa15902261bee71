"""Muon against an independent float64 NumPy Muon + AdamW; routing; dimension numbers."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optimizers
from optimizers import routing

QUINTIC = [(3.4445, -4.7750, 2.0315)] * 5
POLAR = [(8.1566, -22.4833, 15.8788), (4.0429, -2.8089, 0.5000), (3.8917, -2.7725, 0.5061),
         (3.2858, -2.3681, 0.4645), (2.3465, -1.7098, 0.4232)]
SHAPES = {
    "embed": {"embedding": (16, 8)},
    "blocks": {0: {"attn": {"q": {"kernel": (8, 8)}},
                   "mlp": {"fc": {"kernel": (8, 24)}, "proj": {"kernel": (24, 8)}},
                   "norm": {"scale": (8,)}}},
    "lm_head": {"kernel": (8, 16)},
}
MUON_PATHS = ("blocks/0/attn/q/kernel", "blocks/0/mlp/fc/kernel", "blocks/0/mlp/proj/kernel")


def _tree(shapes, seed, scale=1.0, dtype=jnp.float32):
  leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda x: isinstance(x, tuple))
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(
      treedef, [scale * jax.random.normal(k, s, dtype) for k, s in zip(keys, leaves)])


def _flat(tree):
  return {routing.path_str(p): np.asarray(x, np.float64)
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


# ---- the reference: Jordan et al. (2024) Muon and Loshchilov & Hutter (2019) AdamW ----------

def _np_orthogonalize(x, coeffs, norm_scale, eps):
  tall = x.shape[0] > x.shape[1]
  x = x.T if tall else x
  x = x / (np.linalg.norm(x) * norm_scale + eps)
  for a, b, c in coeffs:
    gram = x @ x.T
    x = a * x + (b * gram + c * gram @ gram) @ x
  return x.T if tall else x


def _np_reference(params, grads_seq, hp):
  """Runs len(grads_seq) steps; `hp` holds the hyperparameters and lr functions of the step."""
  theta = _flat(params)
  state = {k: [np.zeros_like(v), np.zeros_like(v)] for k, v in theta.items()}
  for t, grads in enumerate(grads_seq, start=1):
    # Momentum warmup: beta rises linearly from momentum_start over the first W steps.
    warm = hp.get("momentum_warmup_steps", 0)
    beta = hp["momentum"] if not warm else (
        hp["momentum_start"] + (hp["momentum"] - hp["momentum_start"]) * min(t - 1, warm) / warm)
    for k, g in _flat(grads).items():
      if k in MUON_PATHS:
        m = state[k][0] = beta * state[k][0] + (1 - beta) * g
        u = (1 - beta) * g + beta * m if hp["nesterov"] else m
        fan_in, fan_out = g.shape
        s = (max(1.0, fan_out / fan_in) ** 0.5 if hp["scale"] == "original"
             else 0.2 * max(fan_in, fan_out) ** 0.5)
        o = s * _np_orthogonalize(u, hp["coeffs"], hp["norm_scale"], hp["eps"])
        theta[k] = theta[k] - hp["lr"](t - 1) * (o + hp["weight_decay"] * theta[k])
      else:
        b1, b2 = hp["adam_b1"], hp["adam_b2"]
        mu = state[k][0] = b1 * state[k][0] + (1 - b1) * g
        nu = state[k][1] = b2 * state[k][1] + (1 - b2) * g * g
        m_hat, v_hat = mu / (1 - b1**t), nu / (1 - b2**t)
        theta[k] = theta[k] - hp["adam_lr"] * (
            m_hat / (np.sqrt(v_hat) + hp["adam_eps"]) + hp["adam_weight_decay"] * theta[k])
  return theta


def _run(tx, params, grads_seq):
  state = tx.init(params)
  step = jax.jit(tx.update)
  for grads in grads_seq:
    updates, state = step(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params, state


CASES = {
    "nesterov_original": dict(nesterov=True, scale="original", weight_decay=0.0,
                              ns_coeffs="quintic"),
    "heavy_ball_moonlight_wd_schedule": dict(nesterov=False, scale="match_adamw_rms",
                                             weight_decay=0.1, ns_coeffs="quintic",
                                             schedule=True),
    "polar_express": dict(nesterov=True, scale="original", weight_decay=0.01,
                          ns_coeffs="polar_express"),
    "gram": dict(nesterov=True, scale="original", weight_decay=0.0, ns_coeffs="quintic",
                 gram_ns=True),
    "momentum_warmup": dict(nesterov=True, scale="original", weight_decay=0.0,
                            ns_coeffs="quintic", momentum_warmup_steps=6, momentum_start=0.5),
    "momentum_warmup_heavy_ball": dict(nesterov=False, scale="original", weight_decay=0.0,
                                       ns_coeffs="quintic", momentum_warmup_steps=4,
                                       momentum_start=0.0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_ten_steps_match_float64_numpy(case):
  cfg = dict(CASES[case])
  lr = (lambda count: 0.02 * (1.0 - count / 20.0)) if cfg.pop("schedule", False) else 0.02
  hp = dict(momentum=0.9, adam_learning_rate=1e-2, adam_b1=0.8, adam_b2=0.95, adam_eps=1e-8,
            adam_weight_decay=0.05, **cfg)
  tx = optimizers.create("muon", learning_rate=lr, **hp)
  params = _tree(SHAPES, seed=0, scale=0.5)
  grads_seq = [_tree(SHAPES, seed=10 + t) for t in range(10)]
  got, _ = _run(tx, params, grads_seq)
  polar = cfg["ns_coeffs"] == "polar_express"
  ref = _np_reference(params, grads_seq, dict(
      hp, lr=lr if callable(lr) else (lambda count: lr), adam_lr=1e-2,
      coeffs=POLAR if polar else QUINTIC, norm_scale=1.02 if polar else 1.0,
      eps=1e-6 if polar else 1e-7))
  got = _flat(got)
  assert set(got) == set(ref)
  for k in ref:
    np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_default_routing_on_the_gpt():
  from models import gpt  # pylint: disable=g-import-not-at-top
  cfg = gpt.GPTConfig(vocab_size=32, num_layers=2, width=16, num_heads=2, max_seq_len=8)
  params = jax.eval_shape(lambda: gpt.init_params(cfg, jax.random.key(0)))
  labels = {routing.path_str(p): v for p, v in
            jax.tree_util.tree_flatten_with_path(routing.label_fn()(params))[0]}
  assert labels["embed/embedding"] == "adam"
  assert labels["lm_head/kernel"] == "adam"
  assert labels["final_norm/scale"] == "adam"
  assert labels["blocks/1/attn_norm/scale"] == "adam"
  for name in ("attn/q", "attn/k", "attn/v", "attn/proj", "mlp/fc", "mlp/proj"):
    assert labels[f"blocks/1/{name}/kernel"] == "muon"
  assert sum(v == "muon" for v in labels.values()) == 12


def test_label_overrides_by_function_and_pytree():
  params = _tree(SHAPES, seed=0)
  attn_to_adam = lambda path, leaf: (
      "adam" if "attn" in routing.path_str(path) else routing.default_label(path, leaf))
  by_fn = routing.label_fn(attn_to_adam)(params)
  assert by_fn["blocks"][0]["attn"]["q"]["kernel"] == "adam"
  assert by_fn["blocks"][0]["mlp"]["fc"]["kernel"] == "muon"
  as_tree = jax.tree.map(lambda x: "adam", params)
  as_tree["blocks"][0]["mlp"]["fc"]["kernel"] = "muon"
  tx = optimizers.create("muon", learning_rate=0.02, labels=as_tree)
  grads = _tree(SHAPES, seed=1)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  # First AdamW step: -lr * g / (|g| + eps) elementwise; Muon: orthogonal times sqrt(24 / 8).
  chex.assert_trees_all_close(updates["lm_head"]["kernel"],
                              -3e-3 * jnp.sign(grads["lm_head"]["kernel"]), rtol=1e-5, atol=1e-8)
  s = np.linalg.svd(np.asarray(updates["blocks"][0]["mlp"]["fc"]["kernel"]), compute_uv=False)
  assert 0.68 * 3**0.5 * 0.02 < s.min() and s.max() < 1.14 * 3**0.5 * 0.02
  with pytest.raises(ValueError, match="expected 'muon' or 'adam'"):
    routing.label_fn(lambda path, leaf: "sgd")(params)


def _muon_update(params, grads, **kw):
  tx = optimizers.create("muon", learning_rate=1.0, nesterov=False, momentum=0.0, **kw)
  return jax.jit(tx.update)(grads, tx.init(params), params)[0]


def test_stacked_3d_kernels_follow_their_dimension_numbers():
  stack = jax.random.normal(jax.random.key(0), (3, 8, 24))
  grads = {"w": stack}
  dn = routing.DimensionNumbers(reduction_axis=1, output_axis=2)
  by_fn = _muon_update(grads, grads, dimension_numbers=lambda path, leaf: dn)
  by_tree = _muon_update(grads, grads, dimension_numbers={"w": dn})
  chex.assert_trees_all_equal(by_fn, by_tree)
  separate = _muon_update({"w": list(stack)}, {"w": list(stack)})
  chex.assert_trees_all_close(by_fn["w"], jnp.stack(separate["w"]), rtol=1e-5, atol=1e-6)
  for i in range(3):
    ref = 3**0.5 * _np_orthogonalize(np.asarray(stack[i], np.float64), QUINTIC, 1.0, 1e-7)
    np.testing.assert_allclose(-np.asarray(by_fn["w"][i]), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layout", ["HWIO", "OIHW"])
def test_conv_kernels_follow_their_dimension_numbers(layout):
  hwio = np.asarray(jax.random.normal(jax.random.key(1), (3, 3, 4, 8)), np.float64)
  if layout == "HWIO":
    kernel, dn = hwio, routing.DimensionNumbers((0, 1, 2), 3)
  else:
    kernel, dn = hwio.transpose(3, 2, 0, 1), routing.DimensionNumbers((1, 2, 3), 0)
  grads = {"conv": jnp.asarray(kernel, jnp.float32)}
  for scale, factor in (("original", 1.0), ("match_adamw_rms", 0.2 * 36**0.5)):
    got = -np.asarray(_muon_update(grads, grads, dimension_numbers={"conv": dn},
                                   scale=scale)["conv"])
    ref = factor * _np_orthogonalize(hwio.reshape(36, 8), QUINTIC, 1.0, 1e-7).reshape(3, 3, 4, 8)
    if layout == "OIHW":
      ref = ref.transpose(3, 2, 0, 1)
    # Float32 Newton–Schulz against float64: each quintic step multiplies a rounding error by
    # up to p'(0) = 3.44, so five steps amplify the products' rounding up to ~480x. How large
    # that rounding is depends on how XLA's CPU dot kernels order their sums: the 8 x 36 Gram
    # product is 2.3e-8 (relative) from exact on jax 0.10.2 and 1.2e-7 on 0.12.1 (both within
    # float32's n·u = 2.1e-6 for 36 terms), and the result then 2.7e-7 and 5.9e-6 from the
    # float64 iteration. Hence 3e-5 (~480 x 1.2e-7 x |entries| <= 0.5, with margin): a wrong
    # layout (axes swapped or flattened in another order) is off by O(0.1).
    np.testing.assert_allclose(got, ref, rtol=0, atol=3e-5)


def test_more_than_two_dims_without_dimension_numbers_is_an_error():
  params = {"w": jnp.zeros((2, 4, 4)), "b": jnp.zeros(4)}
  tx = optimizers.create("muon", learning_rate=0.02)
  with pytest.raises(ValueError, match="need explicit dimension numbers"):
    jax.eval_shape(tx.init, params)
  ok = optimizers.create("muon", learning_rate=0.02,
                         labels=lambda p, x: "adam" if x.ndim != 2 else "muon")
  jax.eval_shape(ok.init, params)


@pytest.mark.parametrize("name", ["muon", "optax_muon"])
def test_init_on_abstract_shapes_and_dtypes_kept(name):
  params = _tree(SHAPES, seed=0, dtype=jnp.bfloat16)
  tx = optimizers.create(name, learning_rate=0.02)
  abstract = jax.eval_shape(tx.init, jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params))
  state = tx.init(params)
  chex.assert_trees_all_equal_shapes_and_dtypes(abstract, state)
  updates, state = jax.jit(tx.update)(_tree(SHAPES, 1, dtype=jnp.bfloat16), state, params)
  chex.assert_trees_all_equal_shapes_and_dtypes(updates, params)
  chex.assert_tree_all_finite(updates)
  chex.assert_trees_all_equal_shapes_and_dtypes(state, abstract)


def test_optax_muon_matches_without_nesterov():
  """optax bias-corrects the momentum; without Nesterov that is a scalar, which NS removes."""
  params = _tree(SHAPES, seed=0)
  grads_seq = [_tree(SHAPES, seed=20 + t) for t in range(5)]
  kw = dict(learning_rate=0.02, nesterov=False, weight_decay=0.1, scale="match_adamw_rms")
  ours, _ = _run(optimizers.create("muon", **kw), params, grads_seq)
  theirs, _ = _run(optimizers.create("optax_muon", **kw), params, grads_seq)
  chex.assert_trees_all_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_registry_hyperparameters():
  names = set(optimizers.hyperparameters("muon"))
  assert {"learning_rate", "momentum", "nesterov", "ns_steps", "ns_coeffs", "ns_dtype", "scale",
          "weight_decay", "adam_learning_rate", "adam_b1", "adam_b2", "adam_eps",
          "adam_weight_decay"} <= names
  with pytest.raises(ValueError, match="unknown scale"):
    optimizers.create("muon", learning_rate=0.02, scale="spectral")


def test_speedrun_muon_config_builds():
  from experiments import configs_util  # pylint: disable=g-import-not-at-top
  cfg = configs_util.load("configs/speedrun_cpu_muon.py")
  hp = dict(cfg.optimizer)
  tx = optimizers.create(hp.pop("name"), **hp)
  params = _tree(SHAPES, seed=0)
  jax.eval_shape(tx.init, params)


def test_extra_args_and_a_small_regression_converges():
  """Least squares ||X W - Y||^2 with a hidden W: Muon drives the loss down ~100x."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((64, 16)), jnp.float32)
  y = x @ jnp.asarray(rng.standard_normal((16, 8)), jnp.float32)
  loss = lambda p: jnp.mean(jnp.square(x @ p["hidden"]["kernel"] + p["bias"] - y))
  params = {"hidden": {"kernel": jnp.zeros((16, 8))}, "bias": jnp.zeros(8)}
  tx = optax.with_extra_args_support(optimizers.create(
      "muon", learning_rate=optax.cosine_decay_schedule(0.3, 100), adam_learning_rate=0.05))
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    grads = jax.grad(loss)(params)
    updates, state = tx.update(grads, state, params, grad_fn=jax.grad(loss))
    return optax.apply_updates(params, updates), state

  start = float(loss(params))
  for _ in range(100):
    params, state = step(params, state)
  assert float(loss(params)) < start / 100
