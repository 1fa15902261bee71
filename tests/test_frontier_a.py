"""Lion, Schedule-Free AdamW/SGD, AdEMAMix, cautious updates and cautious weight decay.

Each entry against a float64 NumPy version of its authors' algorithm, written here from the
papers and the authors' reference code (never by calling optax or the code under test); then
dtypes, abstract init, jit, and an orbax round trip of the state.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import optimizers

# The leaves, gradient scales, step size and tolerances of the Adam-family parity tests.
from tests.test_adam_family import ATOL, GRAD_SCALES, LR, RTOL, SHAPES, Adam

STEPS = 25


# ---- references, one leaf at a time -----------------------------------------------------------

class Lion:
  """Chen et al. (2023), Algorithm 2."""

  def __init__(self, b1=0.9, b2=0.99, weight_decay=0.0):
    self.b1, self.b2, self.wd, self.m = b1, b2, weight_decay, 0.0

  def step(self, g, p, t):
    c = self.b1 * self.m + (1 - self.b1) * g
    self.m = self.b2 * self.m + (1 - self.b2) * g
    return -LR * (np.sign(c) + self.wd * p)


class CautiousAdamW:
  """Liang et al. (2024) C-AdamW: decay outside the mask, phi / max(mean(phi), 1e-3)."""

  def __init__(self, weight_decay=0.0, **adam):
    self.adam, self.wd = Adam(**adam), weight_decay

  def step(self, g, p, t):
    d = self.adam.direction(g, t)
    phi = (d * g > 0).astype(np.float64)
    return -LR * (d * phi / max(phi.mean(), 1e-3) + self.wd * p)


class CautiousLion:

  def __init__(self):
    self.lion = Lion()

  def step(self, g, p, t):
    u = self.lion.step(g, p, t)
    phi = (-u * g > 0).astype(np.float64)
    return u * phi / max(phi.mean(), 1e-3)


class AdamWCautiousDecay:
  """Decay only where the Adam step and the parameter agree (the NanoGPT speedrun's rule)."""

  def __init__(self, weight_decay, **adam):
    self.adam, self.wd = Adam(**adam), weight_decay

  def step(self, g, p, t):
    d = self.adam.direction(g, t)
    return -LR * (d + self.wd * p * (d * p >= 0))


class AdEMAMix:
  """Pagliardini et al. (2024), Algorithm 1; schedulers as in the authors' code (half-life)."""

  def __init__(self, b1=0.9, b2=0.999, b3=0.9999, alpha=5.0, eps=1e-8, weight_decay=0.0,
               alpha_warmup_steps=0, b3_warmup_steps=0):
    self.b1, self.b2, self.b3, self.alpha, self.eps, self.wd = b1, b2, b3, alpha, eps, weight_decay
    self.ta, self.tb = alpha_warmup_steps, b3_warmup_steps
    self.m1 = self.m2 = self.nu = 0.0

  def _b3(self, t):
    if not self.tb or t >= self.tb:
      return self.b3
    half_life = lambda b: np.log(0.5) / np.log(b) - 1
    a = t / self.tb
    return 0.5 ** (1 / ((1 - a) * half_life(self.b1) + a * half_life(self.b3) + 1))

  def step(self, g, p, t):
    alpha = self.alpha * t / self.ta if self.ta and t < self.ta else self.alpha
    b3 = self._b3(t)
    self.m1 = self.b1 * self.m1 + (1 - self.b1) * g
    self.m2 = b3 * self.m2 + (1 - b3) * g
    self.nu = self.b2 * self.nu + (1 - self.b2) * g * g
    denom = np.sqrt(self.nu) / np.sqrt(1 - self.b2 ** t) + self.eps
    return -LR * ((self.m1 / (1 - self.b1 ** t) + alpha * self.m2) / denom + self.wd * p)


class ScheduleFree:
  """Defazio et al. (2024): the authors' `*ScheduleFreeReference` (x, y, z stored).

  `bias_correction`: "denominator" as in `schedulefree` 1.4 (eps on sqrt(v / (1 - b2^t)));
  "learning_rate" as its earlier releases (lr times sqrt(1 - b2^t), eps on sqrt(v)).
  """

  def __init__(self, p, adam, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, warmup_steps=0,
               weight_lr_power=2.0, r=0.0, bias_correction="denominator"):
    self.adam, self.b1, self.b2, self.eps, self.wd = adam, b1, b2, eps, weight_decay
    self.on_lr = bias_correction == "learning_rate"
    self.warmup, self.power, self.r = warmup_steps, weight_lr_power, r
    self.x, self.z, self.v = p.copy(), p.copy(), np.zeros_like(p)
    self.lr_max, self.weight_sum = -1.0, 0.0

  def step(self, g, y, t):
    k = t - 1
    lr = LR * ((k + 1) / self.warmup if k < self.warmup else 1.0)
    c2 = 1 - self.b2 ** (k + 1)
    if self.adam and self.on_lr:
      lr *= np.sqrt(c2)
    self.lr_max = max(lr, self.lr_max)
    weight = (k + 1) ** self.r * self.lr_max ** self.power
    self.weight_sum += weight
    c = weight / self.weight_sum
    if self.adam:
      self.z = self.z - lr * self.wd * y
      self.v = self.b2 * self.v + (1 - self.b2) * g * g
      v_hat = self.v if self.on_lr else self.v / c2
      self.z = self.z - lr * g / (np.sqrt(v_hat) + self.eps)
    else:
      self.z = self.z - lr * (g + self.wd * y)
    self.x = (1 - c) * self.x + c * self.z
    return self.b1 * self.x + (1 - self.b1) * self.z - y


# (name, hyperparameters, reference factory(shape, initial leaf)); learning_rate=LR unless given.
CASES = [
    ("lion", {}, lambda s, p: Lion()),
    ("lion", dict(b1=0.8, b2=0.95, weight_decay=0.5), lambda s, p: Lion(0.8, 0.95, 0.5)),
    ("ademamix", dict(b2=0.99), lambda s, p: AdEMAMix(b2=0.99)),
    ("ademamix", dict(b2=0.99, b3=0.999, alpha=8.0, weight_decay=0.1, alpha_warmup_steps=20,
                      b3_warmup_steps=15),
     lambda s, p: AdEMAMix(b2=0.99, b3=0.999, alpha=8.0, weight_decay=0.1,
                           alpha_warmup_steps=20, b3_warmup_steps=15)),
    ("cautious", dict(inner="adam", inner_hparams={"b2": 0.99}, weight_decay=0.1),
     lambda s, p: CautiousAdamW(weight_decay=0.1, b2=0.99)),
    ("cautious", dict(inner="lion"), lambda s, p: CautiousLion()),
    ("adamw", dict(b2=0.99, weight_decay=0.5, cautious_weight_decay=True),
     lambda s, p: AdamWCautiousDecay(0.5, b2=0.99)),
    ("schedule_free_adamw", dict(b2=0.99), lambda s, p: ScheduleFree(p, True, b2=0.99)),
    ("schedule_free_adamw",
     dict(learning_rate=optax.constant_schedule(LR), b1=0.95, b2=0.99, eps=1e-6,
          weight_decay=0.1, warmup_steps=10, weight_lr_power=1.0, r=0.5),
     lambda s, p: ScheduleFree(p, True, b1=0.95, b2=0.99, eps=1e-6, weight_decay=0.1,
                               warmup_steps=10, weight_lr_power=1.0, r=0.5)),
    ("schedule_free_adamw", dict(b2=0.99, warmup_steps=5, bias_correction="learning_rate"),
     lambda s, p: ScheduleFree(p, True, b2=0.99, warmup_steps=5,
                               bias_correction="learning_rate")),
    ("schedule_free_sgd", dict(warmup_steps=8, weight_decay=0.01),
     lambda s, p: ScheduleFree(p, False, warmup_steps=8, weight_decay=0.01)),
]


def _case_id(case):
  name, hparams, _ = case
  return name + "".join(f"-{k}={v}" for k, v in hparams.items() if k != "learning_rate")


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_matches_numpy_reference(case):
  name, hparams, make_ref = case
  tx = optimizers.create(name, **{"learning_rate": LR, **hparams})
  schedule_free = name.startswith("schedule_free")
  rng = np.random.default_rng(0)
  p64 = {k: rng.normal(size=s) for k, s in SHAPES.items()}
  p32 = jax.tree.map(jnp.float32, p64)
  refs = {k: make_ref(s, p64[k]) for k, s in SHAPES.items()}
  state = tx.init(p32)
  step = jax.jit(tx.update)
  for t in range(1, STEPS + 1):
    g64 = {k: np.float32(GRAD_SCALES[k] * rng.normal(size=s)).astype(np.float64)
           for k, s in SHAPES.items()}
    updates, state = step(jax.tree.map(jnp.float32, g64), state, p32)
    expected = {k: refs[k].step(g64[k], p64[k], t) for k in SHAPES}
    p32 = optax.apply_updates(p32, updates)
    p64 = jax.tree.map(np.add, p64, expected)
    if schedule_free:
      # y' - y cancels most of y's digits in float32: compare the points y and x themselves.
      chex.assert_trees_all_close(p32, p64, rtol=RTOL, atol=ATOL)
      chex.assert_trees_all_close(optimizers.eval_params(p32, state),
                                  {k: refs[k].x for k in SHAPES}, rtol=RTOL, atol=ATOL)
    else:
      chex.assert_trees_all_close(updates, expected, rtol=RTOL, atol=ATOL)
  chex.assert_tree_all_finite(state)


def test_the_cases_exercise_the_masks_and_warmups():
  """The cautious masks drop some coordinates; b3 rises from b1 during its warmup."""
  rng = np.random.default_rng(0)
  g, p = rng.normal(size=100), rng.normal(size=100)
  ref = CautiousAdamW()
  ref.step(g, p, 1)
  d = ref.adam.direction(rng.normal(size=100), 2)
  assert 0.2 < np.mean(d * g > 0) < 0.9  # second step: momentum and a fresh gradient disagree
  mix = AdEMAMix(alpha_warmup_steps=20, b3_warmup_steps=15)
  assert np.isclose(mix._b3(0), 0.9) and 0.9 < mix._b3(1) < mix._b3(14) < mix._b3(15) == 0.9999


NEW = [("lion", {}), ("ademamix", dict(alpha_warmup_steps=10, b3_warmup_steps=10)),
       ("schedule_free_adamw", dict(warmup_steps=5, weight_decay=0.1)),
       ("schedule_free_sgd", dict(warmup_steps=5)),
       ("cautious", dict(inner="adamw", weight_decay=0.1)),
       ("adamw", dict(cautious_weight_decay=True, weight_decay=0.1))]


def _mixed_params():
  return {"scalar": jnp.full((), 0.3, jnp.bfloat16), "vector": jnp.linspace(-1, 1, 3),
          "matrix": jnp.linspace(-1, 1, 20, dtype=jnp.bfloat16).reshape(4, 5),
          "tensor": jnp.linspace(-1, 1, 24).reshape(2, 3, 4)}


@pytest.mark.parametrize("name,hparams", NEW, ids=[n for n, _ in NEW])
def test_dtypes_abstract_init_jit_and_orbax_round_trip(tmp_path, name, hparams):
  params = _mixed_params()
  grads = jax.tree.map(lambda p: (0.5 - p).astype(p.dtype), params)
  tx = optimizers.create(name, learning_rate=0.1, **hparams)
  state = tx.init(params)
  abstract = jax.eval_shape(tx.init, jax.tree.map(
      lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params))
  chex.assert_trees_all_equal_shapes_and_dtypes(abstract, state)
  step = jax.jit(tx.update)
  for _ in range(3):
    updates, new_state = step(grads, state, params)
    chex.assert_trees_all_equal_shapes_and_dtypes(updates, grads)
    chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)
    chex.assert_tree_all_finite(updates)
    params, state = optax.apply_updates(params, updates), new_state
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "state", state)
  checkpointer.wait_until_finished()
  restored = checkpointer.restore(tmp_path / "state", abstract)
  chex.assert_trees_all_equal(restored, state)
  chex.assert_trees_all_equal(step(grads, restored, params), step(grads, state, params))


def test_eval_params_finds_schedule_free_states_anywhere_and_leaves_the_rest():
  params = {"a": jnp.ones((3,)), "b": jnp.full((2, 2), 2.0)}
  grads = {"a": jnp.full((3,), 0.5), "b": jnp.full((2, 2), -0.5)}
  sf = optimizers.create("schedule_free_sgd", learning_rate=0.1, b1=0.5)
  adam = optimizers.create("adam", learning_rate=0.1)
  for tx, sf_leaves in [(sf, {"a", "b"}),
                        (optax.chain(optax.clip_by_global_norm(10.0), sf), {"a", "b"}),
                        (optax.partition({"sf": sf, "adam": adam},
                                         {"a": "sf", "b": "adam"}), {"a"}),
                        (adam, set())]:
    state = tx.init(params)
    p = params
    for _ in range(3):
      updates, state = tx.update(grads, state, p)
      p = optax.apply_updates(p, updates)
    x = optimizers.eval_params(p, state)
    for k in params:
      if k in sf_leaves:  # a constant gradient: z runs ahead of y, and x trails y
        assert not np.allclose(x[k], p[k])
        np.testing.assert_allclose(0.5 * x[k] + 0.5 * _z(state, k), p[k], rtol=1e-6)
      else:
        assert x[k] is p[k]


def _z(state, key):
  is_sf = lambda a: isinstance(a, optimizers.schedule_free.ScheduleFreeState)
  (s,) = [s for s in jax.tree.leaves(state, is_leaf=is_sf) if is_sf(s)]
  return s.z[key]


def test_cautious_weight_decay_needs_the_learning_rate_and_params():
  with pytest.raises(ValueError, match="learning_rate"):
    optimizers.create("cautious", inner="adam", inner_hparams={"learning_rate": 0.1},
                      weight_decay=0.1)
  with pytest.raises(ValueError, match="either"):
    optimizers.create("cautious", learning_rate=0.1, inner_hparams={"learning_rate": 0.1})
  tx = optimizers.create("adamw", learning_rate=0.1, cautious_weight_decay=True)
  with pytest.raises(ValueError, match="needs params"):
    tx.update({"w": jnp.ones(3)}, tx.init({"w": jnp.ones(3)}))
