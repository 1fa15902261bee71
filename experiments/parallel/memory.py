"""Where the bytes of a train step go, and the switches that move them.

The accounting follows ZeRO (Rajbhandari et al. 2020, arXiv 1910.02054, section 3.1): mixed-
precision Adam keeps 2 bytes of half-precision parameters, 2 of gradients and 12 of float32
master weights and moments per parameter, 16 in all. Measured figures come from the pytrees
themselves (their leaves' bytes, split over devices by their shardings), from what autodiff saves
for the backward pass, and from XLA's memory analysis of the compiled step.

Host offload of optimizer states is ZeRO-Offload (Ren et al. 2021, arXiv 2101.06840): the states
live in pinned host memory and visit device memory inside the step.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from absl import logging
import jax
from jax.extend import core as jex_core
import jax.numpy as jnp

# config.precision -> the model's compute dtype. Parameters, gradients and optimizer states stay
# float32 in both (the master copy); logits, log-softmax and attention softmax run in float32.
PRECISIONS = {"fp32": "float32", "bf16": "bfloat16"}


def model_dtype(precision: str) -> str:
  """The `model.dtype` for `config.precision` ("fp32" or "bf16")."""
  try:
    return PRECISIONS[precision]
  except KeyError:
    raise ValueError(f"precision={precision!r}; choose from {sorted(PRECISIONS)}") from None


# ---------------------------------------------------------------------------------------------
# Bytes of pytrees.

def leaf_bytes(x: Any) -> int:
  return int(math.prod(x.shape)) * jnp.dtype(x.dtype).itemsize


def tree_bytes(tree: Any) -> int:
  """Bytes of every array (or ShapeDtypeStruct) in `tree`, all devices together."""
  return sum(leaf_bytes(x) for x in jax.tree.leaves(tree))


def tree_bytes_per_device(tree: Any, shardings: Any) -> int:
  """Bytes one device holds of `tree` placed with `shardings` (a matching tree of shardings)."""
  return sum(int(math.prod(s.shard_shape(x.shape))) * jnp.dtype(x.dtype).itemsize
             for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)))


def saved_activation_bytes(fn: Callable, *args) -> dict[str, int]:
  """Bytes autodiff keeps from `fn(*args)`'s forward pass for its backward pass.

  The residuals of `jax.vjp`, without those that are `args` themselves (the parameters):
  {"device": ..., "host": ...}, "host" for residuals a remat policy offloads. Independent of
  XLA's scheduling, so it shows what a remat policy asks for.
  """
  closed = jax.make_jaxpr(lambda *a: jax.vjp(fn, *a)[1])(*args)
  inputs = set(closed.jaxpr.invars)
  seen, out = set(), {"device": 0, "host": 0}
  for v in closed.jaxpr.outvars:
    if isinstance(v, jex_core.Literal) or v in inputs or v in seen:
      continue
    seen.add(v)
    where = "host" if "host" in str(getattr(v.aval, "memory_space", "")).lower() else "device"
    out[where] += leaf_bytes(v.aval)
  return out


def compiled_memory(compiled) -> dict[str, int]:
  """Per-device figures of a compiled computation's memory analysis (XLA's buffer assignment)."""
  m = compiled.memory_analysis()
  names = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
           "temp_size_in_bytes", "host_temp_size_in_bytes")
  return {n.replace("_size_in_bytes", "_bytes"): int(getattr(m, n, 0) or 0) for n in names}


# ---------------------------------------------------------------------------------------------
# Host offload.

HOST = "pinned_host"


def host_offload_supported(device: jax.Device | None = None) -> tuple[bool, str]:
  """(supported, reason): pinned host memory distinct from device memory."""
  device = device or jax.devices()[0]
  kinds = {m.kind for m in device.addressable_memories()}
  if HOST not in kinds:
    return False, f"the {device.platform} backend has no {HOST} memory"
  if device.platform == "cpu":
    return False, ("the cpu backend's device memory already is host memory, so offloading "
                   "saves nothing")
  return True, ""


def offload_shardings(shardings: Any, *, allow_cpu: bool = False) -> Any:
  """`shardings` with memory_kind="pinned_host" where the backend has separate host memory.

  Elsewhere (the CPU backend) returns `shardings` unchanged and logs one line saying why.
  `allow_cpu=True` offloads on CPU too (its pinned host memory works there; for tests).
  Inside the step, bring offloaded states in with `jax.device_put(x, device_shardings(sh))`
  and send the new ones back with `jax.device_put(x, sh)` (or by out_shardings).
  """
  leaves = jax.tree.leaves(shardings)
  if not leaves:
    return shardings
  ok, why = host_offload_supported(next(iter(leaves[0].device_set)))
  if not ok and not (allow_cpu and "cpu" in why):
    logging.warning("Host offload of optimizer states is off: %s; states stay in device memory.",
                    why)
    return shardings
  return jax.tree.map(lambda s: s.with_memory_kind(HOST), shardings)


def device_shardings(shardings: Any) -> Any:
  """`shardings` in device memory (the counterpart of `offload_shardings`)."""
  return jax.tree.map(lambda s: s.with_memory_kind("device"), shardings)
