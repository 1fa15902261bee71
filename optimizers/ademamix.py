"""AdEMAMix: Adam with a mixture of a fast and a slow EMA of the gradient.

Pagliardini, Ablin & Grangier, "The AdEMAMix Optimizer: Better, Faster, Older", ICLR 2025
(arXiv 2409.03137), Algorithm 1 with the schedulers of its section 3 (alpha linear, b3 linear
in half-life), as in the authors' code (apple/ml-ademamix).
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


def alpha_schedule(alpha: float, warmup_steps: int) -> optax.Schedule:
  """alpha_t = min(t alpha / T_alpha, alpha) at step t (from 1); constant if T_alpha = 0."""
  if not warmup_steps:
    return lambda t: jnp.asarray(alpha, jnp.float32)
  return lambda t: jnp.minimum(jnp.asarray(t, jnp.float32) * alpha / warmup_steps, alpha)


def one_minus_b3_schedule(b3: float, b_start: float, warmup_steps: int) -> optax.Schedule:
  """1 - b3_t, b3 warmed up from `b_start` (the paper's b1) linearly in half-life over T_b3.

  The half-life of an EMA with decay b is ln(0.5) / ln(b); interpolating it linearly in
  t / T_b3 gives b_t = exp(ln(b_start) ln(b3) / ((1 - t/T) ln(b3) + (t/T) ln(b_start))),
  capped at b3 (the paper's f_b3); from t = T_b3 on, b3. Returned as 1 - b_t = -expm1(.),
  because b_t rounded to float32 would leave 1 - b_t only ~4 correct digits at b3 = 0.9999.
  """
  if not warmup_steps:
    return lambda t: jnp.asarray(1.0 - b3, jnp.float32)
  log_start, log_end = _hparams.log(b_start), _hparams.log(b3)

  def schedule(t):
    frac = jnp.minimum(jnp.asarray(t, jnp.float32) / warmup_steps, 1.0)
    log_b = log_start * log_end / ((1.0 - frac) * log_end + frac * log_start)
    return jnp.maximum(-jnp.expm1(log_b), 1.0 - b3)

  return schedule


def one_minus_power(b: float, t: jax.Array) -> jax.Array:
  """1 - b^t in float32 without cancellation (b^t near 1 loses digits in float32)."""
  return -jnp.expm1(t * _hparams.log(b))


class ScaleByAdemamixState(NamedTuple):
  count: jax.Array
  m1: Any  # fast EMA (b1), bias-corrected when used
  m2: Any  # slow EMA (b3), never bias-corrected (as in the paper)
  nu: Any


def scale_by_ademamix(*, b1: float, b2: float, b3: float, alpha: float, eps: float,
                      alpha_warmup_steps: int = 0,
                      b3_warmup_steps: int = 0) -> optax.GradientTransformation:
  """(m1_hat + alpha_t m2) / (sqrt(nu_hat) + eps), with alpha_t and b3_t from the schedulers.

  Written here, not `optax.contrib.scale_by_ademamix`: optax evaluates schedules from t = 0
  (the paper's start at t = 1) and its float32 schedule values promote bfloat16 moments to
  float32; the arithmetic here is in float32 and the state keeps the parameters' dtype.
  """
  alpha_t = alpha_schedule(alpha, alpha_warmup_steps)
  one_minus_b3 = one_minus_b3_schedule(b3, b1, b3_warmup_steps)

  def init_fn(params):
    zeros = lambda: optax.tree.zeros_like(params)
    return ScaleByAdemamixState(count=jnp.zeros([], jnp.int32), m1=zeros(), m2=zeros(),
                                nu=zeros())

  def update_fn(updates, state, params=None):
    del params
    count = optax.safe_increment(state.count)
    t = count.astype(jnp.float32)
    a, c3 = alpha_t(count), one_minus_b3(count)
    bc1, bc2 = one_minus_power(b1, t), one_minus_power(b2, t)

    def one(g, m1, m2, nu):
      g32 = g.astype(jnp.float32)
      m1 = b1 * m1.astype(jnp.float32) + (1.0 - b1) * g32
      m2 = m2.astype(jnp.float32)
      m2 = m2 + c3 * (g32 - m2)
      nu = b2 * nu.astype(jnp.float32) + (1.0 - b2) * g32 * g32
      u = (m1 / bc1 + a * m2) / (jnp.sqrt(nu / bc2) + eps)
      return tuple(x.astype(g.dtype) for x in (u, m1, m2, nu))

    out = jax.tree.map(one, updates, state.m1, state.m2, state.nu)
    treedef = jax.tree.structure(updates)
    u, m1, m2, nu = _tree.unzip(treedef, treedef.flatten_up_to(out), 4)
    return u, ScaleByAdemamixState(count=count, m1=m1, m2=m2, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


@register("ademamix")
def ademamix(*, learning_rate: Any, b1: float = 0.9, b2: float = 0.999, b3: float = 0.9999,
             alpha: float = 5.0, eps: float = 1e-8, weight_decay: float = 0.0,
             alpha_warmup_steps: int = 0,
             b3_warmup_steps: int = 0) -> optax.GradientTransformation:
  """AdEMAMix (Pagliardini et al., 2024, Algorithm 1).

  m1 <- b1 m1 + (1-b1) g;  m2 <- b3_t m2 + (1-b3_t) g;  nu <- b2 nu + (1-b2) g^2
  update = -lr * ((m1 / (1-b1^t) + alpha_t m2) / (sqrt(nu / (1-b2^t)) + eps) + wd * theta).

  The paper sets both warmups to the run length (T_alpha = T_b3 = T); 0 turns a warmup off.
  Weight decay is decoupled and multiplied by lr, as in the paper and the authors' code.
  Parity: pytorch_optimizer.AdEMAMix (tests/parity/test_pytorch_optimizer.py), theirs with
  weight_decouple=True; its one t_alpha_beta3 is ours alpha_warmup_steps = b3_warmup_steps.

  Args:
    learning_rate: eta (float or optax schedule).
    b1: fast EMA decay (also where the b3 warmup starts).
    b2: second-moment decay.
    b3: slow EMA decay.
    alpha: weight of the slow EMA.
    eps: added to sqrt(nu_hat).
    weight_decay: lambda.
    alpha_warmup_steps: T_alpha of the linear alpha warmup (0: constant alpha).
    b3_warmup_steps: T_b3 of the half-life b3 warmup (0: constant b3).

  Returns:
    An `optax.GradientTransformation`.

  References:
    Pagliardini, Ablin & Grangier, "The AdEMAMix Optimizer: Better, Faster, Older", 2024,
    arXiv 2409.03137.
  """
  return nonfinite.guard(
      scale_by_ademamix(b1=b1, b2=b2, b3=b3, alpha=alpha, eps=eps,
                        alpha_warmup_steps=alpha_warmup_steps, b3_warmup_steps=b3_warmup_steps),
      optax.add_decayed_weights(weight_decay),
      optax.scale_by_learning_rate(learning_rate),
      check_state=False)
