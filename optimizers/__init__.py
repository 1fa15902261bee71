"""Optax gradient transformations for first-order, second-order and orthogonalized methods.

Every optimizer is reached through one registry:

  tx = optimizers.create("adamw", learning_rate=3e-3, b2=0.95)
  optimizers.names()  # every registered name

Each module below registers its entries when imported.
"""

from optimizers._registry import collect_metrics
from optimizers._registry import create
from optimizers._registry import get_builder
from optimizers._registry import hyperparameters
from optimizers._registry import names
from optimizers._registry import register

# Importing a module registers its optimizers.
from optimizers import adam_family  # noqa: E402,F401
from optimizers import quantized  # noqa: E402,F401
from optimizers import sam  # noqa: E402,F401
from optimizers import muon  # noqa: E402,F401
from optimizers import normuon  # noqa: E402,F401
from optimizers import dion  # noqa: E402,F401
from optimizers import psgd_kron  # noqa: E402,F401
from optimizers import shampoo  # noqa: E402,F401
from optimizers import lion  # noqa: E402,F401
from optimizers import schedule_free  # noqa: E402,F401
from optimizers import ademamix  # noqa: E402,F401
from optimizers import cautious  # noqa: E402,F401
from optimizers.schedule_free import eval_params  # noqa: E402

__all__ = ["collect_metrics", "create", "eval_params", "get_builder", "hyperparameters", "names",
           "register"]
