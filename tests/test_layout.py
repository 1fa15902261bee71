"""optimizers/shampoo/layout.py: what `shampoo` and `soap` share, and the state it builds."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import optimizers
from optimizers import partition
from optimizers.shampoo import blocking
from optimizers.shampoo import layout

PARAMS = {"w": jnp.ones((8, 4)), "b": jnp.ones((7,)), "stack": jnp.ones((2, 4, 3))}
BATCH_AXES = {"w": 0, "b": 0, "stack": 1}
BLOCKING = dict(block_size=4, max_preconditioner_dim=4096, graft_only_dim=1_000_000,
                merge_small_dims=True)


def test_layout_fn_is_the_blocking_layout_of_the_leaves():
  got = layout.layout_fn(**BLOCKING, batch_axes=BATCH_AXES)(PARAMS)
  want = blocking.Layout([x.shape for x in jax.tree.leaves(PARAMS)],
                         blocking.resolve_batch_axes(PARAMS, BATCH_AXES), **BLOCKING)
  assert got.plans == want.plans and got.members == want.members
  assert got.shapes == want.shapes and got.dims == want.dims
  assert got.members == {"4x3": [(1, 0), (1, 1)], "4x4": [(2, 0), (2, 1)]}
  unbatched = layout.layout_fn(**BLOCKING, batch_axes=None)(PARAMS)
  assert unbatched.members == {"2x4x3": [(1, 0)], "4x4": [(2, 0), (2, 1)]}


def test_init_factors_are_zeros_and_identities():
  lay = layout.layout_fn(**BLOCKING, batch_axes=None)(PARAMS)
  stats, applied = layout.init_factors(lay)
  assert jax.tree.structure(stats) == jax.tree.structure(applied)
  for key, shapes in lay.factor_shapes().items():
    for s, a, shape in zip(stats[key], applied[key], shapes):
      assert s.shape == a.shape == shape and s.dtype == a.dtype == jnp.float32
      np.testing.assert_array_equal(s, 0.0)
      np.testing.assert_array_equal(a, np.broadcast_to(np.eye(shape[-1]), shape))
  zeros = layout.zeros({"w": jnp.ones((2, 3), jnp.bfloat16)})
  assert zeros["w"].dtype == jnp.float32 and not zeros["w"].any()


@pytest.mark.parametrize("name", ["shampoo", "soap"])
@pytest.mark.parametrize("bad", ["precondition_every", "statistics_every",
                                 "start_preconditioning_step"])
def test_both_optimizers_check_their_schedule(name, bad):
  # The registry refuses a non-positive cadence at `create` (naming it); the builders' own check
  # covers what the registry lets through (start_preconditioning_step may be 0 for others).
  with pytest.raises(ValueError, match=f"{bad}.*(must be >= 1|must be a positive integer)"):
    optimizers.create(name, learning_rate=1e-3, **{bad: 0})


# The states' pytree structure is what checkpoints restore into: fixed field names and order,
# factor groups keyed by block shape (tests/test_checkpoint_compat.py restores old ones).
@pytest.mark.parametrize("name,fields,applied", [
    ("shampoo", ("count", "mu", "nu", "stats", "roots", "metrics"), "roots"),
    ("soap", ("count", "mu", "nu", "stats", "bases"), "bases"),
])
def test_state_fields_and_specs(name, fields, applied):
  tx = optimizers.create(name, learning_rate=1e-3, block_size=4, batch_axes=BATCH_AXES)
  state = jax.eval_shape(tx.init, PARAMS)
  (inner,) = [s for s in jax.tree.leaves(state, is_leaf=lambda x: hasattr(x, "_fields"))
              if getattr(s, "_fields", None) == fields]
  assert sorted(inner.stats) == sorted(getattr(inner, applied)) == ["4x3", "4x4"]
  assert inner.mu["w"].shape == (8, 4) and inner.mu["w"].dtype == jnp.float32
  specs = partition.state_specs(state, PARAMS, jax.tree.map(lambda _: P("fsdp"), PARAMS),
                                size=2)
  (spec,) = [s for s in jax.tree.leaves(specs, is_leaf=lambda x: hasattr(x, "_fields"))
             if getattr(s, "_fields", None) == fields]
  assert spec.count == P()
  assert spec.mu == spec.nu == {"w": P("fsdp"), "b": P("fsdp"), "stack": P("fsdp")}
  # '4x4' stacks the 2 blocks of w, '4x3' the 2 layers of the stack: split over fsdp.
  for key in ("4x3", "4x4"):
    assert spec.stats[key] == getattr(spec, applied)[key] == (P("fsdp"), P("fsdp"))
  if name == "shampoo":
    assert spec.metrics == {"root_failures": P(), "root_residual": P()}
