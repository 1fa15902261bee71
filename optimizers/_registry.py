"""The one registry of optimizers: `name -> builder` (builders return optax transformations).

Builders take keyword-only hyperparameters named as in optax (`learning_rate`, `b1`, `b2`,
`eps`, `weight_decay`, `momentum`, `nesterov`, ...). `create` checks the names against the
builder's signature so a typo in a config is an error, not a silently ignored value.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable

import jax
import optax

Builder = Callable[..., optax.GradientTransformation]
_BUILDERS: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
  """Decorator: registers `builder` under `name` (a name may be registered once)."""

  def wrap(builder: Builder) -> Builder:
    if name in _BUILDERS:
      raise ValueError(f"optimizer {name!r} is registered twice")
    _BUILDERS[name] = builder
    return builder

  return wrap


def names() -> list[str]:
  """Sorted names of every registered optimizer."""
  return sorted(_BUILDERS)


def get_builder(name: str) -> Builder:
  try:
    return _BUILDERS[name]
  except KeyError:
    raise ValueError(f"Unknown optimizer {name!r}; {_did_you_mean(name)}"
                     f"{', '.join(names())}") from None


def _did_you_mean(name: Any) -> str:
  """"did you mean 'adam', 'adamw' or 'nadamw'? Known optimizers: " (the closest registered
  names, as a config-key typo gets the closest key), or "known optimizers: " when none is close."""
  close = [repr(c) for c in difflib.get_close_matches(str(name), names(), n=3, cutoff=0.6)]
  if not close:
    return "known optimizers: "
  listed = close[0] if len(close) == 1 else f"{', '.join(close[:-1])} or {close[-1]}"
  return f"did you mean {listed}? Known optimizers: "


def hyperparameters(name: str) -> dict[str, Any]:
  """The hyperparameters `name` accepts, with defaults (`inspect.Parameter.empty` if required)."""
  sig = inspect.signature(get_builder(name))
  return {p.name: p.default for p in sig.parameters.values()
          if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def create(name: str, **hparams: Any) -> optax.GradientTransformation:
  """Builds the optimizer registered as `name` with the given hyperparameters."""
  valid = hyperparameters(name)
  unknown = sorted(set(hparams) - set(valid))
  if unknown:
    raise ValueError(
        f"Unknown hyperparameter(s) {unknown} for optimizer {name!r}; "
        f"valid: {', '.join(sorted(valid))}")
  missing = sorted(k for k, v in valid.items() if v is inspect.Parameter.empty and k not in hparams)
  if missing:
    raise ValueError(f"Optimizer {name!r} needs hyperparameter(s) {missing}")
  return get_builder(name)(**hparams)


def collect_metrics(opt_state: Any) -> dict[str, jax.Array]:
  """Scalars an optimizer exposes in a state field named `metrics` (a dict), keyed by path.

  Convention: a transformation that wants its diagnostics logged (Shampoo's root failures,
  residuals, ...) keeps them in a NamedTuple field `metrics`; the trainer logs every scalar
  found there under `opt/<path>`.
  """
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(opt_state)[0]:
    names_ = [getattr(k, "name", None) for k in path]
    if "metrics" not in names_:
      continue
    i = names_.index("metrics")
    key = jax.tree_util.keystr(path[i + 1:], simple=True, separator="/") or "metrics"
    out[key] = leaf
  return out
