"""experiments/parallel/sharding.py: the (data, fsdp) mesh, the ZeRO-3 parameter rule, state and
batch
shardings, and optimizers/owner.py's owner-based map, on 8 fake CPU devices."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import optimizers
from experiments.parallel import sharding
from optimizers import owner
from optimizers import quantized


def _cfg(**kw):
  return ml_collections.ConfigDict(kw)


@pytest.mark.parametrize("cfg, shape", [
    (dict(data=-1), (8, 1)),  # a config with `data` only, as before
    (dict(data=8, fsdp=1), (8, 1)),
    (dict(data=2, fsdp=4), (2, 4)),
    (dict(data=1, fsdp=-1), (1, 8)),
    (dict(data=-1, fsdp=2), (4, 2)),
    (dict(data=2, fsdp=2), (2, 2)),  # fewer than all devices
])
def test_make_mesh_sizes(cfg, shape):
  mesh = sharding.make_mesh(_cfg(**cfg))
  assert mesh.axis_names == ("data", "fsdp")
  assert (mesh.shape["data"], mesh.shape["fsdp"]) == shape
  assert mesh.devices.size == shape[0] * shape[1]


@pytest.mark.parametrize("cfg", [dict(data=-1, fsdp=-1), dict(data=3, fsdp=-1),
                                 dict(data=4, fsdp=4), dict(data=0)])
def test_make_mesh_rejects_impossible_sizes(cfg):
  with pytest.raises(ValueError, match="mesh"):
    sharding.make_mesh(_cfg(**cfg))


def test_make_mesh_over_given_devices():
  devices = jax.devices()[4:]
  mesh = sharding.make_mesh(_cfg(data=1, fsdp=-1), devices)
  assert list(mesh.devices.ravel()) == devices


def test_param_rule_first_divisible_dimension_and_unsplit_list():
  params = {"a": jnp.zeros((16, 3)), "b": jnp.zeros((3, 24)), "c": jnp.zeros((5, 7)),
            "d": jnp.zeros(()), "e": jnp.zeros((8, 8))}
  mesh = sharding.make_mesh(_cfg(data=1, fsdp=8))
  shardings, unsplit = sharding.param_shardings(mesh, params)
  specs = {k: s.spec for k, s in shardings.items()}
  assert specs == {"a": P("fsdp"), "b": P(None, "fsdp"), "c": P(), "d": P(), "e": P("fsdp")}
  assert unsplit == ["c", "d"]
  # Without an fsdp axis nothing is split and nothing is reported.
  shardings, unsplit = sharding.param_shardings(sharding.make_mesh(_cfg(data=8)), params)
  assert all(s.spec == P() for s in shardings.values()) and unsplit == []


def test_batch_split_over_both_axes():
  mesh = sharding.make_mesh(_cfg(data=2, fsdp=4))
  sh = sharding.batch_sharding(mesh, 3, batch_axis=1)
  assert sh.spec == P(None, ("data", "fsdp"), None)
  x = jax.device_put(np.zeros((2, 16, 5), np.float32), sh)
  assert x.addressable_shards[0].data.shape == (2, 2, 5)


def test_state_shardings_of_train_state_8bit_codes_follow_parameter():
  """8-bit codes and scales split with their parameter: 2/N bytes per parameter per device."""
  tx = optimizers.create("adamw_8bit", learning_rate=1e-3, block_size=64,
                         min_quantized_size=1024)
  params = {"w": jnp.zeros((64, 256)), "small": jnp.zeros((8, 8)), "odd": jnp.zeros((5, 7))}
  abstract = jax.eval_shape(lambda p: {"params": p, "opt_state": tx.init(p),
                                       "step": jnp.zeros([], jnp.int32)}, params)
  mesh = sharding.make_mesh(_cfg(data=1, fsdp=8))
  sh = sharding.state_shardings(mesh, abstract)
  mu = sh["opt_state"][0].mu
  assert isinstance(mu["w"], quantized.QuantizedArray)
  assert mu["w"].codes.spec == P("fsdp") and mu["w"].scales.spec == P("fsdp")
  assert mu["small"].spec == P("fsdp") and mu["odd"].spec == P()
  assert sh["step"].spec == P() and sh["opt_state"][0].count.spec == P()
  state = jax.jit(lambda p: tx.init(p), out_shardings=sh["opt_state"])(params)
  q = state[0].mu["w"]
  per_device = (q.codes.addressable_shards[0].data.nbytes
                + q.scales.addressable_shards[0].data.nbytes)
  assert per_device == (64 * 256 + 64 * 256 // 64 * 4) // 8  # (1 + 4/64) bytes / 8 per moment


def _orthogonalize_flops(stack, n):
  from optimizers import newton_schulz
  mesh = sharding.make_mesh(_cfg(data=1, fsdp=n), jax.devices()[:n])
  f = lambda s: owner.apply_on_owners(newton_schulz.orthogonalize, s)
  with jax.set_mesh(mesh):
    sh = NamedSharding(mesh, P(None, "fsdp"))
    compiled = jax.jit(f, in_shardings=sh, out_shardings=sh).lower(stack).compile()
    out = jax.jit(f, in_shardings=sh, out_shardings=sh)(stack)
  return compiled.cost_analysis()["flops"], out


def test_apply_on_owners_without_mesh_is_the_plain_call():
  x = jax.random.normal(jax.random.key(0), (3, 4, 4))
  chex.assert_trees_all_equal(owner.apply_on_owners(lambda s: 2 * s, x), 2 * x)
  assert owner.num_owners() == 1


def test_apply_on_owners_pads_uneven_stacks_and_keeps_structure():
  mesh = sharding.make_mesh(_cfg(data=2, fsdp=4))
  a = jax.random.normal(jax.random.key(1), (5, 3, 3))
  b = jax.random.normal(jax.random.key(2), (11, 2))
  fn = lambda pair: [(x * 2, x.sum(axis=-1)) for x in pair]

  @jax.jit
  def run(a, b):
    assert owner.num_owners() == 8
    return owner.apply_on_owners(fn, [a, b])

  with jax.set_mesh(mesh):
    out = run(a, b)
  chex.assert_trees_all_close(out, fn([a, b]), rtol=0, atol=0)
