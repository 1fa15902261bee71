"""The optimizer registry: names, errors, hyperparameter checking."""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
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


# Every bad value a clear error at `create`, and non-float leaves left alone (issue 40). ---------

def _base_hparams(name):
  """What `create(name)` needs besides the hyperparameter under test."""
  return {} if name in ("cautious", "sam") else {"learning_rate": 0.1}


def _lr_may_be_none(name) -> bool:
  return optimizers.hyperparameters(name)["learning_rate"] is None


@pytest.mark.parametrize("name", optimizers.names())
def test_every_entry_refuses_a_nonsense_learning_rate_at_create(name):
  bad = ["3e-3", float("nan"), float("inf"), -1.0, True]
  if not _lr_may_be_none(name):
    bad.append(None)
  for value in bad:
    with pytest.raises(ValueError, match=f"'{name}': hyperparameter learning_rate="):
      optimizers.create(name, learning_rate=value)
  if _lr_may_be_none(name):  # documented: the inner optimizer's learning rate
    optimizers.create(name, learning_rate=None, inner_hparams={"learning_rate": 0.1})


def test_sizes_choices_and_flags_are_checked_at_create():
  for value in (0, -3, 2.5, "8"):
    with pytest.raises(ValueError, match=f"block_size={value!r}"):
      optimizers.create("shampoo", learning_rate=0.1, block_size=value)
  cases = [("muon", "ns_steps", 0), ("soap", "precondition_every", -1), ("adamw", "b1", 1.5),
           ("adamw", "eps", -1e-8), ("adamw", "weight_decay", None), ("adamw", "nesterov", "no"),
           ("muon", "ns_dtype", "int8"), ("optax_muon", "scale", "bogus"),
           ("muon", "adam_learning_rate", "1e-3"), ("adamw", "mu_dtype", "float33"),
           # Optional numbers (default None) follow their kind's rules when given.
           ("sgd", "momentum", 1.5), ("rmsprop", "momentum", -0.5),
           ("adafactor", "momentum", float("nan")), ("soap", "shampoo_b2", 2.0),
           ("psgd_kron", "preconditioner_update_probability", 1.5), ("muon", "num_heads", 0),
           ("shampoo", "root_override", -2), ("adamw", "eps_root", -1e-8),
           ("adagrad", "initial_accumulator_value", -0.1), ("ademamix", "alpha", -5.0),
           ("adafactor", "decay_rate", 1.5), ("sam", "eta", -0.01),
           ("schedule_free_adamw", "weight_lr_power", -2.0), ("shampoo", "newton_tol", -1e-6)]
  for name, key, value in cases:
    with pytest.raises(ValueError, match=f"hyperparameter {key}="):
      optimizers.create(name, learning_rate=0.1, **{key: value})
  # Values that mean something are still accepted: 0 warmup, a None default, a schedule.
  optimizers.create("muon", learning_rate=optax.constant_schedule(0.1), momentum_warmup_steps=0)
  optimizers.create("sgd", learning_rate=0, momentum=None)
  optimizers.create("sgd", learning_rate=0.1, momentum=0.9)
  optimizers.create("shampoo", learning_rate=0.1, root_override=2)
  optimizers.create("adamw", learning_rate=jnp.float32(0.1), mu_dtype="bfloat16")
  # None where the builder's signature documents it (`block_size: int | None`: never split),
  # though the default is a number.
  for name in ("shampoo", "soap"):
    optimizers.create(name, learning_rate=0.1, block_size=None, max_preconditioner_dim=None)


def test_help_names_every_entry_and_how_to_see_its_hyperparameters():
  doc = optimizers.create.__doc__
  for name in optimizers.names():
    # Whole names only (adam is not found inside adamw). A name may start a line: Python 3.13
    # strips docstrings' indentation, so no space need stand before it.
    assert re.search(rf"(?<![\w`]){re.escape(name)}[,.]", doc), name
  assert "optimizers.hyperparameters(name)" in doc
  assert optimizers.hyperparameters.__doc__.count("default") >= 2


@pytest.mark.parametrize("name", optimizers.names())
def test_every_entry_leaves_integer_and_boolean_leaves_unchanged(name):
  """One rule for the registry: a non-float leaf gets a zero update and no state."""
  params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(4, 3), "b": jnp.ones((3,)),
            "count": jnp.array(7, jnp.int32), "mask": jnp.array([True, False])}
  # An integer gradient for one, and for the other what jax.grad(..., allow_int=True) gives.
  grads = {"w": jnp.full((4, 3), 0.5), "b": jnp.full((3,), 0.5),
           "count": jnp.array(1, jnp.int32), "mask": np.zeros((2,), jax.dtypes.float0)}
  tx = optimizers.create(name, **_base_hparams(name), **(
      {"inner_hparams": {"learning_rate": 0.1}} if name in ("cautious", "sam") else {}))
  state = tx.init(params)
  float_only = {"w": params["w"], "b": params["b"]}
  assert (jax.tree.structure(jax.eval_shape(tx.init, float_only)).num_leaves
          == jax.tree.structure(state).num_leaves), name  # no state for the other leaves
  extra = {"grad_fn": lambda p: grads} if name == "sam" else {}  # SAM's perturbed gradient
  step = jax.jit(lambda g, s, p: tx.update(g, s, p, **extra))
  for _ in range(2):
    updates, state = step(grads, state, params)
    params = optax.apply_updates(params, updates)
  assert int(params["count"]) == 7 and params["count"].dtype == jnp.int32
  assert params["mask"].tolist() == [True, False]
  assert int(updates["count"]) == 0 and not updates["mask"].any()
  assert float(jnp.abs(params["w"] - jnp.linspace(-1.0, 1.0, 12).reshape(4, 3)).max()) > 0
  assert jnp.all(jnp.isfinite(params["w"]))


@pytest.mark.parametrize("name", optimizers.names())
def test_every_entry_steps_on_a_group_that_holds_no_parameter(name):
  """Under `optax.partition` / `optax.masked` a group may hold no parameter: the trainer's
  embeddings-and-head group (`optimizer.embed_learning_rate`) on a model without either (the
  MDS and logistic-regression workloads). The entry then sees only `optax.MaskedNode`s; its
  state must keep one structure across steps, as the non-finite guard's `lax.cond` requires
  (adamw_8bit, AdEMAMix and Schedule-Free AdamW did not: a crash at the first step)."""
  params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(4, 3), "b": jnp.ones((3,))}
  grads = jax.tree.map(lambda x: jnp.full_like(x, 0.5), params)
  inner = optimizers.create(name, **_base_hparams(name), **(
      {"inner_hparams": {"learning_rate": 0.1}} if name in ("cautious", "sam") else {}))
  tx = optax.masked(inner, {"w": False, "b": False})
  extra = {"grad_fn": lambda p: jax.tree.map(lambda _: optax.MaskedNode(), p)} \
      if name == "sam" else {}
  state = tx.init(params)
  step = jax.jit(lambda g, s, p: tx.update(g, s, p, **extra))
  for _ in range(2):
    updates, new_state = step(grads, state, params)
    assert jax.tree.structure(new_state) == jax.tree.structure(state), name
    state = new_state
  assert jax.tree.map(lambda u, g: bool(jnp.all(u == g)), updates, grads) == {
      "w": True, "b": True}  # masked out: passed through as they came


def test_unzip_splits_per_leaf_tuples_and_keeps_an_empty_trees_structure():
  """`optimizers._tree.unzip`, which the entries above rely on for an empty group: on leaves it
  equals unzipping by hand; on a tree of `optax.MaskedNode`s alone (where `zip` gives no tree
  and `jax.tree.transpose` raises) it gives `n` trees of that structure."""
  from optimizers import _tree  # pylint: disable=import-outside-toplevel
  tree = {"a": jnp.arange(3.0), "b": (jnp.ones(2), jnp.zeros(1))}
  leaves, treedef = jax.tree.flatten(tree)
  u, m = _tree.unzip(treedef, [(x + 1, x * 2) for x in leaves], 2)
  chex.assert_trees_all_equal(u, jax.tree.map(lambda x: x + 1, tree))
  chex.assert_trees_all_equal(m, jax.tree.map(lambda x: x * 2, tree))
  empty = {"w": optax.MaskedNode(), "b": optax.MaskedNode()}
  empty_def = jax.tree.structure(empty)
  with pytest.raises(ValueError):
    jax.tree.transpose(empty_def, jax.tree.structure((0, 0)), empty)
  out = _tree.unzip(empty_def, [], 3)
  assert len(out) == 3 and all(jax.tree.structure(t) == empty_def for t in out)
  with pytest.raises(ValueError, match="2 values per leaf, expected 3"):
    _tree.unzip(treedef, [(x, x) for x in leaves], 3)
