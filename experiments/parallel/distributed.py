"""Multi-process JAX: `jax.distributed` start-up, the main process, a synchronized stop, checks.

One process per host (or per GPU), all running the same program. `initialize(config)` must run
before any JAX computation. Launch recipes: `scripts/launch_local.py` (N processes on this
machine, CPU collectives through gloo), SLURM / Open MPI / TPU pods (`distributed.enabled=True`
and no coordinator: `jax.distributed.initialize()` reads the cluster's environment).

A preemption notice (SIGTERM) reaches one process, or several at different steps; stopping where
it arrived would leave the others waiting in a collective. `reached_preemption` all-gathers every
process's flag, so that all of them agree on the same step to checkpoint and stop.
"""

from __future__ import annotations

import hashlib

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from experiments.training import validate as validate_lib

FieldReference = ml_collections.FieldReference


def default_config() -> ml_collections.ConfigDict:
  """The `config.distributed` section, with every field a user may override."""
  c = ml_collections.ConfigDict()
  # True: call jax.distributed.initialize; with no coordinator_address the cluster is detected
  # (SLURM, TPU pods, Open MPI). Setting coordinator_address implies True.
  c.enabled = False
  c.coordinator_address = FieldReference(None, field_type=str)  # "host:port" of process 0
  c.num_processes = FieldReference(None, field_type=int)
  c.process_id = FieldReference(None, field_type=int)
  # Cross-process collectives of the CPU backend ("gloo" or "mpi"); unused on GPU/TPU.
  c.cpu_collectives = "gloo"
  c.initialization_timeout_s = 300
  # Steps between preemption checks: each check is one small all-gather across processes.
  c.preemption_check_every = 1
  return c


def initialize(config: ml_collections.ConfigDict) -> bool:
  """Starts `jax.distributed` as `config.distributed` asks; True when it did.

  Call it first, before any JAX computation. A config without a `distributed` section, or with
  `enabled=False` and no coordinator, runs as one process.

  Raises:
    validate.ConfigError: an explicit coordinator without `num_processes` or `process_id`.
  """
  d = config.get("distributed")
  if d is None or not (d.get("enabled") or d.get("coordinator_address")):
    return False
  explicit = {k: d.get(k) for k in ("coordinator_address", "num_processes", "process_id")}
  if explicit["coordinator_address"] and None in explicit.values():
    missing = [k for k, v in explicit.items() if v is None]
    raise validate_lib.ConfigError(
        f"distributed.coordinator_address={explicit['coordinator_address']!r} also needs "
        f"distributed.{' and distributed.'.join(missing)} (or leave all three unset to detect "
        "a SLURM, Open MPI or TPU-pod cluster)")
  if d.get("cpu_collectives"):
    # Without it the CPU client has no cross-process collectives and a multi-process jit fails.
    jax.config.update("jax_cpu_collectives_implementation", d.cpu_collectives)
  jax.distributed.initialize(
      coordinator_address=explicit["coordinator_address"],
      num_processes=explicit["num_processes"], process_id=explicit["process_id"],
      initialization_timeout=int(d.get("initialization_timeout_s", 300)))
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  _no_persistent_cache_for_cpu_collectives()
  return True


def _no_persistent_cache_for_cpu_collectives() -> None:
  """Turns JAX's persistent compilation cache off in a multi-process CPU run.

  On jax 0.12.1 a CPU executable with cross-process (gloo) collectives that is loaded from the
  cache, instead of compiled in this process, never completes its first collective: every
  process blocks in it, forever (seen here with `JAX_COMPILATION_CACHE_DIR` set and warm, on
  the first `device_get` of an evaluation). Compiling in-process costs seconds; a hang costs
  the job. GPU and TPU runs keep the cache. Must run before the first compilation, as
  `initialize` does.
  """
  if jax.process_count() > 1 and jax.default_backend() == "cpu":
    if jax.config.jax_compilation_cache_dir:
      logging.warning("Persistent compilation cache (%s) off for this multi-process CPU run: "
                      "executables with CPU collectives loaded from it hang",
                      jax.config.jax_compilation_cache_dir)
    jax.config.update("jax_enable_compilation_cache", False)


def is_main() -> bool:
  """True on process 0, the one that writes logs, metrics and run records."""
  return jax.process_index() == 0


def reached_preemption(step: int, local_flag: bool, every: int = 1) -> bool:
  """True on every process at the same step once any process has `local_flag` set.

  Every process must call it at every step (it is a collective every `every` steps); between
  checks it returns False, so a flag raised at step s is acted on at the next multiple of
  `every`. One process: returns `local_flag` at once, with no communication. Cost measured
  with 2 CPU processes x 4 devices (gloo, a loaded 2-core machine): ~3 ms per check, so ~0.3 ms
  per step with every=10; it blocks the host until every process has reached the check.
  """
  if jax.process_count() == 1:
    return bool(local_flag)
  if step % max(int(every), 1):
    return False
  flags = multihost_utils.process_allgather(np.asarray(local_flag, np.int32))
  return bool(np.any(flags))


class ProcessMismatchError(RuntimeError):
  """A value that must be identical on every process (the corpus hash, say) is not."""


def assert_same_across_processes(value, what: str) -> None:
  """Raises ProcessMismatchError unless `value` (str, bytes, number, array) is the same everywhere.

  Compares a SHA-256 digest of the value, so values of any size cost 32 bytes per process.
  """
  if jax.process_count() == 1:
    return
  if isinstance(value, (bytes, str)):
    raw = value.encode() if isinstance(value, str) else value
  else:
    arr = np.asarray(value)
    raw = repr((arr.dtype.str, arr.shape)).encode() + arr.tobytes()
  digest = np.frombuffer(hashlib.sha256(raw).digest(), np.uint8)
  digests = multihost_utils.process_allgather(digest)
  groups: dict[bytes, list[int]] = {}
  for i, d in enumerate(digests):
    groups.setdefault(d.tobytes(), []).append(i)
  if len(groups) > 1:
    raise ProcessMismatchError(
        f"{what} differs across processes (groups of process ids with equal values: "
        f"{sorted(groups.values())}); process {jax.process_index()} has {value!r}")
