"""Byte accounting against the pytrees' own sizes; host offload of optimizer states."""

import logging

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from experiments import memory


def _mesh():
  return Mesh(np.array(jax.devices()[:8]), ("data",))


def test_offload_falls_back_on_cpu_with_one_line(caplog):
  sh = {"m": NamedSharding(_mesh(), P("data")), "v": NamedSharding(_mesh(), P())}
  with caplog.at_level(logging.WARNING):
    out = memory.offload_shardings(sh)
  assert out == sh
  lines = [r.getMessage() for r in caplog.records if "Host offload" in r.getMessage()]
  assert len(lines) == 1 and "\n" not in lines[0] and "cpu" in lines[0]
  assert memory.host_offload_supported()[0] is False


def test_offloaded_states_round_trip_through_a_jitted_step():
  # The CPU backend does have pinned host memory; allow_cpu exercises the offloaded path.
  sh = NamedSharding(_mesh(), P("data"))
  tx = optax.adam(0.1)
  params = jax.device_put(jnp.arange(16.0), sh)
  placed = jax.tree.map(lambda x: sh if x.ndim else NamedSharding(_mesh(), P()),
                        tx.init(params))
  state_sh = memory.offload_shardings(placed, allow_cpu=True)
  assert {s.memory_kind for s in jax.tree.leaves(state_sh)} == {"pinned_host"}
  state = jax.device_put(tx.init(params), state_sh)
  dev_sh = memory.device_shardings(state_sh)

  def step(p, s):
    s = jax.device_put(s, dev_sh)
    u, s = tx.update(2 * p, s)
    return optax.apply_updates(p, u), jax.device_put(s, state_sh)

  p1, s1 = jax.jit(step, out_shardings=(sh, state_sh))(params, state)
  p_ref, s_ref = step(params, tx.init(params))
  chex.assert_trees_all_close(p1, p_ref)
  assert all(x.sharding.memory_kind == "pinned_host" for x in jax.tree.leaves(s1))
