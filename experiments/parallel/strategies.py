"""Parallel strategies: how the train state and its batches live on devices, and how one step
runs there. `config.parallelism` and `config.compression` choose one (`from_config`):

  Mesh                   "jit" (the default): one `jax.jit` over a `Mesh` with NamedShardings;
                         data, fsdp (ZeRO-3 states), tensor and pipeline axes.
  CompressedDataParallel "jit" with `compression.kind` set: the mesh's data axis averages
                         per-device gradients through a compressor with error feedback.
  Pmap                   "pmap": replicated data parallelism with `jax.pmap` (every device holds
                         the whole state, gradients meet in `lax.pmean`).

They share one interface, used by the training loop (experiments/training/loop.py) and nothing
else: `prepare(init_state, seed)` (abstract state and shardings), `compile(make_step)`, `init`,
`adopt` (a restored state into the strategy's layout), `place_batch`, `step`, `view` (the state
in the mesh layout, for evaluation and checkpoints), `evaluator`, `context`. Every strategy
compiles the same train step (experiments/training/step.py) and differs only in the
averaging arguments it passes it: so skipping, frozen inputs, fault injection and the
micro-batch sum are the same on each. Checkpoints are always written in the mesh layout, so a
run may change strategy on resume.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from experiments.parallel import compression as compression_lib
from experiments.parallel import memory as memory_lib
from experiments.parallel import sharding as sharding_lib
from experiments.parallel import pmap as pmap_lib



def compiler_options() -> dict[str, str] | None:
  """XLA options for compiling the train step on this backend (None: the defaults).

  On CPU, XLA 0.12 hands matrix products and also elementwise and reduction fusions to
  YNNPACK; its elementwise and reduction kernels ran slower here than XLA's own loop fusions
  on the speedrun's small activations (4,096 x 128): giving YNNPACK the matrix products only
  made the step 0.84x as long (scripts/bench_mfu.py), the same math up to float32 rounding.
  """
  if jax.default_backend() != "cpu":
    return None
  return {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


class Mesh:
  """`jax.jit` over a mesh: explicit in/out shardings, the state donated, batches global."""

  name = "jit"

  def __init__(self, config: ml_collections.ConfigDict, mesh, workload):
    self.config, self.mesh, self.workload = config, mesh, workload
    self.accum = int(config.train.grad_accum_steps)
    self.micro = int(config.train.batch_size) // self.accum
    self.process_count = jax.process_count()

  # -- layout --------------------------------------------------------------------------------

  def batch_devices(self) -> int:
    """How many devices a micro-batch's rows split over (data x fsdp)."""
    return sharding_lib.batch_size_divisor(self.mesh)

  extra_init: Callable[[Any], dict] | None = None  # more train-state entries, from the params

  def prepare(self, init_state: Callable[[int], dict], seed: int) -> None:
    """Abstract state (`self.abstract`, with shardings), batch and frozen-input placements."""
    mesh, w = self.mesh, self.workload
    self.init_state = init_state
    abstract = jax.eval_shape(init_state, seed)
    self.state_shardings = self._state_shardings(abstract)
    _, unsplit = sharding_lib.param_shardings(mesh, abstract["params"], w.logical_axes)
    if sharding_lib.fsdp_size(mesh) > 1 and unsplit:
      logging.info("fsdp=%d: %d parameter(s) have no dimension it divides and stay replicated: "
                   "%s", sharding_lib.fsdp_size(mesh), len(unsplit), ", ".join(unsplit))
    sh = self.state_shardings
    self.memory = {
        "params_bytes_per_device": memory_lib.tree_bytes_per_device(abstract["params"],
                                                                    sh["params"]),
        "opt_state_bytes_per_device": memory_lib.tree_bytes_per_device(abstract["opt_state"],
                                                                       sh["opt_state"])}
    self.abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, sh)
    example = w.train_batch(seed, 0, jax.process_index(), self.process_count)
    self.train_batch_shardings = jax.tree.map(
        lambda a: sharding_lib.batch_sharding(mesh, a.ndim + 1, batch_axis=1), example)
    self.eval_batch_shardings = jax.tree.map(
        lambda a: sharding_lib.batch_sharding(mesh, a.ndim), example)
    # Frozen inputs (LoRA's base) are sharded like parameters and passed undonated every step.
    self.frozen_shardings = tuple(sharding_lib.param_shardings(mesh, f)[0] for f in w.frozen)
    self.frozen = tuple(jax.device_put(f, s) for f, s in zip(w.frozen, self.frozen_shardings))

  def _state_shardings(self, abstract) -> dict:
    return sharding_lib.state_shardings(self.mesh, abstract,
                                        logical_axes=self.workload.logical_axes)

  def context(self):
    """The context mesh lets sharded optimizers give each device whole matrices (owner.py)."""
    return sharding_lib.context(self.mesh)

  # -- the step ------------------------------------------------------------------------------

  def step_kwargs(self) -> dict:
    """What this strategy passes `training.step.make_train_step` (how gradients average)."""
    return {}

  def compile(self, make_step: Callable[..., Callable]) -> None:
    """`make_step(**self.step_kwargs())` -> (state, batch, *frozen) -> (state, metrics)."""
    self._step = self._compiled(make_step)

  def _compiled(self, make_step: Callable[..., Callable]) -> Callable:
    return jax.jit(
        make_step(**self.step_kwargs()),
        in_shardings=(self.state_shardings, self.train_batch_shardings,
                      *self.frozen_shardings),
        out_shardings=(self.state_shardings, sharding_lib.replicated(self.mesh)),
        donate_argnums=(0,), compiler_options=compiler_options())

  def other_step(self, make_step: Callable[..., Callable]) -> Callable:
    """A second step compiled like `compile`'s (another optimizer schedule: a branched
    cooldown's, experiments/training/budgets.py), on the same state layout; `step` stays.
    Returns (state, batch) -> (state, metrics); it donates `state` as `step` does."""
    fn = self._compiled(make_step)
    return lambda state, batch: self._call(fn, state, batch)

  def init(self, seed: int) -> dict:
    return jax.jit(self.init_state, static_argnums=0, out_shardings=self.state_shardings)(seed)

  def adopt(self, state: dict) -> dict:
    """A state restored in the mesh layout, in this strategy's."""
    return state

  def view(self, state: dict) -> dict:
    """The state in the mesh layout (for evaluation and checkpoints)."""
    return state

  def place_batch(self, local_rows: Any) -> Any:
    """This process's rows [batch / processes, ...] -> the step's batch [accum, rows, ...]."""
    local = self._micro_batches(local_rows)
    return jax.tree.map(sharding_lib.device_batch, local, self.train_batch_shardings)

  def _micro_batches(self, local_rows: Any) -> Any:
    return jax.tree.map(
        lambda a: a.reshape(self.accum, self.micro // self.process_count, *a.shape[1:]),
        local_rows)

  def step(self, state: dict, batch: Any) -> tuple[dict, dict]:
    return self._call(self._step, state, batch)

  def _call(self, fn: Callable, state: dict, batch: Any) -> tuple[dict, dict]:
    return fn(state, batch, *self.frozen)

  # -- evaluation ----------------------------------------------------------------------------

  def evaluator(self, metric: Callable) -> Callable[[dict, Any], jax.Array]:
    """`metric(params, opt_state, batch, *frozen)` jitted on the mesh layout: (view, batch)."""
    sh = self.state_shardings
    fn = jax.jit(metric, in_shardings=(sh["params"], sh["opt_state"], self.eval_batch_shardings,
                                       *self.frozen_shardings),
                 out_shardings=sharding_lib.replicated(self.mesh))
    return lambda view, batch: fn(view["params"], view["opt_state"], batch, *self.frozen)

  def place_eval_batch(self, local_rows: Any) -> Any:
    return jax.tree.map(sharding_lib.device_batch, local_rows, self.eval_batch_shardings)


class CompressedDataParallel(Mesh):
  """Data parallelism whose gradients are compressed (with error feedback) before they are
  averaged over the mesh's `data` axis; one compressor state per device, in
  `state["compression"]`, sharded over `data` (experiments/parallel/compression.py)."""

  name = "compressed"

  def __init__(self, config, mesh, workload):
    super().__init__(config, mesh, workload)
    self.compressor = compression_lib.from_config(config.compression)
    n_data = mesh.shape[sharding_lib.DATA]
    self.extra_init = lambda params: {"compression": jax.tree.map(
        lambda x: jnp.broadcast_to(x, (n_data, *x.shape)), self.compressor.init(params))}

  def _state_shardings(self, abstract) -> dict:
    sh = super()._state_shardings(abstract)
    sh["compression"] = jax.tree.map(
        lambda _: NamedSharding(self.mesh, P(sharding_lib.DATA)), abstract["compression"])
    return sh

  def step_kwargs(self) -> dict:
    return {"compressed_grads": functools.partial(
        compression_lib.data_parallel_grads, self.compressor, mesh=self.mesh,
        axis_name=sharding_lib.DATA, batch_axis=1)}


class Pmap(Mesh):
  """Replicated data parallelism with `jax.pmap` over each process's local devices.

  `jax.pmap` is in maintenance mode (built on `jit` + `shard_map` since JAX 0.8); this strategy
  exists because users launch with it. The state carries a leading device axis; evaluation and
  checkpoints see the mesh layout (`view`), so a pmap run resumes under jit and back.
  """

  name = "pmap"

  def batch_devices(self) -> int:
    return jax.local_device_count() * self.process_count

  def context(self):
    return contextlib.nullcontext()  # pmap brings its own mapping (and refuses a context mesh)

  def prepare(self, init_state, seed) -> None:
    super().prepare(init_state, seed)
    self.replicated_frozen = pmap_lib.replicate(self.workload.frozen)

  def step_kwargs(self) -> dict:
    return {"axis_name": pmap_lib.AXIS}

  def _compiled(self, make_step) -> Callable:
    return pmap_lib.pmapped(make_step(**self.step_kwargs()))

  def init(self, seed: int) -> dict:
    return self.adopt(super().init(seed))

  def adopt(self, state: dict) -> dict:
    return pmap_lib.replicate(state)

  def view(self, state: dict) -> dict:
    return jax.device_put(pmap_lib.unreplicate(state), self.state_shardings)

  def place_batch(self, local_rows: Any) -> Any:
    return jax.tree.map(pmap_lib.shard_batch, self._micro_batches(local_rows))

  def _call(self, fn, state, batch):
    return fn(state, batch, *self.replicated_frozen)


STRATEGIES = {"jit": Mesh, "pmap": Pmap}


def from_config(config: ml_collections.ConfigDict, mesh, workload) -> Mesh:
  """The strategy `config.parallelism` (and `config.compression`) ask for."""
  if compression_lib.is_active(config.get("compression")):
    return CompressedDataParallel(config, mesh, workload)
  return STRATEGIES[config.get("parallelism", "jit")](config, mesh, workload)


