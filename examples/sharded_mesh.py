"""A sharded training run: jit + NamedSharding on a (data, fsdp, model) mesh of 8 CPU devices.

Shows the project's sharding layer (`experiments/parallel/sharding.py`) in a plain loop, as the
trainer uses it:

  * a mesh `data=2 x fsdp=2 x model=2` over 8 fake CPU devices
    (`--xla_force_host_platform_device_count=8`, set below before JAX is imported);
  * each parameter's `NamedSharding` from the model's logical axes (`models.gpt.logical_axes`:
    attention heads and MLP units split over `model`, Megatron style) plus the ZeRO-3 rule
    (the first remaining dimension split over `fsdp`), and the optimizer state's shardings
    following the parameters' (`optimizers.partition`);
  * sharded initialization (`jax.eval_shape`, then `jit(init, out_shardings=...)`: no full copy
    on one device), batches split over data x fsdp, and one jitted step with explicit in/out
    shardings and buffer donation, traced and run under `sharding.context(mesh)`.

It checks that the shardings are what the rules say, that the loss falls, and that the sharded
run's losses equal a single-device run's (sharding changes where the arithmetic happens, not
the result, up to float32 reduction order).

Run from the repository root (under a minute on a CPU):

  PYTHONPATH=. python examples/sharded_mesh.py --steps=30
"""

import os

# Before JAX is imported: 8 CPU devices in this process.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import sys  # noqa: E402
import types  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import optimizers  # noqa: E402
from experiments.parallel import sharding  # noqa: E402
from models import gpt  # noqa: E402

CFG = gpt.GPTConfig(vocab_size=64, num_layers=2, width=64, num_heads=4, max_seq_len=32)
BATCH = 8


def batches(steps):
  """Rows of a repeating pattern with random phases: B x (T + 1) tokens per step."""
  rng = np.random.default_rng(0)
  pattern = rng.integers(0, CFG.vocab_size, size=48)
  for _ in range(steps):
    starts = rng.integers(0, len(pattern), size=BATCH)
    idx = (starts[:, None] + np.arange(CFG.max_seq_len + 1)[None]) % len(pattern)
    yield pattern[idx].astype(np.int32)


def train(steps, mesh=None):
  """Losses of `steps` AdamW steps; sharded over `mesh` when given, else on one device."""
  tx = optimizers.create("adamw", learning_rate=3e-3, b2=0.95, weight_decay=0.0)
  init = lambda: gpt.init_params(CFG, jax.random.key(0))

  def step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(lambda p: gpt.loss_fn(CFG, p, batch))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  if mesh is None:
    params = init()
    opt_state = tx.init(params)
    step_fn, put = jax.jit(step), lambda b: b
  else:
    abstract_params = jax.eval_shape(init)
    p_shard, _ = sharding.param_shardings(mesh, abstract_params, gpt.logical_axes)
    o_shard = sharding.opt_state_shardings(mesh, jax.eval_shape(tx.init, abstract_params),
                                           abstract_params, logical_axes=gpt.logical_axes)
    b_shard = sharding.batch_sharding(mesh, ndim=2)
    params = jax.jit(init, out_shardings=p_shard)()
    opt_state = jax.jit(tx.init, out_shardings=o_shard)(params)
    step_fn = jax.jit(step, in_shardings=(p_shard, o_shard, b_shard),
                      out_shardings=(p_shard, o_shard, sharding.replicated(mesh)),
                      donate_argnums=(0, 1))
    put = lambda b: jax.device_put(b, b_shard)
    check_layout(params, opt_state, put(next(batches(1))))

  losses = []
  for batch in batches(steps):
    params, opt_state, loss = step_fn(params, opt_state, put(batch))
    losses.append(float(loss))
  return losses


def check_layout(params, opt_state, batch):
  q = params["blocks"][0]["attn"]["q"]["kernel"]  # (width, heads x head_dim)
  print(f"q kernel {q.shape}: {q.sharding.spec}; per device {q.addressable_shards[0].data.shape}")
  print(f"batch {batch.shape}: {batch.sharding.spec}; per device "
        f"{batch.addressable_shards[0].data.shape}")
  # Heads split over `model` (column parallel), the first remaining dimension over `fsdp`.
  assert q.sharding.spec == P("fsdp", "model"), q.sharding.spec
  assert q.addressable_shards[0].data.shape == (CFG.width // 2, CFG.width // 2)
  # Rows split over data x fsdp (4 ways), replicated over model.
  assert batch.addressable_shards[0].data.shape == (BATCH // 4, CFG.max_seq_len + 1)
  # AdamW's moments are laid out as their parameters.
  mu = jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
  mu = next(s for s in mu if isinstance(s, optax.ScaleByAdamState)).mu
  mu_q = mu["blocks"][0]["attn"]["q"]["kernel"]
  assert mu_q.sharding.spec == q.sharding.spec, mu_q.sharding.spec
  print(f"adam mu of q kernel: {mu_q.sharding.spec}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=30)
  args = parser.parse_args()
  assert jax.device_count() == 8, jax.devices()

  mesh = sharding.make_mesh(types.SimpleNamespace(data=2, fsdp=2, model=2))
  print(f"mesh {dict(mesh.shape)} over {jax.device_count()} {jax.devices()[0].platform} devices")
  with sharding.context(mesh):
    sharded = train(args.steps, mesh)
  single = train(args.steps)
  for t in range(0, args.steps, max(1, args.steps // 5)):
    print(f"step {t:3d}  loss sharded {sharded[t]:.5f}  single device {single[t]:.5f}")
  print(f"loss {sharded[0]:.4f} -> {sharded[-1]:.4f}")
  gap = max(abs(a - b) / abs(b) for a, b in zip(sharded, single))
  if not (sharded[-1] < 0.8 * sharded[0] and gap < 1e-4):
    print(f"FAILED: final loss {sharded[-1]:.4f}, largest relative gap to one device {gap:.2g}")
    sys.exit(1)
  print(f"OK: sharded on 8 devices, loss fell, same losses as one device (gap {gap:.1g})")


if __name__ == "__main__":
  main()
