"""SGD and the Adam family, built from optax's own transforms.

Each entry's docstring states the update it computes; `g` is the gradient, `t` the step (from 1),
`lr` the learning rate (a float or an optax schedule).
"""

from __future__ import annotations

from typing import Any

import optax

from optimizers._registry import register


@register("sgd")
def sgd(*, learning_rate: Any, momentum: float | None = None, nesterov: bool = False,
        weight_decay: float = 0.0) -> optax.GradientTransformation:
  """SGD with optional heavy-ball or Nesterov momentum (Polyak 1964; Sutskever et al. 2013).

  m <- momentum * m + g;  update = -lr * m  (Nesterov: -lr * (g + momentum * m)).
  This is PyTorch's convention (no dampening). `weight_decay` adds `wd * theta` to the gradient
  before momentum (coupled L2, as in `torch.optim.SGD`).
  """
  return optax.chain(
      optax.add_decayed_weights(weight_decay) if weight_decay else optax.identity(),
      optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov),
  )


@register("adamw")
def adamw(*, learning_rate: Any, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
          eps_root: float = 0.0, weight_decay: float = 1e-4,
          nesterov: bool = False) -> optax.GradientTransformation:
  """AdamW (Loshchilov & Hutter, 2019, arXiv 1711.05101).

  m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;  m_hat = m / (1-b1^t);  v_hat = v / (1-b2^t)
  update = -lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * theta).
  As in PyTorch, the decay is multiplied by lr; `eps` sits outside the square root.
  """
  return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, eps_root=eps_root,
                     weight_decay=weight_decay, nesterov=nesterov)
