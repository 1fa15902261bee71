"""Schedule-Free AdamW and SGD, with the conventions of the authors' current code.

Defazio, Yang, Mehta, Mishchenko, Khaled & Cutkosky, "The Road Less Scheduled", NeurIPS 2024
(arXiv 2405.15682); reference code: facebookresearch/schedule_free, released on the package
index as `schedulefree` (`AdamWScheduleFree`, `SGDScheduleFree`; conventions of release 1.4.1).

Three sequences: z (the base optimizer's iterate), x (a weighted average of the z's, where the
loss is evaluated) and y = b1 x + (1 - b1) z (where gradients are taken). The parameters the
optimizer holds are y; `eval_params(params, opt_state)` gives x. The state keeps z only (x is
recovered from y and z, as the authors' memory-efficient version does).

Written here rather than taken from `optax.contrib.schedule_free_adamw` because of the warmup:
optax's starts at 0 where the authors' starts at lr/warmup at the first step (the z step and
the averaging weights are then one step apart). Without warmup the two agree, and both follow
`schedulefree` 1.4.x's bias correction: eps on sqrt(nu / (1 - b2^t)), lr not rescaled.
Releases of `schedulefree` before 1.4 instead multiplied lr (and so lr_max in the averaging
weights) by sqrt(1 - b2^t) and added eps to sqrt(nu): `bias_correction="learning_rate"`.

Parity: `schedulefree` 1.4.1 `AdamWScheduleFree` and `SGDScheduleFree`
(tests/parity/test_authors.py), parameters and the evaluation point x.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optimizers import _hparams
from optimizers import _tree
from optimizers import nonfinite
from optimizers._registry import register


class ScheduleFreeState(NamedTuple):
  """`z` the base iterate; `nu` Adam's second moment (None for SGD); scalars in float32."""
  count: jax.Array
  b1: jax.Array  # kept in the state so that `eval_params` needs nothing but the state
  weight_sum: jax.Array
  lr_max: jax.Array
  z: Any
  nu: Any


def _scheduled(learning_rate: Any, count: jax.Array) -> jax.Array:
  lr = learning_rate(count) if callable(learning_rate) else learning_rate
  return jnp.asarray(lr, jnp.float32)


def scale_by_schedule_free(
    *, learning_rate: Any, b1: float, b2: float | None, eps: float, weight_decay: float,
    warmup_steps: int, weight_lr_power: float, r: float,
    bias_correction: str = "denominator",
) -> optax.GradientTransformation:
  """Schedule-free step on y (the parameters); Adam-preconditioned when `b2` is not None.

  At step k (from 0), with lr_k = lr * min(1, (k+1)/warmup) and c2 = 1 - b2^(k+1):
    Adam: nu <- b2 nu + (1-b2) g^2;  d = g / (sqrt(nu / c2) + eps) + wd y
          (bias_correction="learning_rate": d = g / (sqrt(nu) + eps) + wd y, lr_k *= sqrt(c2))
    SGD:  d = g + wd y
    lr_max = max(lr_max, lr_k);  w = (k+1)^r lr_max^weight_lr_power;  c = w / sum(w)
    z' = z - lr_k d;  x' = (1-c) x + c z';  y' = b1 x' + (1-b1) z'
  and the update is y' - y, computed as (1-c) y + c z - lr_k (1 - b1 (1-c)) d - y.

  Returns:
    An `optax.GradientTransformation` whose updates land the parameters on y'.
  """
  adam = b2 is not None
  if bias_correction not in ("denominator", "learning_rate"):
    raise ValueError(f"schedule-free: bias_correction={bias_correction!r}: expected "
                     "'denominator' (schedulefree >= 1.4) or 'learning_rate' (earlier releases)")
  on_lr = adam and bias_correction == "learning_rate"

  def init_fn(params):
    return ScheduleFreeState(
        count=jnp.zeros([], jnp.int32), b1=jnp.asarray(b1, jnp.float32),
        weight_sum=jnp.zeros([], jnp.float32), lr_max=jnp.asarray(-1.0, jnp.float32),
        # A copy, so z and the parameters are distinct buffers (both may be donated).
        z=jax.tree.map(jnp.copy, params),
        nu=optax.tree.zeros_like(params) if adam else None)

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("schedule-free: update() needs params (the point y)")
    k = state.count.astype(jnp.float32)
    lr = _scheduled(learning_rate, state.count)
    if warmup_steps:
      lr = lr * jnp.minimum(1.0, (k + 1.0) / warmup_steps)
    if adam:
      # 1 - b2^t by expm1: in float32, 1 - 0.999 keeps only ~4 correct digits.
      c2 = -jnp.expm1((k + 1.0) * _hparams.log(b2))
      if on_lr:
        lr = lr * jnp.sqrt(c2)
    lr_max = jnp.maximum(state.lr_max, lr)
    weight = (k + 1.0) ** r * lr_max ** weight_lr_power
    weight_sum = state.weight_sum + weight
    ck = jnp.where(weight_sum > 0, weight / jnp.where(weight_sum > 0, weight_sum, 1.0), 0.0)

    def one(g, y, z, nu):
      g32, y32, z32 = (a.astype(jnp.float32) for a in (g, y, z))
      if adam:
        nu = (b2 * nu.astype(jnp.float32) + (1.0 - b2) * g32 * g32)
        d = g32 / (jnp.sqrt(nu if on_lr else nu / c2) + eps)
      else:
        d = g32
      d = d + weight_decay * y32
      new_y = (1.0 - ck) * y32 + ck * z32 + lr * (b1 * (1.0 - ck) - 1.0) * d
      new_z = z32 - lr * d
      return ((new_y - y32).astype(y.dtype), new_z.astype(z.dtype),
              None if nu is None else nu.astype(y.dtype))

    nus = state.nu if adam else jax.tree.map(lambda _: None, params)
    out = jax.tree.map(one, updates, params, state.z, nus, is_leaf=lambda a: a is None)
    treedef = jax.tree.structure(updates)
    new_updates, new_z, new_nu = _tree.unzip(treedef, treedef.flatten_up_to(out), 3)
    return new_updates, ScheduleFreeState(
        count=optax.safe_increment(state.count), b1=state.b1, weight_sum=weight_sum,
        lr_max=lr_max, z=new_z, nu=new_nu if adam else None)

  return optax.GradientTransformation(init_fn, update_fn)


@register("schedule_free_adamw")
def schedule_free_adamw(*, learning_rate: Any = 2.5e-3, b1: float = 0.9, b2: float = 0.999,
                        eps: float = 1e-8, weight_decay: float = 0.0, warmup_steps: int = 0,
                        weight_lr_power: float = 2.0, r: float = 0.0,
                        bias_correction: str = "denominator") -> optax.GradientTransformation:
  """Schedule-Free AdamW (Defazio et al., 2024; the authors' `AdamWScheduleFree`).

  nu <- b2 nu + (1-b2) g^2 (g at y);  z <- z - lr_k (g / (sqrt(nu / (1-b2^t)) + eps) + wd y)
  x <- (1 - c) x + c z, c = w_k / sum w, w_k = (k+1)^r lr_max^weight_lr_power;  y = b1 x + (1-b1) z
  The parameters are y; evaluate at x = `eval_params(params, state)`.

  See `scale_by_schedule_free`. As in `schedulefree` 1.4.x: the second moment is
  bias-corrected inside the root with eps outside, sqrt(nu / (1 - b2^t)) + eps; lr is not
  rescaled, and it is the lr the averaging weights use (lr_max^weight_lr_power); the warmup is
  lr * min(1, t / warmup) from t = 1; the weight decay is evaluated at y and multiplied by lr.
  No schedule should be put on top (the trainer's constant schedule with no warmup leaves lr
  as given).

  Args:
    learning_rate: peak lr (a float, or a schedule multiplied into the warmup).
    b1: interpolation y = b1 x + (1 - b1) z (the reference's beta1).
    b2: second-moment decay.
    eps: added to sqrt(nu).
    weight_decay: decoupled, at y, multiplied by lr.
    warmup_steps: linear warmup length (0: none).
    weight_lr_power: averaging weights are lr_max^weight_lr_power.
    r: polynomial averaging weights (k+1)^r (the reference's r; 0: none).
    bias_correction: "denominator" (default; `schedulefree` >= 1.4: sqrt(nu / (1 - b2^t)) +
      eps) or "learning_rate" (releases before 1.4, and this project before 2026-12: lr and
      the averaging weights' lr_max times sqrt(1 - b2^t), eps on sqrt(nu)).

  Returns:
    An `optax.GradientTransformation`; evaluate at `eval_params(params, state)`.

  References:
    Defazio, Yang, Mehta, Mishchenko, Khaled & Cutkosky, "The Road Less Scheduled",
    NeurIPS 2024, arXiv 2405.15682.
  """
  return nonfinite.guard(scale_by_schedule_free(learning_rate=learning_rate, b1=b1, b2=b2, eps=eps,
                                weight_decay=weight_decay, warmup_steps=warmup_steps,
                                weight_lr_power=weight_lr_power, r=r,
                                bias_correction=bias_correction), check_state=False)


@register("schedule_free_sgd")
def schedule_free_sgd(*, learning_rate: Any = 1.0, b1: float = 0.9, weight_decay: float = 0.0,
                      warmup_steps: int = 0, weight_lr_power: float = 2.0,
                      r: float = 0.0) -> optax.GradientTransformation:
  """Schedule-Free SGD (Defazio et al., 2024; the authors' `SGDScheduleFree`).

  z <- z - lr_k (g + wd y)  (g at y);  lr_k = lr * min(1, (k+1) / warmup)
  x <- (1 - c) x + c z;  y = b1 x + (1-b1) z  (c as in `schedule_free_adamw`)
  lr_k also weights the average (`scale_by_schedule_free`); `b1` is the reference's momentum.

  Args:
    learning_rate, b1, weight_decay, warmup_steps, weight_lr_power, r: as in
      `schedule_free_adamw` (weight decay here is added to the gradient, as in the reference).

  Returns:
    An `optax.GradientTransformation`; evaluate at `eval_params(params, state)`.

  References:
    Defazio, Yang, Mehta, Mishchenko, Khaled & Cutkosky, "The Road Less Scheduled",
    NeurIPS 2024, arXiv 2405.15682.
  """
  return nonfinite.guard(
      scale_by_schedule_free(learning_rate=learning_rate, b1=b1, b2=None, eps=0.0,
                             weight_decay=weight_decay, warmup_steps=warmup_steps,
                             weight_lr_power=weight_lr_power, r=r), check_state=False)


def eval_params(params: Any, opt_state: Any) -> Any:
  """The averaged point x = (y - (1 - b1) z) / b1 where `opt_state` holds schedule-free states.

  Every `ScheduleFreeState` found in the tree (inside `chain`, `partition`, wrappers) maps the
  leaves it covers; leaves it does not cover (masked by `optax.partition`) and all leaves when
  there is none are returned unchanged, so the trainer can call this for any optimizer.
  """
  is_sf = lambda a: isinstance(a, ScheduleFreeState)
  masked = lambda a: isinstance(a, optax.MaskedNode)
  for s in jax.tree.leaves(opt_state, is_leaf=is_sf):
    if not is_sf(s):
      continue
    params = jax.tree.map(
        lambda z, y, b1=s.b1: y if masked(z) else ((y - (1.0 - b1) * z) / b1).astype(y.dtype),
        s.z, params, is_leaf=masked)
  return params

