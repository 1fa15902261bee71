"""Which parameters go to Muon and which to AdamW, and how a tensor becomes a matrix for Muon.

Default rule (works on `models/gpt.py` without arguments): hidden-layer kernels with two or
more dimensions go to Muon; embeddings and the output head (a path key named one of
`EMBEDDING_AND_HEAD_KEYS`) and every tensor with fewer than 2 dimensions (norm scales, biases,
scalars) go to AdamW. Users override it with `labels`: a function `(path, leaf) -> "muon" |
"adam"` or a pytree of those strings.

Matrix view of a Muon tensor: `optax.contrib.MuonDimensionNumbers(reduction_axis,
output_axis)`; fan-in is the product of the reduction axes, fan-out the product of the output
axes, and every other axis is a batch axis (a stack of independent matrices). A 2-D kernel is
(fan_in, fan_out) by default. A Muon tensor with more than 2 dimensions must be given its
dimension numbers (a function `(path, leaf) -> MuonDimensionNumbers | None`, or a pytree of
them with `None` elsewhere): it is an error, not a guess, when they are missing. Examples:
a stacked (layers, fan_in, fan_out) kernel is `MuonDimensionNumbers(1, 2)`; an HWIO
convolution kernel is `MuonDimensionNumbers((0, 1, 2), 3)`.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import optax

DimensionNumbers = optax.contrib.MuonDimensionNumbers
MUON, ADAM = "muon", "adam"
EMBEDDING_AND_HEAD_KEYS = frozenset(
    {"embed", "embedding", "embeddings", "wte", "wpe", "lm_head", "unembed"})

Path = tuple[Any, ...]
LabelRule = Callable[[Path, Any], str]
DimNumRule = Callable[[Path, Any], "DimensionNumbers | None"]


def key_name(key: Any) -> str:
  """`DictKey('embed')` -> 'embed', `DictKey(0)` -> '0', `GetAttrKey('mu')` -> 'mu'."""
  return jax.tree_util.keystr((key,), simple=True)


def path_str(path: Path) -> str:
  """'blocks/0/attn/q/kernel': the key names joined by '/' (rules, labels, metrics, checkpoints).

  `jax.tree_util.keystr(path, simple=True, separator="/")`: the same strings as the key names
  joined by hand (tests/test_registry.py holds them fixed).
  """
  return jax.tree_util.keystr(tuple(path), simple=True, separator="/")


def default_label(path: Path, leaf: Any) -> str:
  """AdamW for embeddings, the output head and tensors with < 2 dims; Muon otherwise."""
  if len(leaf.shape) < 2:
    return ADAM
  if any(key_name(k) in EMBEDDING_AND_HEAD_KEYS for k in path):
    return ADAM
  return MUON


def as_rule(spec: Any, is_leaf: Callable[[Any], bool]) -> Callable[[Path, Any], Any]:
  """A `(path, leaf) -> value` function from a function or a pytree of values."""
  if callable(spec):
    return spec
  by_path = {path_str(p): v for p, v in
             jax.tree_util.tree_flatten_with_path(spec, is_leaf=is_leaf)[0]}
  return lambda path, leaf: by_path.get(path_str(path))


def dimension_numbers_rule(spec: DimNumRule | Any | None = None) -> DimNumRule:
  """`(path, leaf) -> DimensionNumbers` for a Muon leaf; raises where none is known.

  Args:
    spec: None (2-D leaves only), a function `(path, leaf) -> DimensionNumbers | None`, or a
      pytree of `DimensionNumbers` (None for leaves without).

  Returns:
    The resolving function; 2-D leaves without an explicit entry get (fan_in, fan_out) = (0, 1).
  """
  given = (lambda path, leaf: None) if spec is None else as_rule(
      spec, lambda x: x is None or isinstance(x, DimensionNumbers))

  def resolve(path: Path, leaf: Any) -> DimensionNumbers:
    dn = given(path, leaf)
    if dn is not None:
      return dn
    if len(leaf.shape) == 2:
      return DimensionNumbers(0, 1)
    raise ValueError(
        f"Muon parameter {path_str(path)!r} has shape {tuple(leaf.shape)}: tensors with other "
        "than 2 dimensions need explicit dimension numbers (dimension_numbers=...: stacked "
        "layers MuonDimensionNumbers(1, 2), HWIO conv kernels MuonDimensionNumbers((0, 1, 2), 3)"
        ") or a label sending them to AdamW")

  return resolve


def label_fn(labels: LabelRule | Any | None = None,
             dimension_numbers: DimNumRule | Any | None = None) -> Callable[[Any], Any]:
  """`params -> pytree of "muon" / "adam"` for `optax.partition`, checked against dim numbers.

  Args:
    labels: None (`default_label`), a function `(path, leaf) -> str`, or a pytree of labels.
    dimension_numbers: as in `dimension_numbers_rule`; every Muon leaf must resolve.

  Returns:
    A function of the parameters (or updates, or abstract shapes) returning the labels.
  """
  rule = default_label if labels is None else as_rule(labels, lambda x: isinstance(x, str))
  resolve = dimension_numbers_rule(dimension_numbers)

  def label(path: Path, leaf: Any) -> str:
    out = rule(path, leaf)
    if out not in (MUON, ADAM):
      raise ValueError(f"label of {path_str(path)!r} is {out!r}; expected 'muon' or 'adam'")
    if out == MUON:
      resolve(path, leaf)  # fails now, at init, rather than inside the update
    return out

  return lambda params: jax.tree_util.tree_map_with_path(label, params)


def fans(shape: tuple[int, ...], dn: DimensionNumbers) -> tuple[int, int]:
  """(fan_in, fan_out): products of the reduction and output axes."""
  red, out = _axes(len(shape), dn)
  return math.prod(shape[a] for a in red), math.prod(shape[a] for a in out)


def _axes(ndim: int, dn: DimensionNumbers) -> tuple[tuple[int, ...], tuple[int, ...]]:
  as_tuple = lambda a: tuple(x % ndim for x in ((a,) if isinstance(a, int) else a))
  red, out = as_tuple(dn.reduction_axis), as_tuple(dn.output_axis)
  if not red or not out or set(red) & set(out) or len(set(red + out)) != len(red + out):
    raise ValueError(f"invalid dimension numbers {dn} for a {ndim}-D tensor")
  return red, out


def to_matrices(x: jax.Array, dn: DimensionNumbers) -> tuple[jax.Array, Callable]:
  """Reshapes `x` to (batch, fan_in, fan_out); returns it and the inverse function."""
  red, out = _axes(x.ndim, dn)
  batch = tuple(a for a in range(x.ndim) if a not in red + out)
  perm = batch + red + out
  moved_shape = tuple(x.shape[a] for a in perm)
  fan_in, fan_out = fans(x.shape, dn)
  inv_perm = tuple(perm.index(a) for a in range(x.ndim))

  def inverse(y: jax.Array) -> jax.Array:
    return y.reshape(moved_shape).transpose(inv_perm)

  return x.transpose(perm).reshape((-1, fan_in, fan_out)), inverse
