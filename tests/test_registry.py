"""The optimizer registry: names, errors, hyperparameter checking."""

import jax
import jax.numpy as jnp
import optax
import pytest

import optimizers


def test_names_include_the_foundation_entries():
  names = optimizers.names()
  assert names == sorted(names)
  assert {"adamw", "sgd"} <= set(names)


def test_unknown_name_lists_the_choices():
  with pytest.raises(ValueError) as e:
    optimizers.create("adamq", learning_rate=1e-3)
  for name in optimizers.names():
    assert name in str(e.value)


def test_unknown_hyperparameter_lists_the_valid_ones():
  with pytest.raises(ValueError, match="beta1") as e:
    optimizers.create("adamw", learning_rate=1e-3, beta1=0.9)
  assert "b1" in str(e.value) and "weight_decay" in str(e.value)


def test_learning_rate_is_required():
  with pytest.raises(ValueError, match="learning_rate"):
    optimizers.create("sgd")


def test_learning_rate_may_be_a_schedule():
  tx = optimizers.create("sgd", learning_rate=optax.linear_schedule(1.0, 0.0, 10))
  params = {"w": jnp.ones(3)}
  state = tx.init(params)
  updates, _ = tx.update({"w": jnp.ones(3)}, state, params)
  assert isinstance(tx, optax.GradientTransformation)
  assert float(updates["w"][0]) == -1.0


def test_collect_metrics_finds_metrics_fields():
  from typing import NamedTuple

  class S(NamedTuple):
    count: jax.Array
    metrics: dict

  state = (optax.EmptyState(), S(jnp.int32(0), {"failures": jnp.int32(2), "res": jnp.float32(1.5)}))
  m = optimizers.collect_metrics(state)
  assert set(m) == {"failures", "res"} and int(m["failures"]) == 2


def test_every_entry_refuses_nonfinite_steps_exactly_once():
  """Every registry entry carries one `nonfinite.guard` (wrappers through their inner entry)."""
  from optimizers import nonfinite  # pylint: disable=g-import-not-at-top
  params = {"w": jnp.ones((4, 3)), "b": jnp.ones((3,))}
  for name in optimizers.names():
    state = optimizers.create(name, learning_rate=1e-3).init(params)
    guards = [s for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(
        x, nonfinite.NonfiniteState)) if isinstance(s, nonfinite.NonfiniteState)]
    assert len(guards) == 1, (name, len(guards))


def _hand_written_path_str(path) -> str:
  """`routing.path_str` before it wrapped `jax.tree_util.keystr` (issue 20)."""
  def name(k):
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        return str(getattr(k, attr))
    return str(k)
  return "/".join(name(k) for k in path)


def test_path_strings_are_unchanged_by_keystr():
  """Routing rules, labels, metric names and checkpoints key on these strings."""
  from typing import NamedTuple

  from optimizers import routing

  class S(NamedTuple):
    mu: dict
    metrics: dict

  tree = {"blocks": {0: {"attn": {"q": {"kernel": 1}}}}, "embed": [2, (3,)], "1.5": None,
          "opt": S({"w": 4}, {"root_failures": 5}), "none": {None: 6}}
  paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
  # Every kind of key entry: DictKey (str, int, None), SequenceKey, GetAttrKey.
  want = ["blocks/0/attn/q/kernel", "embed/0", "embed/1/0", "none/None", "opt/mu/w",
          "opt/metrics/root_failures"]
  assert [routing.path_str(p) for p in paths] == want
  assert [_hand_written_path_str(p) for p in paths] == want
  assert [routing.key_name(k) for k in paths[0]] == ["blocks", "0", "attn", "q", "kernel"]
  # Paths extended by hand (optimizers/partition.py) and the empty path.
  assert routing.path_str(paths[-2] + ("nu",)) == "opt/mu/w/nu" and routing.path_str(()) == ""
  assert routing.key_name("mu") == "mu"
  m = optimizers.collect_metrics(tree)
  assert list(m) == ["root_failures"]
