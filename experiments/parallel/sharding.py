"""Device mesh and shardings for the train step: data, ZeRO-3 (fsdp), tensor (model) and
pipeline (stage) parallelism on one mesh.

Everything the loop needs about devices goes through here. The mesh has the axes `data` and
`fsdp`, plus `model` and `stage` when their size is above 1 (a mesh without them is exactly
the old (data, fsdp) mesh). Batches are split over data and fsdp; model and stage devices of
one (data, fsdp) coordinate see the same rows.

  Rule (parameters): the model declares each parameter's logical axes (`models/gpt.py`,
  `logical_axes`); `LOGICAL_RULES` maps them to mesh axes (heads, mlp and vocab -> model:
  Megatron's column- and row-parallel matrices; layers -> stage: a pipeline stage holds its
  layers only; vocab -> stage too). A dimension the mapped axis size does not divide stays
  whole. Then the ZeRO-3 rule splits the FIRST remaining dimension that the fsdp size divides
  over `fsdp`; a
  parameter with no such dimension (scalars, odd shapes) stays replicated over fsdp and is
  listed by `param_shardings` so the trainer logs it once.

The leading dimension is preferred because a row-major parameter split along it is a set of
contiguous chunks: flattened views of it (8-bit AdamW's block-wise codes, Muon's matrix stacks
with the layer axis first) split the same way without moving data. Optimizer states follow
their parameters or declare their own layout (`optimizers.partition`); stacks of blocks
(Shampoo's factors) split over fsdp, model and stage together.

Activations: the model constrains them by logical names (`flax.core.spmd` rules, set by
`context(mesh)` from `LOGICAL_RULES`), so that under a model axis XLA keeps attention heads and
MLP units split and inserts Megatron's collectives (an all-reduce after each row-parallel
projection, in the forward and the backward pass).

The matrix optimizers (Muon, Shampoo, SOAP) spread their whole-matrix work over every device of
the mesh in context (`optimizers.owner`): trace and run the jitted step inside
`with context(mesh):` (or `jax.set_mesh(mesh)`). Without it they are still correct, with no work
split.

References:
  Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training Trillion Parameter
  Models", SC 2020, arXiv 1910.02054.
  Shoeybi et al., "Megatron-LM: Training Multi-Billion Parameter Language Models Using Model
  Parallelism", 2019, arXiv 1909.08053.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterator, Mapping, Sequence

from flax.core import spmd
import jax
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from optimizers import partition
from optimizers import routing

DATA = "data"
FSDP = "fsdp"
MODEL = "model"
STAGE = "stage"
AXES = (DATA, FSDP, MODEL, STAGE)
BATCH_AXES = (DATA, FSDP)  # batch rows are split over these
STATE_AXES = (FSDP, MODEL, STAGE)  # optimizer-state stacks split over these
# Logical axis -> mesh axis (or axes). Logical names not listed (embed, seq, batch) are never
# split by them: the residual stream stays whole on every model device. The vocabulary (the
# embedding and the head, outside the pipeline) also splits over `stage`, so that every
# parameter but the final norm's scale falls as 1/stage.
LOGICAL_RULES = (("heads", MODEL), ("mlp", MODEL), ("vocab", (MODEL, STAGE)), ("layers", STAGE))

LogicalAxesFn = Callable[[Any], Any]  # params -> a tuple of logical names per parameter


def mesh_shape(mesh_config: Any, num_devices: int) -> dict[str, int]:
  """{axis: size} from the config; -1 (at most one axis) takes the remaining devices.

  A config without `fsdp`, `model` or `stage` means 1 there. `model` and `stage` appear only
  when above 1.
  """
  sizes = {a: int(getattr(mesh_config, a, 1)) for a in AXES}
  text = lambda: " x ".join(f"{a}={s}" for a, s in sizes.items())
  if list(sizes.values()).count(-1) > 1:
    raise ValueError(f"mesh: at most one axis may be -1, got {text()}")
  if -1 in sizes.values():
    known = math.prod(s for s in sizes.values() if s != -1)
    if known < 1 or num_devices % known:
      divisors = [d for d in range(1, num_devices + 1) if num_devices % d == 0]
      raise ValueError(
          f"mesh: {_devices(num_devices)} {'does' if num_devices == 1 else 'do'} not split into "
          f"{text()}: the sizes other than -1 must multiply to a divisor of {num_devices} "
          f"({', '.join(map(str, divisors))}); {MORE_DEVICES}")
    sizes[next(a for a, s in sizes.items() if s == -1)] = num_devices // known
  if min(sizes.values()) < 1 or math.prod(sizes.values()) > num_devices:
    raise ValueError(
        f"mesh: {text()} needs {math.prod(sizes.values())} devices but "
        f"{_devices(num_devices)} {'is' if num_devices == 1 else 'are'} available: the sizes "
        f"must be >= 1 and multiply to at most {num_devices} (one axis may be -1: the remaining "
        f"devices); {MORE_DEVICES}")
  return {a: s for a, s in sizes.items() if a in BATCH_AXES or s > 1}


MORE_DEVICES = ("for more devices on CPU set XLA_FLAGS=--xla_force_host_platform_device_count=N "
                "(N devices in one process) or run N processes with scripts/launch_local.py "
                "(see the README)")


def _devices(n: int) -> str:
  return "1 device" if n == 1 else f"{n} devices"


def make_mesh(mesh_config: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The mesh over `devices` (default: every process's devices), axes as `mesh_shape`.

  Axes are `Auto` (the compiler propagates shardings between the jitted step's in/out
  shardings), as the step is jitted with explicit in/out shardings.
  """
  devices = list(devices if devices is not None else jax.devices())
  sizes = mesh_shape(mesh_config, len(devices))
  shape, names = tuple(sizes.values()), tuple(sizes)
  auto = (jax.sharding.AxisType.Auto,) * len(names)
  if devices == list(jax.devices()) and math.prod(shape) == len(devices):
    return jax.make_mesh(shape, names, axis_types=auto)
  return Mesh(np.array(devices[:math.prod(shape)]).reshape(shape), names, axis_types=auto)


@contextlib.contextmanager
def context(mesh: Mesh) -> Iterator[None]:
  """The mesh and the activation rules a train step is traced and run under."""
  with jax.set_mesh(mesh), spmd.logical_axis_rules(LOGICAL_RULES):
    yield


def axis_size(mesh: Mesh | jax.sharding.AbstractMesh | Mapping[str, int], axis: str) -> int:
  """The size of `axis` in a mesh, an abstract mesh or a {name: size} mapping (1 if absent)."""
  return int(dict(mesh if isinstance(mesh, Mapping) else mesh.shape).get(axis, 1))


def fsdp_size(mesh: Mesh) -> int:
  return axis_size(mesh, FSDP)


def batch_size_divisor(mesh: Mesh) -> int:
  """How many ways batch rows are split: data x fsdp."""
  return math.prod(axis_size(mesh, a) for a in BATCH_AXES)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _spec(dims: Sequence[Any]) -> P:
  dims = list(dims)
  while dims and dims[-1] is None:
    dims.pop()
  return P(*dims)


def logical_dims(names: Sequence[str | None], shape: Sequence[int],
                 sizes: Mapping[str, int]) -> list[str | None]:
  """Mesh axis per dimension from logical names (None where unmapped or not divisible)."""
  rules = dict(LOGICAL_RULES)
  out = []
  for name, d in zip(names, shape):
    rule = rules.get(name) or ()
    axes = tuple(a for a in ((rule,) if isinstance(rule, str) else rule) if sizes.get(a, 1) > 1)
    size = math.prod(sizes[a] for a in axes)
    out.append((axes[0] if len(axes) == 1 else axes) if axes and d % size == 0 else None)
  return out


def param_spec(shape: Sequence[int], size: int, base: Sequence[Any] = ()) -> P:
  """The module's rule: fsdp on the first dimension that `size` divides and `base` leaves whole.

  `base`: the mesh axes of the leading dimensions already taken (tensor / pipeline parallel).
  """
  dims = list(base) + [None] * (len(shape) - len(base))
  if size > 1:
    for axis, d in enumerate(shape):
      if dims[axis] is None and d % size == 0:
        dims[axis] = FSDP
        break
  return _spec(dims)


def param_specs(abstract_params: Any, sizes: Mapping[str, int] | int,
                logical_axes: LogicalAxesFn | None = None) -> tuple[Any, list[str]]:
  """A `PartitionSpec` per parameter, and the paths of those left replicated over fsdp.

  Args:
    abstract_params: the parameters or their shapes.
    sizes: the mesh's {axis: size} (an int: the fsdp size alone).
    logical_axes: `params -> logical names per parameter` (the model's); None: fsdp only.
  """
  sizes = {FSDP: sizes} if isinstance(sizes, int) else dict(sizes)
  size = sizes.get(FSDP, 1)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract_params)
  if logical_axes is None:
    names = [()] * len(leaves)
  else:
    names = treedef.flatten_up_to(logical_axes(abstract_params))
  specs = [param_spec(x.shape, size, logical_dims(n, x.shape, sizes))
           for (_, x), n in zip(leaves, names)]
  unsplit = [routing.path_str(p) for (p, _), s in zip(leaves, specs)
             if size > 1 and FSDP not in tuple(s)]
  return treedef.unflatten(specs), unsplit


def _named(mesh: Mesh, specs: Any) -> Any:
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda x: isinstance(x, P))


def param_shardings(mesh: Mesh, abstract_params: Any,
                    logical_axes: LogicalAxesFn | None = None) -> tuple[Any, list[str]]:
  """(a `NamedSharding` per parameter, paths of the parameters left replicated over fsdp)."""
  specs, unsplit = param_specs(abstract_params, dict(mesh.shape), logical_axes)
  return _named(mesh, specs), unsplit


def opt_state_shardings(mesh: Mesh, abstract_opt_state: Any, abstract_params: Any,
                        opt_spec_fn: Callable[..., Any] = partition.state_specs,
                        logical_axes: LogicalAxesFn | None = None) -> Any:
  """A `NamedSharding` for every optimizer-state leaf (see `optimizers.partition`).

  Args:
    mesh: the mesh.
    abstract_opt_state: `jax.eval_shape(tx.init, params)`.
    abstract_params: the parameters or their shapes.
    opt_spec_fn: `(abstract_state, abstract_params, param_specs, axis=, size=) -> specs`.
    logical_axes: as in `param_specs`.
  """
  specs, _ = param_specs(abstract_params, dict(mesh.shape), logical_axes)
  axes = tuple(a for a in STATE_AXES if axis_size(mesh, a) > 1)
  # One axis is named alone, so fsdp-only meshes keep their old specs (P("fsdp")).
  axis = axes[0] if len(axes) == 1 else (axes or FSDP)
  size = math.prod(axis_size(mesh, a) for a in axes)
  return _named(mesh, opt_spec_fn(abstract_opt_state, abstract_params, specs, axis=axis,
                                  size=size))


def state_shardings(mesh: Mesh, abstract_state: Any,
                    opt_spec_fn: Callable[..., Any] = partition.state_specs,
                    logical_axes: LogicalAxesFn | None = None) -> Any:
  """Shardings of the train state `{"params", "opt_state", ...}`; other entries replicated."""
  out = {k: jax.tree.map(lambda _: replicated(mesh), v) for k, v in abstract_state.items()}
  params = abstract_state["params"]
  out["params"] = param_shardings(mesh, params, logical_axes)[0]
  if "opt_state" in abstract_state:
    out["opt_state"] = opt_state_shardings(mesh, abstract_state["opt_state"], params,
                                           opt_spec_fn, logical_axes)
  return out


def batch_sharding(mesh: Mesh, ndim: int, batch_axis: int = 0) -> NamedSharding:
  """Batch rows split over data and fsdp (replicated over model and stage)."""
  spec: list[Any] = [None] * ndim
  spec[batch_axis] = tuple(a for a in BATCH_AXES if a in mesh.shape) or None
  return NamedSharding(mesh, P(*spec))


def device_batch(local_rows: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global array from this process's rows (every process passes its own slice)."""
  return jax.make_array_from_process_local_data(sharding, local_rows)
