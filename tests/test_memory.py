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

from experiments.parallel import memory
from experiments.parallel import sharding as sharding_lib


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


# ---------------------------------------------------------------------------------------------
# The report's accounting against real pytrees.

from experiments import configs_util  # noqa: E402
from models import gpt  # noqa: E402
import optimizers  # noqa: E402
from scripts import memory_report  # noqa: E402

SMALL = gpt.GPTConfig(vocab_size=64, num_layers=2, width=32, num_heads=4, max_seq_len=16)


def _real(cfg, name, hparams):
  params = gpt.init_params(cfg, jax.random.key(0))
  return params, optimizers.create(name, **hparams).init(params)


def test_report_matches_the_real_pytrees_and_their_shards():
  hp = memory_report.optimizer_hparams("adamw")
  r = memory_report.measure(SMALL, "adamw", hp, mesh_shape={"fsdp": 8}, batch_size=8,
                            policies=("none", "block"), compile_max_params=0)
  params, state = _real(SMALL, "adamw", hp)
  assert r["params"] == gpt.num_params(params) == sum(x.size for x in jax.tree.leaves(params))
  assert r["bytes_total"]["params"] == sum(x.nbytes for x in jax.tree.leaves(params))
  assert r["bytes_total"]["opt_state"] == sum(x.nbytes for x in jax.tree.leaves(state))
  # Per device: place the real trees on an 8-device fsdp mesh and add one device's shards.
  mesh = Mesh(np.array(jax.devices()[:8]).reshape(1, 8), ("data", "fsdp"))
  for tree, key in ((params, "params"), (state, "opt_state")):
    placed = jax.device_put(tree, sharding_lib.state_shardings(
        mesh, {"params": params, "opt_state": state})[key])
    dev0 = sum(s.data.nbytes for x in jax.tree.leaves(placed) for s in x.addressable_shards
               if s.device == jax.devices()[0])
    assert r["bytes_per_device"][key] == dev0 < r["bytes_total"][key] / 4
  n = r["params"]
  assert r["model_state_bytes"] == 4 * n + 4 * n + sum(x.nbytes for x in jax.tree.leaves(state))
  a = r["activations"]
  assert a["block"]["saved_device_bytes_per_device"] < a["none"]["saved_device_bytes_per_device"]


def test_mixed_precision_adam_is_16_bytes_per_parameter():
  hp = memory_report.optimizer_hparams("adamw")
  r = memory_report.measure(SMALL, "adamw", hp, precision="mixed", policies=(),
                            compile_max_params=0)
  n = r["params"]
  assert r["notes_bytes"] == {"params": 2 * n, "grads": 2 * n, "master": 4 * n,
                              "opt_state": 8 * n + 4 + 8}  # + step count, nonfinite counters
  assert abs(r["model_state_bytes_per_param"] - 16) < 1e-3


def test_optimizer_state_bytes_per_parameter_on_the_cpu_speedrun():
  config = configs_util.load("configs/speedrun_cpu.py")
  cfg = memory_report.model_config(config, None, "fp32")
  per_param = {}
  for name in ("adamw", "adamw_8bit", "muon"):
    hp = memory_report.optimizer_hparams(name, config)
    r = memory_report.measure(cfg, name, hp, policies=(), compile_max_params=0)
    per_param[name] = r["opt_state_bytes_per_param"]
    _, state = _real(cfg, name, hp)
    assert r["bytes_total"]["opt_state"] == sum(x.nbytes for x in jax.tree.leaves(state))
  assert abs(per_param["adamw"] - 8) < 1e-3
  assert per_param["adamw_8bit"] <= 2.1
  assert 4 <= per_param["muon"] < 8  # momentum only on matrices; Adam's two on the rest


def test_compiled_step_memory_analysis_counts_the_state_and_times_rounds():
  hp = memory_report.optimizer_hparams("adamw")
  r = memory_report.measure(SMALL, "adamw", hp, batch_size=8, policies=("none",), time_steps=2,
                            time_repeats=3)
  a = r["activations"]["none"]
  assert len(a["step_s_all"]) == 3 and a["step_s"] == sorted(a["step_s_all"])[1] > 0
  assert a["time_ratio_to_none"] == 1.0
  xla = r["activations"]["none"]["xla"]
  state = r["bytes_total"]["params"] + r["bytes_total"]["opt_state"]
  batch = 8 * 17 * 4
  assert xla["argument_bytes"] == state + batch
  assert xla["temp_bytes"] > 0

