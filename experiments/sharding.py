"""Device mesh and shardings for the train step.

Everything the loop needs about devices goes through here, so fully sharded (ZeRO-style) states
and multi-host training change these functions, not the loop. Today: parameters and optimizer
state replicated, batches split over the `data` axis.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

DATA = "data"


def make_mesh(mesh_config: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh over `devices` (default: all) on the `data` axis; size -1 means all of them."""
  devices = list(devices if devices is not None else jax.devices())
  size = int(mesh_config.data)
  if size == -1:
    size = len(devices)
  if size < 1 or size > len(devices):
    raise ValueError(f"mesh.data={mesh_config.data} but {len(devices)} devices are available")
  return Mesh(np.array(devices[:size]), (DATA,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def state_shardings(mesh: Mesh, abstract_state: Any) -> Any:
  """Shardings of the train state (params, optimizer state, counters): replicated for now."""
  return jax.tree.map(lambda _: replicated(mesh), abstract_state)


def batch_sharding(mesh: Mesh, ndim: int, batch_axis: int = 0) -> NamedSharding:
  spec = [None] * ndim
  spec[batch_axis] = DATA
  return NamedSharding(mesh, P(*spec))


def device_batch(local_rows: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global array from this process's rows (every process passes its own slice)."""
  return jax.make_array_from_process_local_data(sharding, local_rows)
