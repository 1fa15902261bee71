r"""Train-step speed for a config: median step time and tokens/s after warm-up, as a table.

  .venv/bin/python -m scripts.bench_train_step --config=configs/speedrun_cpu.py
  .venv/bin/python -m scripts.bench_train_step --config=configs/speedrun_cpu.py \
      --variants=adamw,muon,shampoo --steps=20

Each variant is `configs/speedrun_cpu_<name>.py` if that file exists, else the base config with
`optimizer.name=<name>`. Ratios are against the first variant, measured in the same run.
"""

from __future__ import annotations

import functools
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # see experiments/train.py
import statistics
import time

from absl import app
from absl import flags
import jax
import numpy as np
from ml_collections import config_flags

from experiments import configs_util
from experiments import sharding as sharding_lib
from experiments import trainer
from models import gpt
from scripts import bench_common

_CONFIG = config_flags.DEFINE_config_file("config", "configs/speedrun_cpu.py", "Base config.")
_VARIANTS = flags.DEFINE_list("variants", [], "Optimizer variants to compare (default: config's).")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per repetition.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Repetitions; the median is reported.")


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
  tx, schedule = trainer.make_optimizer(cfg)
  accum, batch = int(cfg.train.grad_accum_steps), int(cfg.train.batch_size)

  init = trainer.make_init_state(model_cfg, tx)
  abstract = jax.eval_shape(init, 0)
  state_sh = sharding_lib.state_shardings(mesh, abstract)
  batch_sh = sharding_lib.batch_sharding(mesh, 3, batch_axis=1)
  step_fn = jax.jit(trainer.make_train_step(functools.partial(gpt.loss_fn, model_cfg), tx, schedule),
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


def main(argv):
  del argv
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
  app.run(main)
