"""Cautious updates around any registry entry, and cautious weight decay.

Liang, Chen, Liu & Liu, "Cautious Optimizers: Improving Training with One Line of Code", 2024
(arXiv 2411.16085): an update coordinate whose sign disagrees with the gradient's is dropped
and the rest are rescaled by the kept fraction. Cautious weight decay (Chen et al., "Cautious
Weight Decay", 2025, arXiv 2510.12402; the NanoGPT speedrun records): decay a coordinate only
where the update and the parameter have the same sign.

Sign convention: optax updates are added to the parameters, so the optimizer's step direction
(the one the papers compare with the gradient and the parameter) is -update.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optimizers import _hparams
from optimizers import _registry


class CautiousState(NamedTuple):
  count: jax.Array  # for the learning-rate schedule of the decay outside the mask
  inner_state: Any


NORMALIZATIONS = ("mean", "sum_plus_one")


def cautious_mask(update: jax.Array, grad: jax.Array, floor: float,
                  normalization: str = "mean") -> jax.Array:
  """phi rescaled, phi = 1 where the step -update and the gradient agree (> 0).

  "mean": phi / max(mean(phi), floor) (the authors' current code); "sum_plus_one":
  phi * numel / (sum(phi) + 1) (their first version, and pytorch_optimizer's `apply_cautious`).
  """
  phi = ((-update.astype(jnp.float32)) * grad.astype(jnp.float32) > 0).astype(jnp.float32)
  if normalization == "sum_plus_one":
    return phi * (phi.size / (jnp.sum(phi) + 1.0))
  return phi / jnp.maximum(jnp.mean(phi), floor)


def cautious(tx: optax.GradientTransformation, *, floor: float = 1e-3,
             learning_rate: Any = None, weight_decay: float = 0.0,
             normalization: str = "mean") -> optax.GradientTransformationExtraArgs:
  """`tx` with its update masked where it disagrees in sign with the gradient, per leaf.

  u = inner(g);  phi = 1(-u * g > 0);  u <- u * phi / max(mean(phi), floor) - lr * wd * theta.
  The normalization is the authors' current one (`mask / mask.mean().clamp(min=1e-3)`; their
  first version used numel / (sum + 1)). The decay term, if any, is outside the mask, as in the
  authors' C-AdamW (give the inner optimizer no weight decay then; an inner decay is masked).

  Args:
    tx: the inner transformation (extra arguments are passed through to it).
    floor: lower bound of the kept fraction in the rescaling.
    learning_rate: lr of the decay outside the mask (float or schedule); needed if
      `weight_decay` is not 0.
    weight_decay: decoupled decay outside the mask, multiplied by `learning_rate`.
    normalization: "mean" (the authors' current rescaling, above) or "sum_plus_one" (their
      first version, numel / (sum + 1), which pytorch_optimizer uses; `floor` is then unused).

  Returns:
    An `optax.GradientTransformationExtraArgs`.
  """
  if normalization not in NORMALIZATIONS:
    raise ValueError(f"cautious: normalization must be one of {NORMALIZATIONS}, got "
                     f"{normalization!r}")
  if _hparams.nonzero(weight_decay) and learning_rate is None:
    raise ValueError("cautious: weight_decay needs learning_rate")
  tx = optax.with_extra_args_support(tx)

  def init_fn(params):
    return CautiousState(count=jnp.zeros([], jnp.int32), inner_state=tx.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    inner, inner_state = tx.update(updates, state.inner_state, params, **extra_args)
    new = jax.tree.map(lambda u, g: (u * cautious_mask(u, g, floor, normalization)).astype(u.dtype),
                       inner, updates)
    if _hparams.nonzero(weight_decay):
      if params is None:
        raise ValueError("cautious: weight_decay needs params")
      lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
      new = jax.tree.map(lambda u, p: (u - lr * weight_decay * p).astype(u.dtype), new, params)
    return new, CautiousState(count=optax.safe_increment(state.count), inner_state=inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@_registry.register("cautious")
def cautious_entry(*, inner: str = "adam", inner_hparams: Mapping[str, Any] | None = None,
                   learning_rate: Any = None, weight_decay: float = 0.0,
                   floor: float = 1e-3,
                   normalization: str = "mean") -> optax.GradientTransformationExtraArgs:
  """The registry entry `inner`, made cautious (Liang et al., 2024); see `cautious`.

  u = inner's update;  phi = 1(-u * g > 0);  u_c = u * phi / max(mean(phi), floor)
  update = u_c - lr * weight_decay * theta   ("sum_plus_one": u * phi * numel / (sum(phi) + 1))

  For example

    optimizers.create("cautious", inner="adam", learning_rate=3e-3, weight_decay=0.1,
                      inner_hparams={"b2": 0.95})

  is the authors' C-AdamW (decay outside the mask). `learning_rate` goes to both the inner
  optimizer and the decay, so the trainer's schedule reaches them (as in `sam`).
  Parity: pytorch_optimizer.Lion and .AdaFactor with cautious=True
  (tests/parity/test_pytorch_optimizer.py), ours with normalization="sum_plus_one".

  Args:
    inner: registry name of the optimizer whose update is masked.
    inner_hparams: its hyperparameters (a dict or ConfigDict), without `learning_rate`.
    learning_rate: passed to `inner` as `learning_rate` and used by the decay; None leaves
      the inner one to `inner_hparams` (and then `weight_decay` must be 0).
    weight_decay: decoupled decay outside the mask.
    floor: lower bound of the kept fraction.
    normalization: "mean" (the authors' current code) or "sum_plus_one" (pytorch_optimizer's).

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  References:
    Liang, Chen, Liu & Liu, "Cautious Optimizers: Improving Training with One Line of Code",
    2024, arXiv 2411.16085.
  """
  hparams = dict(inner_hparams.items()) if inner_hparams else {}
  if learning_rate is not None:
    if "learning_rate" in hparams:
      raise ValueError("cautious: give learning_rate either at the top level or in "
                       "inner_hparams")
    hparams["learning_rate"] = learning_rate
  return cautious(_registry.create(inner, **hparams), floor=floor, learning_rate=learning_rate,
                  weight_decay=weight_decay, normalization=normalization)


def add_cautious_decayed_weights(weight_decay: float) -> optax.GradientTransformation:
  """d + wd * theta * 1(d * theta >= 0), d the step direction before the learning rate.

  Put between the preconditioner and `optax.scale_by_learning_rate` (where the incoming update
  is the positive step direction, which the learning rate will negate), as the speedrun does:
  `mask = (g * p) >= 0; p -= lr * g + lr * wd * p * mask`.
  """

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("cautious weight decay needs params")
    new = jax.tree.map(
        lambda d, p: (d + weight_decay * p * (d * p >= 0).astype(d.dtype)).astype(d.dtype),
        updates, params)
    return new, state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)
