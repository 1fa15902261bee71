"""A small multi-process program for tests/test_distributed.py, started by scripts/launch_local.py.

--config.mode=sum: a jitted weighted sum over a global array built from every process's rows;
prints `SUM <value>`, a pmap pmean over the local devices (`PMAP <value>`) and whether a value
that differs across processes is caught (`MISMATCH caught`).
--config.mode=preempt: steps in lock-step (a cross-process reduction each) until
`distributed.reached_preemption` says stop; prints `READY pid=<pid>` after step 1, then
`STOPPED step=<s> local_flag=<bool>`, and exits 128+15 when a SIGTERM stopped it.
"""

import signal
import sys
import time

from absl import app
import jax
from jax import lax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np

from experiments.parallel import distributed


def get_config():
  c = ml_collections.ConfigDict()
  c.mode = "sum"
  c.rows_per_device = 2
  c.max_steps = 2000
  c.sleep_s = 0.02
  c.distributed = distributed.default_config()
  return c


_CONFIG = None  # defined when run as a program, so importing this module defines no flag




def global_rows(num_devices: int, rows_per_device: int) -> np.ndarray:
  n = num_devices * rows_per_device
  return (np.arange(n * 3, dtype=np.float32).reshape(n, 3) % 7) - 3.0


def weighted_sum(rows_per_device: int) -> float:
  """Sum of w * x over the global array, from this process's rows only (any process count)."""
  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  sharding = jax.NamedSharding(mesh, jax.P("data"))
  full = global_rows(jax.device_count(), rows_per_device)
  local = np.split(full, jax.process_count())[jax.process_index()]
  x = jax.make_array_from_process_local_data(sharding, local)
  w = jnp.arange(full.size, dtype=jnp.float32).reshape(full.shape) / full.size
  total = jax.jit(lambda a: jnp.sum(a * w), out_shardings=jax.NamedSharding(mesh, jax.P()))(x)
  return float(total)


def main(argv):
  del argv
  config = _CONFIG.value  # pylint: disable=no-member
  distributed.initialize(config)
  if config.mode == "sum":
    print(f"SUM {weighted_sum(config.rows_per_device)!r}", flush=True)
    pmean = jax.pmap(lambda v: lax.pmean(v, "i"), axis_name="i", out_axes=None)
    local = jnp.arange(jax.local_device_count(), dtype=jnp.float32) + (
        jax.process_index() * jax.local_device_count())
    print(f"PMAP {float(pmean(local))!r}", flush=True)
    distributed.assert_same_across_processes("corpus-sha-abc", "corpus hash")
    try:
      distributed.assert_same_across_processes(f"corpus-{jax.process_index()}", "corpus hash")
    except distributed.ProcessMismatchError as e:
      print(f"MISMATCH caught: {e}", flush=True)
    return

  received = []
  signal.signal(signal.SIGTERM, lambda s, f: received.append(s))
  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  x = jax.make_array_from_process_local_data(
      jax.NamedSharding(mesh, jax.P("data")), np.ones((jax.local_device_count(),), np.float32))
  reduce = jax.jit(jnp.sum, out_shardings=jax.NamedSharding(mesh, jax.P()))
  every = config.distributed.preemption_check_every
  check_s = []
  for step in range(1, config.max_steps + 1):
    float(reduce(x))  # lock-step work, as a train step would be
    t0 = time.perf_counter()
    stop = distributed.reached_preemption(step, bool(received), every)
    check_s.append(time.perf_counter() - t0)
    if step == 1:
      print(f"READY pid={__import__('os').getpid()}", flush=True)
    if stop:
      print(f"STOPPED step={step} local_flag={bool(received)} "
            f"check_ms={1e3 * float(np.mean(check_s)):.3f}", flush=True)
      sys.exit(128 + signal.SIGTERM)
    time.sleep(config.sleep_s)
  print(f"FINISHED without a stop check_ms={1e3 * float(np.mean(check_s)):.3f}", flush=True)


if __name__ == "__main__":
  _CONFIG = config_flags.DEFINE_config_dict("config", get_config())
  app.run(main)
