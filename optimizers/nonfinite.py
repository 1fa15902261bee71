"""All-or-nothing optimizer steps: a step that would make anything non-finite is skipped.

`guard(*transforms)` is `optax.chain(*transforms)` whose step is refused as a whole when

  * a gradient leaf is not usable: its sum(g^2) is not finite in float32. That is a NaN or
    Inf element, or a magnitude whose second moments overflow (|g| from about 1e19), which
    Adam's v, Shampoo's G G^T and SOAP's factors cannot hold and which froze Shampoo and
    Muon silently. Checked first: such a gradient never reaches the optimizer (`lax.cond`);
  * or, with `check_state` (the default), the update it emits or any floating-point leaf of
    its new state is not finite: a statistic that overflows from a usable gradient (a sum
    that never decays, a factor product, a decomposition), an 8-bit block that cannot be
    stored (`quantized.quantize` marks it NaN).

A refused step emits a zero update and keeps the whole previous state: moments, factors,
roots, bases, 8-bit codes, and every step and schedule count, so bias corrections, root and
basis cadences and learning-rate schedules go on as if the step had never been taken (the
next step is bitwise the one a run without the bad gradient takes). Only the counters in
this transformation's `metrics` move:
  nonfinite_skips   steps refused since init
  nonfinite_streak  consecutive refused steps up to now (0 after an accepted step)
which the trainer logs as `opt/nonfinite_skips` and `opt/nonfinite_streak`: a skipped step
is never silent, and a run that only skips can be stopped on the streak.

Why the whole step rather than per leaf or per block: every optimizer here couples its
leaves through one step count (bias corrections, root and basis cadences, schedules) and
grafting; a partial step leaves some blocks one step behind with the wrong correction, a
state no clean run reaches. The rest of a gradient whose backward pass produced a NaN is not
trustworthy either: PyTorch's GradScaler and `optax.apply_if_finite` also skip whole steps.
Unlike `optax.apply_if_finite`, this refuses finite gradients that the optimizer's statistics
cannot represent and statistics that become non-finite, and it never gives up and applies a
non-finite step.

The state is the chain's tuple with `NonfiniteState` appended, so `state[0]` is still the
first transform's state.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class NonfiniteState(NamedTuple):
  metrics: dict[str, jax.Array]  # nonfinite_skips, nonfinite_streak (int32)


def _all_finite(leaves) -> jax.Array:
  flags = [jnp.all(jnp.isfinite(x)) for x in leaves
           if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)


def gradient_is_usable(grads) -> jax.Array:
  """True when sum(g^2) of every gradient leaf is finite in float32 (no NaN, Inf, overflow)."""
  return _all_finite([jnp.sum(jnp.square(g.astype(jnp.float32))) for g in jax.tree.leaves(grads)])


def guard(*transforms: optax.GradientTransformation,
          check_state: bool = True) -> optax.GradientTransformationExtraArgs:
  """`optax.chain(*transforms)` whose non-finite steps are skipped and counted (module doc).

  Args:
    *transforms: the transformations to chain (extra arguments are passed through).
    check_state: also refuse a step whose update or new state is not finite. Costs a
      reduction and a select over the state each step (on CPU about 3x AdamW's own update,
      a few percent of Shampoo's or Muon's); needed where statistics can overflow from a
      usable gradient (sums that never decay, matrix products and decompositions). Without
      it, exponential averages of usable g and g^2 stay finite by construction.

  Returns:
    An `optax.GradientTransformationExtraArgs` with state `(*chain_states, NonfiniteState)`.
  """
  inner = optax.chain(*transforms)

  def init_fn(params):
    # Two arrays, not one shared: a train step that donates the state cannot donate a buffer
    # twice.
    metrics = {k: jnp.zeros([], jnp.int32) for k in ("nonfinite_skips", "nonfinite_streak")}
    return (*inner.init(params), NonfiniteState(metrics=metrics))

  def update_fn(updates, state, params=None, **extra_args):
    *inner_state, own = state
    inner_state = tuple(inner_state)
    step = lambda s: inner.update(updates, s, params, **extra_args)
    shapes = jax.eval_shape(step, inner_state)[0]
    zeros = lambda: jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)
    ok = gradient_is_usable(updates)
    # A refused gradient never reaches the optimizer: nothing to compute, nothing to undo.
    new_updates, new_inner = jax.lax.cond(ok, step, lambda s: (zeros(), s), inner_state)
    if check_state:
      ok &= _all_finite(jax.tree.leaves(new_updates)) & _all_finite(jax.tree.leaves(new_inner))
      new_updates = jax.tree.map(lambda u, z: jnp.where(ok, u, z), new_updates, zeros())
      new_inner = optax.tree.where(ok, new_inner, inner_state)
    skips, streak = own.metrics["nonfinite_skips"], own.metrics["nonfinite_streak"]
    bad = (~ok).astype(jnp.int32)
    metrics = {"nonfinite_skips": skips + bad, "nonfinite_streak": (streak + 1) * bad}
    return new_updates, (*new_inner, NonfiniteState(metrics=metrics))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
