"""Sharpness-aware minimization as a wrapper around any registry entry.

Foret, Kleiner, Mobahi & Neyshabur, "Sharpness-Aware Minimization for Efficiently Improving
Generalization", ICLR 2021 (arXiv 2010.01412); the adaptive form is Kwon, Kim, Park & Choi,
"ASAM: Adaptive Sharpness-Aware Minimization for Scale-Invariant Learning of Deep Neural
Networks", ICML 2021 (arXiv 2102.11600).

The two-gradient step is `optax.contrib.sam` in its opaque mode (one call to `update` does the
ascent, calls `grad_fn` at the perturbed point and runs the inner optimizer); only the ascent
direction (with ASAM's scaling and a guarded norm) is written here.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from optax import contrib

from optimizers import _registry


def sam_ascent(*, rho: float, adaptive: bool = False, eta: float = 0.01,
               eps: float = 1e-12) -> optax.GradientTransformation:
  """Minus SAM's ascent step, as optax's SAM expects from its adversarial optimizer.

  update = -rho * T^2 g / (||T g|| + eps), with ||.|| the norm over the whole pytree and
  T = 1 (SAM) or T = |theta| + eta elementwise (ASAM).

  Args:
    rho: the neighbourhood radius.
    adaptive: ASAM's parameter-scaled neighbourhood.
    eta: ASAM's offset, so that zero weights are still perturbed.
    eps: guards the norm of an all-zero gradient.

  Returns:
    A stateless `optax.GradientTransformation` (needs `params` when adaptive).
  """

  def update_fn(updates, state, params=None):
    if adaptive:
      if params is None:
        raise ValueError("sam(adaptive=True): update() needs params")
      scale = jax.tree.map(lambda p: jnp.abs(p) + eta, params)
    else:
      scale = jax.tree.map(jnp.ones_like, updates)
    scaled = jax.tree.map(jnp.multiply, scale, updates)
    factor = -rho / (optax.tree.norm(scaled) + eps)
    updates = jax.tree.map(lambda t, u: (factor * t * u).astype(u.dtype), scale, scaled)
    return updates, state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


@_registry.register("sam")
def sam(*, inner: str = "sgd", inner_hparams: Mapping[str, Any] | None = None,
        learning_rate: Any = None, rho: float = 0.05, adaptive: bool = False, eta: float = 0.01,
        eps: float = 1e-12) -> optax.GradientTransformationExtraArgs:
  """SAM around the registry entry `inner` (Foret et al., 2021, Algorithm 1).

  g = grad L(theta);  e = rho T^2 g / ||T g||  (T = 1; ASAM: T = |theta| + eta)
  update = inner(grad L(theta + e), theta).

  Needs the trainer's extra argument `grad_fn(params) -> grads` (the loss gradient on the same
  batch) to evaluate the gradient at theta + e; the state is optax's `SAMState` holding the
  inner optimizer's state. PyTorch has no SAM. `eps` (not in the paper) guards an all-zero
  gradient. ASAM's reference code scales only weights, not biases; here every leaf is scaled.
  Parity: pytorch_optimizer.SAM around torch.optim.SGD (tests/parity/test_pytorch_optimizer.py,
  driven by first_step/second_step), ASAM with eta=0 (theirs has no offset).

  Args:
    inner: registry name of the optimizer that takes the SAM gradient (the paper used SGD with
      momentum).
    inner_hparams: its hyperparameters (a dict or ConfigDict), without `learning_rate`.
    learning_rate: passed to `inner` as its `learning_rate` (so the trainer's schedule reaches
      it); None leaves it to `inner_hparams`.
    rho: neighbourhood radius (paper: 0.05; ASAM uses larger values, e.g. 0.5-2).
    adaptive: ASAM instead of SAM.
    eta: ASAM's offset.
    eps: added to the gradient norm.

  Returns:
    An `optax.GradientTransformationExtraArgs`; `update` requires `grad_fn=`.

  References:
    Foret, Kleiner, Mobahi & Neyshabur, "Sharpness-Aware Minimization for Efficiently
    Improving Generalization", ICLR 2021, arXiv 2010.01412.
    Kwon, Kim, Park & Choi, "ASAM: Adaptive Sharpness-Aware Minimization for Scale-Invariant
    Learning of Deep Neural Networks", ICML 2021, arXiv 2102.11600.
  """
  hparams = dict(inner_hparams.items()) if inner_hparams else {}
  if learning_rate is not None:
    if "learning_rate" in hparams:
      raise ValueError("sam: give learning_rate either at the top level or in inner_hparams")
    hparams["learning_rate"] = learning_rate
  tx = contrib.sam(_registry.create(inner, **hparams),
                   sam_ascent(rho=rho, adaptive=adaptive, eta=eta, eps=eps),
                   sync_period=2, opaque_mode=True)

  def update_fn(updates, state, params=None, *, grad_fn: Callable[[Any], Any] | None = None,
                **extra_args):
    del extra_args
    if grad_fn is None:
      raise ValueError("sam needs update(..., grad_fn=...) to compute the perturbed gradient")
    return tx.update(updates, state, params, grad_fn=lambda p, _: grad_fn(p))

  return optax.GradientTransformationExtraArgs(tx.init, update_fn)
