"""What every registry entry must do beyond its numbers (issue 12's acceptance), as one check.

`check_contract(tx, params, grads_seq, tmp_path)`: `init` under `jax.eval_shape` gives the state's
shapes and dtypes; jitted updates keep the parameters' shapes and dtypes and are finite; the
state keeps its shapes and dtypes; the state survives an orbax StandardSave/StandardRestore
round trip, and the next update from the restored state equals the one from the original.
"""

import chex
import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp

# A scalar, a vector, matrices and a 3-D tensor, in float32 and bfloat16.
CONTRACT_SHAPES = {"scale": (), "bias": (8,), "w": (8, 12), "w_tall": (20, 6),
                   "stack": (3, 6, 10), "w_bf16": (10, 8)}


def contract_tree(seed, scale=1.0):
  keys = jax.random.split(jax.random.key(seed), len(CONTRACT_SHAPES))
  return {name: (scale * jax.random.normal(k, shape)).astype(
      jnp.bfloat16 if name.endswith("bf16") else jnp.float32)
          for k, (name, shape) in zip(keys, CONTRACT_SHAPES.items())}


def orbax_round_trip(state, directory):
  """`state` saved with StandardSave and restored with StandardRestore into its own structure."""
  with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as ckptr:
    ckptr.save(directory, args=ocp.args.StandardSave(state))
    return ckptr.restore(directory, args=ocp.args.StandardRestore(state))


def check_contract(tx, params, grads_seq, tmp_path):
  abstract = jax.eval_shape(tx.init, jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params))
  state = tx.init(params)
  chex.assert_trees_all_equal_shapes_and_dtypes(abstract, state)
  step = jax.jit(tx.update)
  for grads in grads_seq[:-1]:
    updates, state = step(grads, state, params)
    chex.assert_trees_all_equal_shapes_and_dtypes(updates, params)
    chex.assert_tree_all_finite(updates)
    params = optax.apply_updates(params, updates)
  chex.assert_trees_all_equal_shapes_and_dtypes(state, abstract)
  restored = orbax_round_trip(state, tmp_path / "state")
  chex.assert_trees_all_equal_structs(restored, state)
  chex.assert_trees_all_equal(restored, state)
  after, _ = step(grads_seq[-1], state, params)
  after_restored, _ = step(grads_seq[-1], restored, params)
  chex.assert_trees_all_equal(after_restored, after)
  assert any(bool(jnp.any(u != 0)) for u in jax.tree.leaves(after))
