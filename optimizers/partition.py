"""How optimizer states shard: a `PartitionSpec` for every state leaf, from the parameters'.

As precondition/tearfree gives each state piece a partition-spec function, each optimizer here
declares the layout of its own state types with `register(StateType)`; everything else follows
two generic rules. In order:
  1. a node of a registered type (8-bit `QuantizedArray`, `ShampooState`, `SoapState`) gets
     the specs its module's function returns;
  2. a leaf whose key path ends with a parameter's key path and that has the parameter's shape
     (Adam's moments, Muon's momentum, `optax.partition`'s masked copies) follows that
     parameter;
  3. anything else (step counts, scalars, metrics) is replicated.
Stacks of blocks (n, d, d), as Shampoo's and SOAP's factors, split along the stack axis when
n divides the axis size, else along the first other axis that it divides (`stack_spec`).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
from jax.sharding import PartitionSpec as P

from optimizers import routing

Rule = Callable[[Any, tuple, "Context"], Any]
_RULES: dict[type, Rule] = {}


def register(cls: type) -> Callable[[Rule], Rule]:
  """Declares `rule(node, path, ctx) -> node of PartitionSpecs` for state nodes of type `cls`."""

  def wrap(rule: Rule) -> Rule:
    _RULES[cls] = rule
    return rule

  return wrap


def _names(path: tuple) -> tuple[str, ...]:
  return tuple(routing.key_name(k) for k in path)


def _is_spec(x: Any) -> bool:
  return isinstance(x, P)


class Context:
  """The parameters' specs and shapes by key path, and the axis states shard over."""

  def __init__(self, abstract_params: Any, param_specs: Any, axis: str, size: int):
    self.axis, self.size = axis, size
    shapes = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
    specs = jax.tree.leaves(param_specs, is_leaf=_is_spec)
    self._params = {_names(p): (tuple(x.shape), s) for (p, x), s in zip(shapes, specs)}
    self._lengths = sorted({len(k) for k in self._params}, reverse=True)

  def param_of(self, path: tuple) -> tuple[tuple[int, ...], P] | None:
    """(shape, spec) of the parameter whose key path is the longest suffix of `path`."""
    names = _names(path)
    for n in self._lengths:
      if n <= len(names) and names[len(names) - n:] in self._params:
        return self._params[names[len(names) - n:]]
    return None

  def follow(self, path: tuple, leaf: Any) -> P:
    """The spec of the parameter that `leaf` mirrors (rule 2), else replicated."""
    found = self.param_of(path)
    if found is not None and found[0] == tuple(leaf.shape):
      return found[1]
    return P()

  def stack_spec(self, leaf: Any) -> P:
    """A stack (n, ...): split along n when `size` divides it, else the first axis it divides."""
    for axis, d in enumerate(leaf.shape):
      if self.size > 1 and d % self.size == 0:
        return P(*([None] * axis + [self.axis]))
    return P()

  def specs(self, tree: Any, path: tuple = ()) -> Any:
    """Specs for every leaf of `tree` (found at `path` in the state), by the module's rules."""
    is_rule = lambda x: type(x) in _RULES
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_rule)
    out = []
    for p, leaf in leaves:
      full = path + tuple(p)
      out.append(_RULES[type(leaf)](leaf, full, self) if is_rule(leaf)
                 else self.follow(full, leaf))
    return treedef.unflatten(out)


def state_specs(abstract_state: Any, abstract_params: Any, param_specs: Any, *,
                axis: str = "fsdp", size: int = 1) -> Any:
  """A `PartitionSpec` for every leaf of an optimizer state (a pytree of them).

  Args:
    abstract_state: the state, or its `jax.eval_shape`.
    abstract_params: the parameters (or their shapes) the state was initialized from.
    param_specs: a `PartitionSpec` per parameter.
    axis: the mesh axis that states shard over.
    size: that axis's size.

  Returns:
    A pytree with the state's structure whose leaves are `PartitionSpec`s.
  """
  return Context(abstract_params, param_specs, axis, size).specs(abstract_state)
