"""Device mesh and shardings for the train step: ZeRO-3 over `fsdp`, data parallel over both.

Everything the loop needs about devices goes through here. The mesh has two axes, `data` and
`fsdp`. Batches are split over both. Parameters and every optimizer state are sharded over
`fsdp` and replicated over `data`:

  Rule (parameters): a parameter is split over `fsdp` along its FIRST dimension that the fsdp
  size divides; one with no such dimension (scalars, odd shapes) stays replicated and is
  listed by `param_shardings` so the trainer logs it once.

The leading dimension is preferred because a row-major parameter split along it is a set of
contiguous chunks: flattened views of it (8-bit AdamW's block-wise codes, Muon's matrix stacks
with the layer axis first) split the same way without moving data. Optimizer states follow
their parameters or declare their own layout (`optimizers.partition`).

The matrix optimizers (Muon, Shampoo, SOAP) spread their whole-matrix work over the devices of
the mesh in context (`optimizers.owner`): trace and run the jitted step inside
`with jax.set_mesh(mesh):`. Without it they are still correct, with no work split.

References:
  Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training Trillion Parameter
  Models", SC 2020, arXiv 1910.02054.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from optimizers import partition
from optimizers import routing

DATA = "data"
FSDP = "fsdp"
AXES = (DATA, FSDP)


def mesh_shape(mesh_config: Any, num_devices: int) -> tuple[int, int]:
  """(data, fsdp) sizes from the config; -1 (at most one of them) takes the remaining devices.

  A config without `fsdp` means fsdp = 1.
  """
  sizes = [int(mesh_config.data), int(getattr(mesh_config, FSDP, 1))]
  if sizes.count(-1) > 1:
    raise ValueError(f"mesh: at most one axis may be -1, got data={sizes[0]} fsdp={sizes[1]}")
  if -1 in sizes:
    known = math.prod(s for s in sizes if s != -1)
    if known < 1 or num_devices % known:
      raise ValueError(f"mesh: {num_devices} devices do not split into data={sizes[0]} "
                       f"fsdp={sizes[1]}")
    sizes[sizes.index(-1)] = num_devices // known
  if min(sizes) < 1 or math.prod(sizes) > num_devices:
    raise ValueError(f"mesh: data={sizes[0]} x fsdp={sizes[1]} but {num_devices} devices "
                     "are available")
  return sizes[0], sizes[1]


def make_mesh(mesh_config: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The (data, fsdp) mesh over `devices` (default: every process's devices).

  Axes are `Auto` (the compiler propagates shardings between the jitted step's in/out
  shardings), as the step is jitted with explicit in/out shardings.
  """
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(mesh_config, len(devices))
  auto = (jax.sharding.AxisType.Auto,) * 2
  if devices == list(jax.devices()) and math.prod(shape) == len(devices):
    return jax.make_mesh(shape, AXES, axis_types=auto)
  return Mesh(np.array(devices[:math.prod(shape)]).reshape(shape), AXES, axis_types=auto)


def fsdp_size(mesh: Mesh) -> int:
  return int(mesh.shape.get(FSDP, 1))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def param_spec(shape: Sequence[int], size: int) -> P:
  """The module's rule: split the first dimension that `size` divides (P() if none, size 1)."""
  if size > 1:
    for axis, d in enumerate(shape):
      if d % size == 0:
        return P(*([None] * axis + [FSDP]))
  return P()


def param_specs(abstract_params: Any, size: int) -> tuple[Any, list[str]]:
  """A `PartitionSpec` per parameter, and the paths of those that stay replicated."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract_params)
  specs = [param_spec(x.shape, size) for _, x in leaves]
  unsplit = [routing.path_str(p) for (p, _), s in zip(leaves, specs) if size > 1 and s == P()]
  return treedef.unflatten(specs), unsplit


def _named(mesh: Mesh, specs: Any) -> Any:
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda x: isinstance(x, P))


def param_shardings(mesh: Mesh, abstract_params: Any) -> tuple[Any, list[str]]:
  """(a `NamedSharding` per parameter, paths of the parameters left replicated)."""
  specs, unsplit = param_specs(abstract_params, fsdp_size(mesh))
  return _named(mesh, specs), unsplit


def opt_state_shardings(mesh: Mesh, abstract_opt_state: Any, abstract_params: Any,
                        opt_spec_fn: Callable[..., Any] = partition.state_specs) -> Any:
  """A `NamedSharding` for every optimizer-state leaf (see `optimizers.partition`).

  Args:
    mesh: the (data, fsdp) mesh.
    abstract_opt_state: `jax.eval_shape(tx.init, params)`.
    abstract_params: the parameters or their shapes.
    opt_spec_fn: `(abstract_state, abstract_params, param_specs, axis=, size=) -> specs`.
  """
  size = fsdp_size(mesh)
  specs, _ = param_specs(abstract_params, size)
  return _named(mesh, opt_spec_fn(abstract_opt_state, abstract_params, specs, axis=FSDP,
                                  size=size))


def state_shardings(mesh: Mesh, abstract_state: Any,
                    opt_spec_fn: Callable[..., Any] = partition.state_specs) -> Any:
  """Shardings of the train state `{"params", "opt_state", ...}`; other entries replicated."""
  out = {k: jax.tree.map(lambda _: replicated(mesh), v) for k, v in abstract_state.items()}
  params = abstract_state["params"]
  out["params"] = param_shardings(mesh, params)[0]
  if "opt_state" in abstract_state:
    out["opt_state"] = opt_state_shardings(mesh, abstract_state["opt_state"], params,
                                           opt_spec_fn)
  return out


def batch_sharding(mesh: Mesh, ndim: int, batch_axis: int = 0) -> NamedSharding:
  """Batch rows split over every mesh axis (data and fsdp)."""
  spec: list[Any] = [None] * ndim
  spec[batch_axis] = tuple(a for a in AXES if a in mesh.shape) or None
  return NamedSharding(mesh, P(*spec))


def device_batch(local_rows: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global array from this process's rows (every process passes its own slice)."""
  return jax.make_array_from_process_local_data(sharding, local_rows)
