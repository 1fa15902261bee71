"""Every registry entry accepts traced scalars for its numeric hyperparameters (issue 21).

The vectorized-trials engine builds the transformation inside a jitted, vmapped function with
the tuned hyperparameters as traced arrays, so one compilation serves every trial. For every
`optimizers.names()` entry, with the hyperparameters of its CPU speedrun config (defaults where
it has none), on a small tree: (a) jitted updates from traced hyperparameters equal those from
the Python floats; (b) a second set of values reuses the compilation; (c) `jax.vmap` over K=3
values equals three separate runs.
"""

import inspect

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optimizers
from experiments.harness import records
from experiments.training import train_state

# Float hyperparameters that stay static Python values, with the reason (create raises a clear
# error naming them when a tracer is passed).
STATIC_FLOATS: dict[str, dict[str, str]] = {
    "dion": {"rank_fraction": "r = floor(rank_fraction * min(m, n)) is a shape"},
}

# Required hyperparameters of entries without a speedrun config.
_REQUIRED = {"learning_rate": 1e-2}
_STEPS = 3
_K = 3


def _tree(seed, scale=1.0):
  """An embedding (routed to Adam by Muon-family entries), two hidden matrices and a bias.

  The matrices are square so that after one step SOAP's and Shampoo's Kronecker factors
  G G^T and G^T G are full rank: with a repeated (zero) eigenvalue the eigenbasis of that
  eigenspace is arbitrary, and a float32 ulp in (1 - b2) (folded in float64 from a Python
  float, computed in float32 from a traced one) picks another basis and another update.
  """
  keys = jax.random.split(jax.random.key(seed), 4)
  return {"embed": scale * jax.random.normal(keys[0], (8, 8)),
          "w": scale * jax.random.normal(keys[1], (6, 6)),
          "w2": scale * jax.random.normal(keys[2], (4, 4)),
          "bias": scale * jax.random.normal(keys[3], (6,))}


def _base(name):
  """(static hyperparameters, traced float hyperparameters) of `name`, flat dotted names."""
  if name in records.BASE_CONFIGS:
    hp = train_state.registry_hparams(records.base_hparams(name))
  else:
    hp = {k: (_REQUIRED[k] if v is inspect.Parameter.empty or v is None else v)
          for k, v in optimizers.hyperparameters(name).items()
          if v is inspect.Parameter.empty or isinstance(v, float) or k in _REQUIRED}
  static = STATIC_FLOATS.get(name, {})
  floats = {k: v for k, v in hp.items()
            if isinstance(v, float) and not isinstance(v, bool) and k not in static}
  return {k: v for k, v in hp.items() if k not in floats}, floats


def _nest(flat):
  out = {}
  for k, v in flat.items():
    if "." in k:
      outer, inner = k.split(".", 1)
      out.setdefault(outer, {})[inner] = v
    else:
      out[k] = v
  return out


def _perturb(floats, i):
  """The i-th trial's values: each float nudged (betas stay below 1), rounded to float32.

  Rounded because the traced values are float32 arrays: SOAP's update moves by ~1e-2 when b2
  moves by one float32 ulp (0.95 against float32(0.95), Python floats both), so the Python
  reference must see the very values the traced run sees.
  """
  return {k: float(np.float32(v * (1.0 - 0.01 * i) if v < 1.0 else v * (1.0 + 0.1 * i)))
          for k, v in floats.items()}


def _run(name, static, hp, params, grads_seq):
  """Three updates of the optimizer built from `static` and `hp` (floats or tracers)."""
  tx = optax.with_extra_args_support(optimizers.create(name, **_nest({**static, **hp})))
  state = tx.init(params)
  out = []
  for grads in grads_seq:
    # SAM's perturbed gradient: that of a quadratic whose gradient at `params` is `grads`.
    grad_fn = lambda p, g=grads, p0=params: jax.tree.map(
        lambda x, gx, x0: gx + (x - x0), p, g, p0)
    updates, state = tx.update(grads, state, params, grad_fn=grad_fn)
    params = optax.apply_updates(params, updates)
    out.append(updates)
  return out


# Entries whose update runs through Newton–Schulz (optimizers/newton_schulz.py).
_NEWTON_SCHULZ = ("muon", "normuon", "optax_muon")


@pytest.mark.slow
@pytest.mark.parametrize("name", optimizers.names())
def test_numeric_hyperparameters_trace(name):
  static, floats = _base(name)
  assert floats, f"{name}: no float hyperparameter to trace"
  params = _tree(0)
  grads_seq = [_tree(i + 1, 0.1) for i in range(_STEPS)]
  traces = []

  def traced(hp, params, grads_seq):
    traces.append(1)
    return _run(name, static, hp, params, grads_seq)

  f = jax.jit(traced)
  trials = [_perturb(floats, i) for i in range(_K)]
  as_arrays = lambda d: {k: jnp.asarray(v, jnp.float32) for k, v in d.items()}
  # (a) traced values against the same values as Python floats, both jitted. Close, not
  # equal: a Python float's 1 - b and log(b) are folded in float64, a traced one's computed in
  # float32 (a rounding apart), and XLA may fuse the two programs differently.
  # Newton–Schulz (Muon, NorMuon) multiplies such a one-ulp difference by up to p'(0)^5 ~ 480
  # (five quintic steps), so there the bound is 480 ulps, here and for the vmapped runs in (c)
  # (a batched dot kernel sums in another order): NorMuon's vmapped and separate runs differ by
  # 5e-5 relative on jax 0.12.1 (whose CPU dot kernels round small products ~5x
  # coarser than 0.10.2's, where it stayed under 2e-5).
  rtol = 480 * 2.0**-23 if name in _NEWTON_SCHULZ else 2e-5
  want = jax.jit(lambda p, g: _run(name, static, trials[0], p, g))(params, grads_seq)
  runs = [f(as_arrays(hp), params, grads_seq) for hp in trials]
  chex.assert_trees_all_close(runs[0], want, rtol=rtol, atol=1e-7)
  # (b) the other values reused the first compilation.
  assert len(traces) == 1, f"{name}: traced {len(traces)} times"
  # (c) vmap over K trials (params and grads shared) equals the K separate runs.
  stacked = {k: jnp.asarray([t[k] for t in trials], jnp.float32) for k in floats}
  got = jax.jit(jax.vmap(traced, in_axes=(0, None, None)))(stacked, params, grads_seq)
  for i, run in enumerate(runs):
    chex.assert_trees_all_close(jax.tree.map(lambda x, i=i: x[i], got), run,
                                rtol=rtol, atol=1e-7)
  # The trials differ (the traced values are used, not some constant).
  assert any(bool(jnp.any(a != b)) for a, b in zip(jax.tree.leaves(runs[0]),
                                                   jax.tree.leaves(runs[1])))


@pytest.mark.parametrize("name, hparam", [(n, h) for n, hs in STATIC_FLOATS.items() for h in hs])
def test_structural_hyperparameter_rejects_a_tracer(name, hparam):
  static, floats = _base(name)
  hp = {**static, **floats}

  def build(traced):
    return optimizers.create(name, **_nest({**hp, hparam: traced})).init(_tree(0))

  with pytest.raises(TypeError, match=hparam):
    jax.jit(build)(jnp.asarray(hp[hparam], jnp.float32))
