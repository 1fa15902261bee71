"""Lion: the sign of an interpolated momentum, with decoupled weight decay.

Chen et al., "Symbolic Discovery of Optimization Algorithms", NeurIPS 2023 (arXiv 2302.06675),
Algorithm 2. `optax.lion` is this algorithm (interpolation with b1, momentum with b2, decay
added to the sign before the learning rate), so the entry is optax's own.
"""

from __future__ import annotations

from typing import Any

import optax

from optimizers import nonfinite
from optimizers._registry import register


@register("lion")
def lion(*, learning_rate: Any, b1: float = 0.9, b2: float = 0.99,
         weight_decay: float = 0.0) -> optax.GradientTransformation:
  """Lion (Chen et al., 2023, Algorithm 2).

  c = b1 m + (1-b1) g;  update = -lr * (sign(c) + wd * theta);  m <- b2 m + (1-b2) g.

  The betas are the paper's defaults. `weight_decay` defaults to 0 as in the authors' code
  (optax's `lion` defaults to 1e-3); it is multiplied by lr, as in the paper's Algorithm 2.
  Lion's update has unit RMS, so its lr is typically 3-10x smaller than AdamW's.
  Parity: lion_pytorch.Lion and pytorch_optimizer.Lion (tests/parity/test_pytorch_optimizer.py),
  no flags.

  Args:
    learning_rate: eta (float or optax schedule).
    b1: interpolation between momentum and gradient for the sign.
    b2: momentum decay.
    weight_decay: lambda, decoupled, multiplied by lr.

  Returns:
    An `optax.GradientTransformation` (`optax.lion`).

  References:
    Chen et al., "Symbolic Discovery of Optimization Algorithms", NeurIPS 2023,
    arXiv 2302.06675.
  """
  return nonfinite.guard(optax.lion(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay),
                         check_state=False)
