"""The one registry of optimizers: `name -> builder` (builders return optax transformations).

Builders take keyword-only hyperparameters named as in optax (`learning_rate`, `b1`, `b2`,
`eps`, `weight_decay`, `momentum`, `nesterov`, ...). `create` checks the names against the
builder's signature so a typo in a config is an error, not a silently ignored value, and checks
the values against the builder's defaults (here, once for every entry) so that nonsense fails at
`create` rather than at `update` or never. Every entry leaves non-float leaves (integer or
boolean arrays) of a params tree unchanged.
"""

from __future__ import annotations

import difflib
import inspect
import math
import numbers
import re
import typing
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
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
  """Sorted names of every registered optimizer.

  `optimizers.hyperparameters(name)` gives an entry's hyperparameters and their defaults;
  `optimizers.create(name, **hyperparameters)` builds it.
  """
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
  """The hyperparameters the optimizer `name` accepts, with their defaults.

  Example: `optimizers.hyperparameters("adamw")` is `{"learning_rate": inspect.Parameter.empty,
  "b1": 0.9, "b2": 0.999, "eps": 1e-08, ...}`. A required hyperparameter (every entry's
  `learning_rate` but Schedule-Free's, Cautious's and SAM's) has the default
  `inspect.Parameter.empty`; a default of None means "not used" or "the inner optimizer's".
  The builder's docstring (`help(optimizers.get_builder(name))`) says what each one does.

  Args:
    name: a registered name (`optimizers.names()`).

  Returns:
    `{hyperparameter: default}` in the builder's order.

  Raises:
    ValueError: `name` is not registered (the message lists the closest names).
  """
  sig = inspect.signature(get_builder(name))
  return {p.name: p.default for p in sig.parameters.values()
          if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def create(name: str, **hparams: Any) -> optax.GradientTransformation:
  """Builds the optimizer registered as `name` with the given hyperparameters.

  Registered names (`optimizers.names()` lists them): adadelta, adafactor, adagrad, adam, adamw,
  adamw_8bit, ademamix, amsgrad, cautious, dion, lamb, lars, lion, muon, nadamw, normuon,
  optax_muon, psgd_kron, rmsprop, sam, schedule_free_adamw, schedule_free_sgd, sgd, shampoo,
  soap.

  Each entry's hyperparameters and their defaults: `optimizers.hyperparameters(name)`, e.g.
  `optimizers.hyperparameters("shampoo")["block_size"]` is 1024; what they mean:
  `help(optimizers.get_builder(name))`. Omitted hyperparameters take those defaults; every entry
  but `schedule_free_adamw`, `schedule_free_sgd`, `cautious` and `sam` needs `learning_rate`.

  Values are checked here, before anything is traced, against the type of the default:
  a learning rate (`learning_rate`, `adam_learning_rate`, ...) is a finite non-negative number
  or an optax schedule (a callable of the step); a float hyperparameter a finite number
  (betas and momenta in [0, 1], `eps` and weight decays non-negative); an integer size or
  cadence a positive integer (counts of warmup or delay steps and seeds non-negative); a flag
  a bool; a choice one of its listed values. None is accepted only where the default is None
  or the builder's signature admits it (`block_size: int | None`: None means "never split").
  A 0-d JAX array (a traced hyperparameter of vectorized trials) is accepted as given.

  The transformation leaves non-float leaves of the params tree (integer or boolean arrays,
  e.g. a step counter or a mask kept among the parameters) unchanged: their update is zero and
  the optimizer keeps no state for them. Pass `params` to `update` (it decides which leaves
  those are; without it, the updates' dtypes do).

  Args:
    name: a registered name.
    **hparams: the entry's hyperparameters by name.

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  Raises:
    ValueError: an unknown name (with the closest names) or hyperparameter (with the valid
      ones), a required hyperparameter missing, or a value that is not accepted (naming the
      hyperparameter and what it accepts).
  """
  builder = get_builder(name)
  valid = hyperparameters(name)
  unknown = sorted(set(hparams) - set(valid))
  if unknown:
    raise ValueError(
        f"Unknown hyperparameter(s) {unknown} for optimizer {name!r}; "
        f"valid: {', '.join(sorted(valid))}")
  missing = sorted(k for k, v in valid.items() if v is inspect.Parameter.empty and k not in hparams)
  if missing:
    raise ValueError(f"Optimizer {name!r} needs hyperparameter(s) {missing}")
  params = inspect.signature(builder).parameters
  for key, value in hparams.items():
    _check_value(name, key, value, valid[key], _admits_none(params[key].annotation))
  return float_leaves_only(builder(**hparams))


# Hyperparameters whose accepted values the registry checks (the builders check the others).
_CHOICES = {
    ("optax_muon", "scale"): ("original", "match_adamw_rms"),
    ("cautious", "normalization"): ("mean", "sum_plus_one"),
}
_DTYPES = ("ns_dtype", "mu_dtype")
# Integer hyperparameters with a positive default that may still be 0.
_ZERO_IS_FINE = ("start_preconditioning_step", "update_prob_flat_start", "min_ndim_triangular",
                 "min_quantized_size", "min_dim_size_to_factor")
_UNIT_INTERVAL = ("b1", "b2", "b3", "momentum", "momentum_start", "decay", "rho", "adam_b1",
                  "adam_b2", "shampoo_b2", "preconditioner_update_probability", "decay_rate",
                  "update_prob_min")
# Numbers that cannot be negative besides every `*eps` and `*weight_decay`: scales, thresholds,
# tolerances, exponents and initial accumulators (a negative one is a NaN or a sign flip later).
_NON_NEGATIVE = ("eps_root", "clipping_threshold", "initial_accumulator_value", "initial_scale",
                 "alpha", "floor", "trust_coefficient", "update_prob_decay",
                 "preconditioner_init_scale", "eta", "weight_lr_power", "r", "newton_tol",
                 "failure_threshold")
# Optional integers (default None) that must be positive when given.
_POSITIVE_OR_NONE = ("num_heads", "root_override")


def _is_learning_rate(key: str) -> bool:
  return key == "learning_rate" or key.endswith("_learning_rate") or key.endswith("_lr")


def _is_traced(value: Any) -> bool:
  """A JAX/NumPy array or tracer: a hyperparameter of vectorized trials, checked by its user."""
  return isinstance(value, (jax.Array, np.ndarray)) or isinstance(value, jax.core.Tracer)


def _admits_none(annotation: Any) -> bool:
  """Whether a builder's parameter annotation (a string under `from __future__ import
  annotations`, else a type) says None is a value it documents, e.g. `int | None`."""
  if annotation is inspect.Parameter.empty:
    return False
  if isinstance(annotation, str):
    return "None" in re.split(r"[\s|\[\],]+", annotation) or annotation.startswith("Optional[")
  return type(None) in typing.get_args(annotation)


def _check_value(name: str, key: str, value: Any, default: Any,
                 none_ok: bool = False) -> None:
  """ValueError naming `key` and what it accepts when `value` cannot be right (see `create`).

  `none_ok`: the builder's annotation admits None (e.g. Shampoo's `block_size: int | None`,
  where None means "never split"), so None is accepted whatever the default.
  """
  where = f"optimizer {name!r}: hyperparameter {key}={value!r}"
  if _is_traced(value):
    return
  if value is None:
    if default is None or none_ok:
      return
    why = ("it is required" if default is inspect.Parameter.empty
           else f"the default is {default!r}")
    raise ValueError(f"{where} is not accepted (None only where the default is None; {why})")
  real = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
  if _is_learning_rate(key):
    if callable(value):
      return
    if not real or not math.isfinite(value) or value < 0:
      raise ValueError(f"{where}: a learning rate must be a finite non-negative number or an "
                       "optax schedule (a function of the step count)")
    return
  if (name, key) in _CHOICES:
    if value not in _CHOICES[name, key]:
      raise ValueError(f"{where}: accepted values are {', '.join(map(repr, _CHOICES[name, key]))}")
    return
  if key in _DTYPES:
    try:
      ok = jnp.issubdtype(jnp.dtype(value), jnp.floating)
    except TypeError:
      ok = False
    if not ok:
      raise ValueError(f"{where}: must be a floating-point dtype, e.g. 'float32' or 'bfloat16'")
    return
  if isinstance(default, bool):
    if not isinstance(value, (bool, np.bool_)):
      raise ValueError(f"{where}: must be True or False")
  elif isinstance(default, int):
    if not real or not float(value).is_integer():
      raise ValueError(f"{where}: must be an integer")
    low = 1 if default >= 1 and key not in _ZERO_IS_FINE else 0
    if value < low:
      raise ValueError(f"{where}: must be {'a positive' if low else 'a non-negative'} integer "
                       f"(default {default})")
  elif isinstance(default, float):
    if not real or not math.isfinite(value):
      raise ValueError(f"{where}: must be a finite number (default {default})")
    if key in _UNIT_INTERVAL and not 0 <= value <= 1:
      raise ValueError(f"{where}: must be in [0, 1] (default {default})")
    if (key.endswith("eps") or key.endswith("weight_decay") or key in _NON_NEGATIVE) \
        and value < 0:
      raise ValueError(f"{where}: must be non-negative (default {default})")
  elif isinstance(default, str) and not isinstance(value, str):
    if not callable(value) and not isinstance(value, (list, tuple)):
      raise ValueError(f"{where}: must be a string (default {default!r})")
  elif default is None and real:
    # An optional number (SGD's, RMSProp's and Adafactor's `momentum=None`): when given, the
    # same rules as a number's default would set.
    if not math.isfinite(value):
      raise ValueError(f"{where}: must be a finite number or None (default None)")
    if key in _UNIT_INTERVAL and not 0 <= value <= 1:
      raise ValueError(f"{where}: must be in [0, 1] or None (default None)")
    if key in _POSITIVE_OR_NONE and not (float(value).is_integer() and value >= 1):
      raise ValueError(f"{where}: must be a positive integer or None (default None)")


def _is_float_leaf(x: Any) -> bool:
  dtype = getattr(x, "dtype", None)
  if dtype is None:
    return isinstance(x, float)
  return jnp.issubdtype(dtype, jnp.inexact)


def _zero_update(u: Any, p: Any) -> Any:
  """A zero update for a non-float leaf: in the parameter's dtype (so `optax.apply_updates`
  leaves it as it is, even from a float0 gradient), or the update's without `params`."""
  if p is not None:
    return jnp.zeros_like(p)
  if getattr(u, "dtype", None) == jax.dtypes.float0:
    return u  # the gradient of an integer input: already nothing to apply
  return jnp.zeros_like(u)


def float_leaves_only(tx: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """`tx` applied to the floating-point leaves only; every other leaf gets a zero update.

  The other leaves are hidden from `tx` as `optax.MaskedNode`s (as `optax.masked` does), so it
  keeps no state for them; an extra argument `grad_fn` (SAM's) is given them back. A params
  tree of floating-point leaves only (every model here) goes straight to `tx`: the state and
  the updates are `tx`'s own.
  """
  tx = optax.with_extra_args_support(tx)

  def split(reference):
    flat, treedef = jax.tree.flatten(reference)
    return [_is_float_leaf(x) for x in flat], treedef

  def hide(tree, keep, treedef):
    return treedef.unflatten([x if k else optax.MaskedNode()
                              for x, k in zip(treedef.flatten_up_to(tree), keep)])

  def init_fn(params):
    keep, treedef = split(params)
    return tx.init(params if all(keep) else hide(params, keep, treedef))

  def update_fn(updates, state, params=None, **extra_args):
    keep, treedef = split(updates if params is None else params)
    if all(keep):
      return tx.update(updates, state, params, **extra_args)
    grad_fn = extra_args.get("grad_fn")
    if callable(grad_fn) and params is not None:  # SAM's: called on (hidden) params
      def hidden_grad_fn(p, *args, **kwargs):
        full = treedef.unflatten([x if k else orig for x, k, orig in zip(
            treedef.flatten_up_to(p), keep, treedef.flatten_up_to(params))])
        return hide(grad_fn(full, *args, **kwargs), keep, treedef)
      extra_args = dict(extra_args, grad_fn=hidden_grad_fn)
    new, state = tx.update(hide(updates, keep, treedef), state,
                           None if params is None else hide(params, keep, treedef), **extra_args)
    flat_params = [None] * len(keep) if params is None else treedef.flatten_up_to(params)
    out = [n if k else _zero_update(u, p) for n, u, p, k in zip(
        treedef.flatten_up_to(new), treedef.flatten_up_to(updates), flat_params, keep)]
    return treedef.unflatten(out), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)

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
