"""All-or-nothing optimizer steps: a step that would make anything non-finite is skipped.

`guard(*transforms)` is `optax.chain(*transforms)` whose step is refused as a whole when

  * a gradient leaf's squared norm sum(g^2) is not finite in float32: a NaN or Inf element, or
    a magnitude whose second moments overflow (|g| of about 1e19 and up), which Adam's v,
    Shampoo's G G^T and SOAP's factors cannot hold and which Newton–Schulz's Frobenius
    normalization turned into a silent zero step;
  * or the update it would emit is not finite;
  * or any floating-point leaf of the new state is not finite (a statistic that overflows,
    an 8-bit block whose scale overflows, an accumulator that grew past float32).

A refused step emits a zero update and keeps the whole previous state: moments, factors,
roots, bases, 8-bit codes, and every step count and schedule count (so bias corrections,
`precondition_every` cadences and learning-rate schedules go on as if the step had never
been taken; the next finite step is bitwise the step a run without the bad gradient takes).
Only the counters in this transformation's `metrics` move:
  nonfinite_skips   steps refused since init
  nonfinite_streak  consecutive refused steps up to now (0 after an accepted step)
which the trainer logs as `opt/nonfinite_skips` and `opt/nonfinite_streak`: a skipped step
is never silent.

Why the whole step rather than per leaf or per block: every optimizer here couples its
leaves through one step count (bias corrections, root and basis cadences, schedules) and
grafting; a partial step leaves some blocks one step behind with the wrong correction, a
state no clean run reaches. The rest of a gradient whose backward pass produced a NaN is not
trustworthy either: PyTorch's GradScaler and `optax.apply_if_finite` also skip whole steps.
Unlike `optax.apply_if_finite`, which looks at the incoming gradient only, this also refuses
finite gradients that the optimizer's own statistics cannot represent, and it never gives up
and applies a non-finite step. The check costs one fused reduction per gradient, update and
state leaf, and a select that XLA fuses into the state's update.

The state is the chain's tuple with this transformation's `NonfiniteState` appended, so
`state[0]` is still the first transform's state.
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


def step_is_finite(grads, updates, new_state) -> jax.Array:
  """True when sum(g^2) of every gradient leaf, every update and every state leaf is finite."""
  squares = [jnp.sum(jnp.square(g.astype(jnp.float32))) for g in jax.tree.leaves(grads)]
  return (_all_finite(squares) & _all_finite(jax.tree.leaves(updates))
          & _all_finite(jax.tree.leaves(new_state)))


def guard(*transforms: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """`optax.chain(*transforms)` whose non-finite steps are skipped and counted (module doc).

  Args:
    *transforms: the transformations to chain (extra arguments are passed through).

  Returns:
    An `optax.GradientTransformationExtraArgs` with state `(*chain_states, NonfiniteState)`.
  """
  inner = optax.chain(*transforms)

  def init_fn(params):
    zero = jnp.zeros([], jnp.int32)
    return (*inner.init(params),
            NonfiniteState(metrics={"nonfinite_skips": zero, "nonfinite_streak": zero}))

  def update_fn(updates, state, params=None, **extra_args):
    *inner_state, own = state
    inner_state = tuple(inner_state)
    new_updates, new_inner = inner.update(updates, inner_state, params, **extra_args)
    ok = step_is_finite(updates, new_updates, new_inner)
    new_updates = jax.tree.map(lambda u: jnp.where(ok, u, jnp.zeros_like(u)), new_updates)
    new_inner = optax.tree.where(ok, new_inner, inner_state)
    skips, streak = own.metrics["nonfinite_skips"], own.metrics["nonfinite_streak"]
    bad = (~ok).astype(jnp.int32)
    metrics = {"nonfinite_skips": skips + bad, "nonfinite_streak": (streak + 1) * bad}
    return new_updates, (*new_inner, NonfiniteState(metrics=metrics))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
