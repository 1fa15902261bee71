r"""Train-step speed for a config: median step time and tokens/s after warm-up, as a table.

  .venv/bin/python -m scripts.bench_train_step --config=configs/speedrun_cpu.py
  .venv/bin/python -m scripts.bench_train_step --config=configs/speedrun_cpu.py \
      --variants=adamw,muon,shampoo --steps=20

Each variant is `configs/speedrun_cpu_<name>.py` if that file exists, else the base config with
`optimizer.name=<name>`. Ratios are against the first variant, measured in the same run.

Per-device memory on fsdp meshes (nothing is run; the step is compiled for each mesh):

  XLA_FLAGS=--xla_force_host_platform_device_count=8 .venv/bin/python -m \
      scripts.bench_train_step --variants=adamw,adamw_8bit,muon,shampoo --fsdp=1,2,4,8

prints, per optimizer and fsdp size, the parameter and optimizer-state bytes of the fullest
device (from the state's shardings) and the compiled step's memory analysis (arguments,
outputs, temporaries per device).

The same for tensor / pipeline meshes, with the GPipe bubble fraction of each (stage, m):

  XLA_FLAGS=--xla_force_host_platform_device_count=8 .venv/bin/python -m \
      scripts.bench_train_step --config.model.num_heads=8 \
      --meshes=data8,model8,data2.model4,fsdp2.model2.data2,stage2.data4.m4,stage4.data2.m8

(a mesh is `<axis><size>` joined by dots, `m<n>` the micro-batches; axes not named are 1).
"""

from __future__ import annotations

import functools
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # see experiments/train.py
import statistics
import time

from absl import flags
import jax
import numpy as np
from ml_collections import config_flags

from experiments import configs_util
from experiments.parallel import memory
from experiments.parallel import pipeline
from experiments.parallel import sharding as sharding_lib
from experiments.training import step as step_lib
from experiments.training import train_state
from models import gpt
from scripts import bench_common

_CONFIG = config_flags.DEFINE_config_file("config", "configs/speedrun_cpu.py", "Base config.")
_VARIANTS = flags.DEFINE_list("variants", [], "Optimizer variants to compare (default: config's).")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per repetition.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Repetitions; the median is reported.")
_FSDP = flags.DEFINE_list("fsdp", [], "Report per-device memory for these fsdp sizes instead.")
_MESHES = flags.DEFINE_list("meshes", [], "Report per-device memory for these meshes instead "
                            "(e.g. model8,data2.model4,stage4.data2.m8).")


def _variant_config(name: str):
  path = f"configs/speedrun_cpu_{name}.py"
  if os.path.exists(path):
    cfg = configs_util.load(path)
  else:
    cfg = _CONFIG.value.copy_and_resolve_references()
    cfg.optimizer.name = name
  # Keep the base config's model, batch and mesh so variants differ only in the optimizer.
  base = _CONFIG.value
  for section in ("model", "data", "train", "mesh", "schedule"):
    cfg[section] = base[section]
  return cfg


def bench(cfg) -> tuple[float, float, float]:
  """(median step seconds, tokens/s, compile seconds) of the config's train step."""
  model_cfg = gpt.GPTConfig.from_config(cfg.model)
  mesh = sharding_lib.make_mesh(cfg.mesh)
  tx, schedule = train_state.make_optimizer(cfg)
  accum, batch = int(cfg.train.grad_accum_steps), int(cfg.train.batch_size)

  init = train_state.make_init_state(model_cfg, tx)
  abstract = jax.eval_shape(init, 0)
  state_sh = sharding_lib.state_shardings(mesh, abstract)
  batch_sh = sharding_lib.batch_sharding(mesh, 3, batch_axis=1)
  loss_fn = functools.partial(gpt.loss_fn, model_cfg)
  step_fn = jax.jit(step_lib.make_train_step(loss_fn, tx, schedule),
                    in_shardings=(state_sh, batch_sh), donate_argnums=(0,))
  state = jax.jit(init, static_argnums=0, out_shardings=state_sh)(0)
  tokens = np.random.default_rng(0).integers(
      0, model_cfg.vocab_size, size=(accum, batch // accum, cfg.data.seq_len + 1))
  batch_arr = jax.device_put(tokens.astype(np.int32), batch_sh)
  t0 = time.perf_counter()
  state, m = step_fn(state, batch_arr)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t0
  for _ in range(2):  # warm-up
    state, m = step_fn(state, batch_arr)
  jax.block_until_ready(m)
  per_step = []
  for _ in range(_REPEATS.value):
    t0 = time.perf_counter()
    for _ in range(_STEPS.value):
      state, m = step_fn(state, batch_arr)
    jax.block_until_ready((state, m))
    per_step.append((time.perf_counter() - t0) / _STEPS.value)
  step_s = statistics.median(per_step)
  return step_s, batch * cfg.data.seq_len / step_s, compile_s


def parse_mesh(text: str) -> tuple[dict[str, int], int]:
  """'stage4.data2.m8' -> ({"data": 2, "fsdp": 1, "model": 1, "stage": 4}, 8)."""
  sizes, micro = {"data": 1, "fsdp": 1, "model": 1, "stage": 1}, 1
  for part in text.split("."):
    name, value = part.rstrip("0123456789"), int(part[len(part.rstrip("0123456789")):])
    if name == "m":
      micro = value
    elif name in sizes:
      sizes[name] = value
    else:
      raise ValueError(f"mesh {text!r}: unknown axis {name!r}; use data, fsdp, model, stage, m")
  return sizes, micro


def fsdp_memory(cfg, fsdp: int) -> dict:
  """Per-device bytes of the train state and of the compiled step on a (1, fsdp) mesh."""
  return mesh_memory(cfg, {"data": 1, "fsdp": fsdp})


def mesh_memory(cfg, sizes: dict[str, int], microbatches: int = 1) -> dict:
  """Per-device bytes of the train state and of the compiled step on a mesh of `sizes`."""
  from experiments.problems import workloads  # pylint: disable=g-import-not-at-top
  cfg = cfg.copy_and_resolve_references()
  cfg.mesh.update(sizes)
  cfg.train.microbatches = microbatches
  n = int(np.prod(list(sizes.values())))
  mesh = sharding_lib.make_mesh(cfg.mesh, jax.devices()[:n])
  tx, schedule = train_state.make_optimizer(cfg)
  w = workloads.build(cfg, "/tmp")
  abstract = jax.eval_shape(train_state.make_init_state(w.init_params, tx), 0)
  state_sh = sharding_lib.state_shardings(mesh, abstract, logical_axes=w.logical_axes)
  accum, batch = int(cfg.train.grad_accum_steps), int(cfg.train.batch_size)
  example = w.train_batch(0, 0)
  batch_abs = jax.tree.map(
      lambda a: jax.ShapeDtypeStruct((accum, batch // accum, *a.shape[1:]), a.dtype), example)
  batch_sh = jax.tree.map(lambda a: sharding_lib.batch_sharding(mesh, a.ndim + 1, 1), example)
  with sharding_lib.context(mesh):
    compiled = jax.jit(step_lib.make_train_step(w.loss_fn, tx, schedule),
                       in_shardings=(state_sh, batch_sh), donate_argnums=(0,)).lower(
                           abstract, batch_abs).compile()
  mem = compiled.memory_analysis()
  return {"params": memory.tree_bytes_per_device(abstract["params"], state_sh["params"]),
          "opt_state": memory.tree_bytes_per_device(abstract["opt_state"], state_sh["opt_state"]),
          "arguments": getattr(mem, "argument_size_in_bytes", None),
          "outputs": getattr(mem, "output_size_in_bytes", None),
          "temps": getattr(mem, "temp_size_in_bytes", None)}


def main(argv):
  del argv
  if _MESHES.value:
    cfg = _CONFIG.value
    rows, base = [], None
    for text in _MESHES.value:
      sizes, micro = parse_mesh(text)
      m = mesh_memory(cfg, sizes, micro)
      base = base or m["params"]
      bubble = pipeline.bubble_fraction(sizes["stage"], micro) if sizes["stage"] > 1 else 0.0
      rows.append([text, m["params"] / 1024, base / m["params"], m["opt_state"] / 1024,
                   (m["temps"] or 0) / 1024, bubble])
    print(f"devices: {jax.device_count()}  optimizer: {cfg.optimizer.name}  "
          f"batch: {cfg.train.batch_size} x {cfg.data.seq_len}")
    bench_common.print_table(rows, ["mesh", "params KiB/dev", "params 1/x",
                                    "opt state KiB/dev", "step temps KiB/dev", "bubble"])
    return
  if _FSDP.value:
    names = _VARIANTS.value or [_CONFIG.value.optimizer.name]
    rows = []
    for name in names:
      cfg = _variant_config(name) if _VARIANTS.value else _CONFIG.value
      base = None
      for f in (int(x) for x in _FSDP.value):
        m = fsdp_memory(cfg, f)
        base = base or m["opt_state"]
        rows.append([name, f, m["params"] / 1024, m["opt_state"] / 1024, base / m["opt_state"],
                     (m["arguments"] or 0) / 1024, (m["temps"] or 0) / 1024])
    print(f"devices: {jax.device_count()}")
    bench_common.print_table(rows, ["optimizer", "fsdp", "params KiB/dev", "opt state KiB/dev",
                                    "state 1/x", "step args KiB/dev", "step temps KiB/dev"])
    return
  names = _VARIANTS.value or [_CONFIG.value.optimizer.name]
  rows, base = [], None
  for name in names:
    cfg = _variant_config(name) if _VARIANTS.value else _CONFIG.value
    step_s, tok_s, compile_s = bench(cfg)
    base = base or step_s
    rows.append([name, step_s * 1e3, tok_s, step_s / base, compile_s])
  print(f"devices: {jax.devices()}  steps/rep: {_STEPS.value}  repeats: {_REPEATS.value}")
  bench_common.print_table(rows, ["optimizer", "step ms (median)", "tokens/s",
                                  f"ratio vs {names[0]}", "compile s"])


if __name__ == "__main__":
  configs_util.run(main)
