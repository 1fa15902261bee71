"""Each `adam_family` entry against a float64 NumPy version of its paper's formula.

The references below are written from the papers (one leaf at a time, as every entry here is
per-leaf), never by calling optax or the code under test.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optimizers

SHAPES = {"scalar": (), "vector": (5,), "matrix": (4, 6), "tensor": (2, 3, 4)}
GRAD_SCALES = {"scalar": 1.0, "vector": 0.1, "matrix": 0.01, "tensor": 3.0}
STEPS = 20
LR = 0.05
RTOL = 1e-5
# float32 rounding of an O(lr) update, where the moments cancel, is a few ulps of lr.
ATOL = 1e-6 * LR


def _norm(x):
  return np.sqrt(np.sum(x * x))


def _rms(x):
  return np.sqrt(np.mean(x * x))


class SGD:

  def __init__(self, momentum=None, nesterov=False, weight_decay=0.0):
    self.mom, self.nesterov, self.wd, self.m = momentum, nesterov, weight_decay, 0.0

  def step(self, g, p, t):
    g = g + self.wd * p
    if self.mom is None:
      return -LR * g
    self.m = self.mom * self.m + g
    return -LR * (g + self.mom * self.m if self.nesterov else self.m)


class Adagrad:

  def __init__(self, initial_accumulator_value=0.0, eps=0.0):
    self.G, self.eps = initial_accumulator_value, eps

  def step(self, g, p, t):
    self.G = self.G + g * g
    return -LR * np.where(self.G > 0, g / np.sqrt(self.G + self.eps), 0.0)


class RMSProp:

  def __init__(self, decay=0.9, eps=1e-8, centered=False, momentum=None, nesterov=False,
               eps_in_sqrt=True):
    self.d, self.eps, self.centered = decay, eps, centered
    self.mom, self.nesterov, self.eps_in_sqrt = momentum, nesterov, eps_in_sqrt
    self.v = self.mu = self.b = 0.0

  def step(self, g, p, t):
    self.v = self.d * self.v + (1 - self.d) * g * g
    var = self.v
    if self.centered:
      self.mu = self.d * self.mu + (1 - self.d) * g
      var = self.v - self.mu ** 2
    denom = np.sqrt(var + self.eps) if self.eps_in_sqrt else np.sqrt(var) + self.eps
    s = LR * g / denom
    if self.mom is None:
      return -s
    self.b = self.mom * self.b + s
    return -(s + self.mom * self.b if self.nesterov else self.b)


class Adadelta:

  def __init__(self, rho=0.95, eps=1e-6):
    self.rho, self.eps, self.eg, self.ex = rho, eps, 0.0, 0.0

  def step(self, g, p, t):
    self.eg = self.rho * self.eg + (1 - self.rho) * g * g
    d = np.sqrt(self.ex + self.eps) / np.sqrt(self.eg + self.eps) * g
    self.ex = self.rho * self.ex + (1 - self.rho) * d * d
    return -LR * d


class Adam:
  """Adam / AdamW / NAdamW (Dozat's look-ahead with constant b1)."""

  def __init__(self, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, nesterov=False):
    self.b1, self.b2, self.eps, self.wd, self.nesterov = b1, b2, eps, weight_decay, nesterov
    self.m = self.v = 0.0

  def direction(self, g, t):
    b1, b2 = self.b1, self.b2
    self.m = b1 * self.m + (1 - b1) * g
    self.v = b2 * self.v + (1 - b2) * g * g
    if self.nesterov:
      m_hat = b1 * self.m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1 ** t)
    else:
      m_hat = self.m / (1 - b1 ** t)
    return m_hat / (np.sqrt(self.v / (1 - b2 ** t)) + self.eps)

  def step(self, g, p, t):
    return -LR * (self.direction(g, t) + self.wd * p)


class AMSGrad:

  def __init__(self, b1=0.9, b2=0.999, eps=1e-8, bias_correction=False):
    self.b1, self.b2, self.eps, self.bc = b1, b2, eps, bias_correction
    self.m = self.v = self.vmax = 0.0

  def step(self, g, p, t):
    self.m = self.b1 * self.m + (1 - self.b1) * g
    self.v = self.b2 * self.v + (1 - self.b2) * g * g
    m, v = self.m, self.v
    if self.bc:
      m, v = m / (1 - self.b1 ** t), v / (1 - self.b2 ** t)
    self.vmax = np.maximum(self.vmax, v)
    return -LR * m / (np.sqrt(self.vmax) + self.eps)


class LAMB(Adam):

  def step(self, g, p, t):
    r = self.direction(g, t) + self.wd * p
    pn, rn = _norm(p), _norm(r)
    ratio = pn / rn if pn > 0 and rn > 0 else 1.0
    return -LR * ratio * r


class LARS:

  def __init__(self, momentum=0.9, nesterov=False, weight_decay=0.0, trust_coefficient=1e-3):
    self.mom, self.nesterov, self.wd, self.tc, self.v = (
        momentum, nesterov, weight_decay, trust_coefficient, 0.0)

  def step(self, g, p, t):
    denom = _norm(g) + self.wd * _norm(p)
    local_lr = self.tc * _norm(p) / denom if _norm(p) > 0 and denom > 0 else 1.0
    u = LR * local_lr * (g + self.wd * p)
    self.v = self.mom * self.v + u
    return -(u + self.mom * self.v if self.nesterov else self.v)


class Adafactor:
  """Shazeer & Stern's Algorithms 4 (matrices, per slice of the two last axes) and 5."""

  def __init__(self, factored, momentum=None, c=0.8, eps1=1e-30, d=1.0, eps2=1e-3):
    self.factored, self.mom, self.c, self.eps1, self.d, self.eps2 = (
        factored, momentum, c, eps1, d, eps2)
    self.R = self.C = self.V = self.m = 0.0

  def step(self, g, p, t):
    b2 = 1 - t ** (-self.c)
    g2 = g * g + self.eps1
    if self.factored:
      self.R = b2 * self.R + (1 - b2) * g2.mean(axis=-1)
      self.C = b2 * self.C + (1 - b2) * g2.mean(axis=-2)
      V = self.R[..., :, None] * self.C[..., None, :] / self.R.mean(axis=-1)[..., None, None]
    else:
      self.V = V = b2 * self.V + (1 - b2) * g2
    u = g / np.sqrt(V)
    u = u / max(1.0, _rms(u) / self.d)
    u = LR * max(self.eps2, _rms(p)) * u
    if self.mom is not None:
      self.m = u = self.mom * self.m + (1 - self.mom) * u
    return -u


# b2 = 0.999 is not a float32 number (it is stored as 0.99900001): optax's moment update uses
# 1 - 0.999 rounded from float64, its bias correction 1 - 0.99900001^t, and the two disagree by
# 1.3e-5 relative, ~6e-6 on the step. That is float32's resolution of 1 - b2^t, not the
# formula, so the bias-corrected cases use b2 = 0.99, where the same error is below 1e-6.
B2 = 0.99

# (registry name, hyperparameters besides learning_rate, reference for one leaf of a shape).
CASES = [
    ("sgd", {}, lambda s: SGD()),
    ("sgd", dict(momentum=0.9, weight_decay=0.01), lambda s: SGD(0.9, False, 0.01)),
    ("sgd", dict(momentum=0.9, nesterov=True), lambda s: SGD(0.9, True)),
    ("adagrad", {}, lambda s: Adagrad()),
    ("adagrad", dict(initial_accumulator_value=0.1, eps=1e-7), lambda s: Adagrad(0.1, 1e-7)),
    ("rmsprop", {}, lambda s: RMSProp()),
    ("rmsprop", dict(centered=True, momentum=0.9, decay=0.95, eps=1e-4),
     lambda s: RMSProp(0.95, 1e-4, True, 0.9)),
    ("rmsprop", dict(eps_in_sqrt=False, momentum=0.5, nesterov=True),
     lambda s: RMSProp(momentum=0.5, nesterov=True, eps_in_sqrt=False)),
    ("adadelta", {}, lambda s: Adadelta()),
    ("adam", dict(b2=B2), lambda s: Adam(b2=B2)),
    ("adam", dict(b1=0.8, b2=0.95, eps=1e-6), lambda s: Adam(b1=0.8, b2=0.95, eps=1e-6)),
    ("adamw", dict(b2=B2, weight_decay=0.1), lambda s: Adam(b2=B2, weight_decay=0.1)),
    ("nadamw", dict(b2=B2, weight_decay=0.1),
     lambda s: Adam(b2=B2, weight_decay=0.1, nesterov=True)),
    ("amsgrad", {}, lambda s: AMSGrad()),
    ("amsgrad", dict(bias_correction=True, b2=B2),
     lambda s: AMSGrad(b2=B2, bias_correction=True)),
    ("lamb", dict(b2=B2), lambda s: LAMB(b2=B2, eps=1e-6)),
    ("lamb", dict(b2=B2, weight_decay=0.01), lambda s: LAMB(b2=B2, eps=1e-6, weight_decay=0.01)),
    ("lars", {}, lambda s: LARS()),
    ("lars", dict(weight_decay=5e-4, nesterov=True, trust_coefficient=0.02),
     lambda s: LARS(0.9, True, 5e-4, 0.02)),
    ("adafactor", {}, lambda s: Adafactor(factored=False)),
    # min_dim_size_to_factor=3 factors the matrix and the 3-D tensor (optax factors the two
    # largest axes; here those are the last two).
    ("adafactor", dict(min_dim_size_to_factor=3, momentum=0.9),
     lambda s: Adafactor(factored=len(s) >= 2, momentum=0.9)),
]


def _case_id(case):
  name, hparams, _ = case
  return name + "".join(f"-{k}={v}" for k, v in hparams.items())


def _params(rng):
  return {k: rng.normal(size=s) for k, s in SHAPES.items()}


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_matches_numpy_reference(case):
  name, hparams, make_ref = case
  tx = optimizers.create(name, learning_rate=LR, **hparams)
  rng = np.random.default_rng(0)
  p64 = _params(rng)
  p32 = jax.tree.map(jnp.float32, p64)
  refs = {k: make_ref(s) for k, s in SHAPES.items()}
  state = tx.init(p32)
  step = jax.jit(tx.update)
  for t in range(1, STEPS + 1):
    g64 = {k: np.float32(GRAD_SCALES[k] * rng.normal(size=s)).astype(np.float64)
           for k, s in SHAPES.items()}
    updates, state = step(jax.tree.map(jnp.float32, g64), state, p32)
    expected = {k: refs[k].step(g64[k], p64[k], t) for k in SHAPES}
    chex.assert_trees_all_close(updates, expected, rtol=RTOL, atol=ATOL)
    p32 = optax.apply_updates(p32, updates)
    p64 = jax.tree.map(np.add, p64, expected)
  chex.assert_tree_all_finite(state)


NAMES = ["sgd", "adagrad", "rmsprop", "adadelta", "adam", "adamw", "nadamw", "amsgrad", "lamb",
         "lars", "adafactor"]


@pytest.mark.parametrize("name", NAMES)
def test_keeps_dtypes_and_inits_abstractly(name):
  params = {"scalar": jnp.ones((), jnp.bfloat16), "vector": jnp.ones((3,), jnp.float32),
            "matrix": jnp.ones((4, 5), jnp.bfloat16), "tensor": jnp.ones((2, 3, 4), jnp.float32)}
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
  tx = optimizers.create(name, learning_rate=0.1)
  state = tx.init(params)
  abstract = jax.eval_shape(tx.init, jax.tree.map(
      lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params))
  chex.assert_trees_all_equal_shapes_and_dtypes(abstract, state)
  updates, new_state = jax.jit(tx.update)(grads, state, params)
  chex.assert_trees_all_equal_shapes_and_dtypes(updates, grads)
  chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)
  chex.assert_tree_all_finite(updates)


def test_registered():
  assert set(NAMES) <= set(optimizers.names())


@pytest.mark.parametrize("variant", ["", "_adamw_8bit", "_lamb", "_sgd"])
def test_speedrun_configs_build(variant):
  """Each speedrun config names a registry entry with hyperparameters it accepts."""
  from experiments import configs_util  # pylint: disable=g-import-not-at-top
  opt = configs_util.load(f"configs/speedrun_cpu{variant}.py").optimizer
  assert opt.name == (variant[1:] or "adamw")
  from experiments.training import train_state  # pylint: disable=g-import-not-at-top
  tx = optimizers.create(opt.name, **train_state.registry_hparams(opt))
  params = {"w": jnp.ones((64, 128))}
  updates, _ = jax.jit(tx.update)(params, tx.init(params), params)
  chex.assert_tree_all_finite(updates)


def test_lars_needs_params():
  tx = optimizers.create("lars", learning_rate=1.0)
  grads = {"w": jnp.ones((3,))}
  with pytest.raises(ValueError, match="needs params"):
    tx.update(grads, tx.init(grads))
