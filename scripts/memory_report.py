r"""Bytes per device of a train step: parameters, gradients, optimizer state, activations.

  python -m scripts.memory_report --config=configs/speedrun_cpu.py --optimizer=adamw_8bit
  python -m scripts.memory_report --model=gpt2-1.5b --optimizer=adamw --precision=mixed \
      --mesh.fsdp=8
  python -m scripts.memory_report --config=configs/speedrun_cpu.py --time_steps=5 \
      --time_repeats=7

Figures come from the state pytrees (built with `jax.eval_shape`, nothing allocated) split over
the mesh by their shardings, from the residuals autodiff saves under each remat policy, and,
for models small enough to compile here, from XLA's memory analysis of the jitted train step.
Beside them, the 16-bytes-per-parameter accounting of ZeRO (Rajbhandari et al. 2020, arXiv
1910.02054): mixed precision keeps half-precision parameters (2 B) and gradients (2 B) plus a
float32 master copy (4 B) and the optimizer's float32 states (Adam: 8 B). The last line is one
JSON object with every figure.

Shardings are the trainer's (experiments/parallel/sharding.py): parameters split over `fsdp` along
their
first dimension it divides, optimizer states as their layouts declare; batches split over
data x fsdp.

Remat's time cost: `--time_steps=N --time_repeats=R` times N steps per policy, R rounds with the
policies interleaved (so load on a shared machine hits each alike); reported: the median step
time per policy and the median over rounds of its ratio to "none" in the same round.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # see experiments/train.py
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  # Fake CPU devices so small meshes compile here; accelerators ignore the flag.
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8").strip()

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np
import optax
from jax.sharding import AbstractMesh
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from experiments import configs_util
from experiments.parallel import memory
from experiments.parallel import sharding as sharding_lib
from experiments.training import train_state
from models import gpt
import optimizers

# GPT-2's shapes (Radford et al. 2019) in this repo's architecture (rotary, untied head, no
# biases), so counts differ slightly from GPT-2's.
MODELS = {
    "gpt2-124m": dict(num_layers=12, width=768, num_heads=12),
    "gpt2-350m": dict(num_layers=24, width=1024, num_heads=16),
    "gpt2-774m": dict(num_layers=36, width=1280, num_heads=20),
    "gpt2-1.5b": dict(num_layers=48, width=1600, num_heads=25),
}
GPT2_VOCAB, GPT2_CONTEXT = 50257, 1024
POLICIES = ("none", "dots_saveable", "block", "offload_dots")
MiB = 2 ** 20

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (model, batch, optimizer).")
_MODEL = flags.DEFINE_enum("model", None, list(MODELS), "A named model shape instead of --config.")
_OPTIMIZER = flags.DEFINE_string("optimizer", None, "Registry name (default: the config's).")
_PRECISION = flags.DEFINE_enum("precision", "fp32", ["fp32", "mixed"], "Accounting precision.")
_MESH = config_flags.DEFINE_config_dict(
    "mesh", ml_collections.ConfigDict({"data": 1, "fsdp": 1}), "Mesh axis sizes.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Global batch (sequences) for --model.")
_REMAT = flags.DEFINE_list("remat", list(POLICIES), "Remat policies to measure.")
_COMPILE_MAX = flags.DEFINE_integer(
    "compile_max_params", 20_000_000, "Compile the step (XLA memory analysis) up to this size.")
_TIME_STEPS = flags.DEFINE_integer(
    "time_steps", 0, "Also time this many steps per remat policy (ratio to 'none').")
_TIME_REPEATS = flags.DEFINE_integer(
    "time_repeats", 5, "Interleaved timing rounds over the policies; the median is reported.")


def optimizer_hparams(name: str, config: Any | None = None) -> dict:
  """The config's optimizer section if it is `name`'s, else configs/speedrun_cpu_<name>.py's.

  Learning rates stay constants: a schedule changes no byte.
  """
  section = config.optimizer if config is not None and config.optimizer.name == name else None
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                      f"speedrun_cpu_{name}.py")
  if section is None and os.path.exists(path):
    section = configs_util.load(path).optimizer
  if section is None:
    return {"learning_rate": 1e-3}
  return train_state.registry_hparams(section)


def model_config(config: Any | None, model: str | None, precision: str) -> gpt.GPTConfig:
  if model:
    cfg = gpt.GPTConfig(vocab_size=GPT2_VOCAB, max_seq_len=GPT2_CONTEXT, **MODELS[model])
  else:
    cfg = gpt.GPTConfig.from_config(config.model)
  dtype = memory.model_dtype("bf16" if precision == "mixed" else "fp32")
  return dataclasses.replace(cfg, dtype=dtype, remat="none")


def make_step(cfg: gpt.GPTConfig, tx):
  """The trainer's step without its bookkeeping: gradients, optimizer update, new params."""

  def step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(lambda p: gpt.loss_fn(cfg, p, batch))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step


def measure(cfg: gpt.GPTConfig, optimizer: str, hparams: dict, *, precision: str = "fp32",
            mesh_shape: dict | None = None, batch_size: int = 8, seq_len: int | None = None,
            policies=POLICIES, compile_max_params: int = 20_000_000,
            time_steps: int = 0, time_repeats: int = 5) -> dict:
  """Every figure of the report, as a dict (the JSON line)."""
  mesh_shape = {"data": 1, "fsdp": 1, **(mesh_shape or {})}
  seq_len = seq_len or cfg.max_seq_len
  tx = optimizers.create(optimizer, **hparams)
  params = jax.eval_shape(lambda: gpt.init_params(cfg, jax.random.key(0)))
  opt_state = jax.eval_shape(tx.init, params)
  n = gpt.num_params(params)

  abstract_mesh = AbstractMesh(tuple(mesh_shape.values()), tuple(mesh_shape))
  sh = sharding_lib.state_shardings(abstract_mesh, {"params": params, "opt_state": opt_state})
  state = {"params": memory.tree_bytes(params), "grads": memory.tree_bytes(params),
           "opt_state": memory.tree_bytes(opt_state)}
  state_dev = {"params": memory.tree_bytes_per_device(params, sh["params"]),
               "grads": memory.tree_bytes_per_device(params, sh["params"]),
               "opt_state": memory.tree_bytes_per_device(opt_state, sh["opt_state"])}
  # The notes' accounting: half-precision params and grads plus a float32 master copy.
  half = precision == "mixed"
  notes = {"params": (2 if half else 4) * n, "grads": (2 if half else 4) * n,
           "master": 4 * n if half else 0, "opt_state": state["opt_state"]}
  shards = mesh_shape["data"] * mesh_shape["fsdp"]
  batch = jax.ShapeDtypeStruct((batch_size, seq_len + 1), jnp.int32)

  acts = {}
  for pol in policies:
    c = dataclasses.replace(cfg, remat=pol)
    saved = memory.saved_activation_bytes(lambda p, b, c=c: gpt.loss_fn(c, p, b), params, batch)
    acts[pol] = {"saved_device_bytes_per_device": saved["device"] // shards,
                 "saved_host_bytes_per_device": saved["host"] // shards}

  n_dev = int(np.prod(list(mesh_shape.values())))
  if n <= compile_max_params and n_dev <= len(jax.devices()):
    _compile(cfg, tx, params, opt_state, batch, mesh_shape, policies, acts, time_steps,
             time_repeats)

  out = {
      "model": dataclasses.asdict(cfg), "optimizer": optimizer, "precision": precision,
      "mesh": mesh_shape, "batch": [batch_size, seq_len], "params": n,
      "bytes_total": state, "bytes_per_device": state_dev,
      "opt_state_bytes_per_param": state["opt_state"] / n,
      "notes_bytes": notes,
      "model_state_bytes": sum(notes.values()),
      "model_state_bytes_per_param": sum(notes.values()) / n,
      "model_state_bytes_per_device": sum(notes.values()) / mesh_shape["fsdp"],
      "activations": acts,
  }
  return out


def _compile(cfg, tx, params, opt_state, batch, mesh_shape, policies, acts, time_steps,
             time_repeats):
  """XLA's per-device figures of the jitted step, per policy (and its time if asked)."""
  devices = np.array(jax.devices()[:int(np.prod(list(mesh_shape.values())))])
  mesh = Mesh(devices.reshape(tuple(mesh_shape.values())), tuple(mesh_shape))
  sh = sharding_lib.state_shardings(mesh, {"params": params, "opt_state": opt_state})
  p_sh, o_sh = sh["params"], sh["opt_state"]
  b_sh = NamedSharding(mesh, P(tuple(mesh_shape)))
  rows = batch.shape[0]
  if rows % devices.size:
    b_sh = NamedSharding(mesh, P())
  repl = NamedSharding(mesh, P())
  runs = {}
  for pol in policies:
    c = dataclasses.replace(cfg, remat=pol)
    step = jax.jit(make_step(c, tx), in_shardings=(p_sh, o_sh, b_sh),
                   out_shardings=(p_sh, o_sh, repl), donate_argnums=(0, 1))
    compiled = step.lower(params, opt_state, batch).compile()
    acts[pol]["xla"] = memory.compiled_memory(compiled)
    if time_steps:
      p = jax.jit(lambda: gpt.init_params(cfg, jax.random.key(0)), out_shardings=p_sh)()
      o = jax.jit(tx.init, out_shardings=o_sh)(p)
      b = jax.device_put(
          jax.random.randint(jax.random.key(1), batch.shape, 0, cfg.vocab_size), b_sh)
      p, o, loss = compiled(p, o, b)  # warm-up
      jax.block_until_ready(loss)
      runs[pol] = [compiled, (p, o), b, []]
  for _ in range(time_repeats if time_steps else 0):
    for pol, run in runs.items():  # interleaved: machine load falls on every policy alike
      compiled, (p, o), b, times = run
      t0 = time.perf_counter()
      for _ in range(time_steps):
        p, o, loss = compiled(p, o, b)
      jax.block_until_ready(loss)
      times.append((time.perf_counter() - t0) / time_steps)
      run[1] = (p, o)
  for pol, run in runs.items():
    acts[pol]["step_s"] = statistics.median(run[3])
    acts[pol]["step_s_all"] = run[3]
  if "none" in runs:  # paired: each round's ratio, then the median (load varies by round)
    for pol, run in runs.items():
      acts[pol]["time_ratio_to_none"] = statistics.median(
          t / t0 for t, t0 in zip(run[3], runs["none"][3]))


def format_report(r: dict) -> list[str]:
  n = r["params"]
  lines = [f"model {r['model']['num_layers']}x{r['model']['width']} ({n:,} params), "
           f"optimizer {r['optimizer']}, precision {r['precision']}, mesh {r['mesh']}, "
           f"batch {r['batch'][0]}x{r['batch'][1]}",
           f"{'':22}{'total MiB':>12}{'per device MiB':>16}{'B/param':>9}"]
  for k in ("params", "grads", "opt_state"):
    lines.append(f"{k:22}{r['bytes_total'][k] / MiB:12.2f}"
                 f"{r['bytes_per_device'][k] / MiB:16.2f}{r['bytes_total'][k] / n:9.3f}")
  notes = r["notes_bytes"]
  lines.append("notes' accounting (B/param): " + " + ".join(
      f"{k} {v / n:.2f}" for k, v in notes.items() if v) +
      f" = {r['model_state_bytes_per_param']:.2f}; model states "
      f"{r['model_state_bytes'] / 1e9:.3f} GB, {r['model_state_bytes_per_device'] / MiB:.2f} MiB "
      "per device")
  for pol, a in r["activations"].items():
    line = (f"remat {pol:14} saved activations {a['saved_device_bytes_per_device'] / MiB:9.2f} "
            f"MiB/device (+{a['saved_host_bytes_per_device'] / MiB:.2f} on host)")
    if "xla" in a:
      line += (f"; XLA temp {a['xla']['temp_bytes'] / MiB:.2f} MiB, arguments "
               f"{a['xla']['argument_bytes'] / MiB:.2f} MiB")
    if "time_ratio_to_none" in a:
      line += (f"; step {a['step_s'] * 1e3:.0f} ms median of {len(a['step_s_all'])} "
               f"({a['time_ratio_to_none']:.2f}x none)")
    lines.append(line)
  return lines


def main(argv):
  del argv
  config = _CONFIG.value
  if config is None and _MODEL.value is None:
    raise app.UsageError("give --config or --model")
  optimizer = _OPTIMIZER.value or (config.optimizer.name if config is not None else "adamw")
  cfg = model_config(config, _MODEL.value, _PRECISION.value)
  batch, seq = (_BATCH.value, None) if _MODEL.value else (
      int(config.train.batch_size) // int(config.train.grad_accum_steps),
      int(config.data.seq_len))
  r = measure(cfg, optimizer, optimizer_hparams(optimizer, config), precision=_PRECISION.value,
              mesh_shape=_MESH.value.to_dict(), batch_size=batch, seq_len=seq,
              policies=_REMAT.value, compile_max_params=_COMPILE_MAX.value,
              time_steps=_TIME_STEPS.value, time_repeats=_TIME_REPEATS.value)
  print("\n".join(format_report(r)))
  print(json.dumps(r))


if __name__ == "__main__":
  configs_util.run(main)
