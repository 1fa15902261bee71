"""Hyperparameters that may be traced scalars (vectorized trials, issue 21).

The vectorized-trials engine builds a transformation inside a jitted, vmapped function with its
tuned hyperparameters as 0-d arrays (tracers). A builder may branch or validate on a
hyperparameter only when it is a concrete number; for a traced one the term is always kept
(and the validation skipped), so the Python-number path, and its float results, are unchanged.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import jax.numpy as jnp


def is_number(x: Any) -> bool:
  """A concrete Python/NumPy number (not an array, not a tracer)."""
  return isinstance(x, numbers.Real)


def is_zero(x: Any) -> bool:
  """`x == 0` for a number; False for an array or tracer (whose term is then kept)."""
  return is_number(x) and x == 0


def log(x: Any) -> Any:
  """`math.log(x)` (float64) for a number, `jnp.log` in float32 for an array or tracer."""
  return math.log(x) if is_number(x) else jnp.log(jnp.asarray(x, jnp.float32))


def require_static(optimizer: str, name: str, value: Any, why: str) -> None:
  """TypeError naming `name` when a structural hyperparameter is given as an array/tracer."""
  if value is not None and not is_number(value) and not isinstance(value, str):
    raise TypeError(f"{optimizer}: hyperparameter {name!r} must be a Python number, not "
                    f"{type(value).__name__} ({why}); it cannot be traced (vectorized trials)")


def nonzero(x: Any) -> bool:
  """`bool(x)` for a number or None; True for an array or tracer (its term is kept)."""
  return bool(x) if x is None or is_number(x) else True


def positive(x: Any) -> bool:
  """`x > 0` for a number; True for an array or tracer (its term, or state, is kept)."""
  return not is_number(x) or x > 0
