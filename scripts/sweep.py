r"""A small grid sweep: one training run per grid point and seed, then a results table.

  .venv/bin/python -m scripts.sweep --name=adamw_lr --config=configs/speedrun_cpu.py \
      --grid=optimizer.learning_rate=1e-3,3e-3,1e-2 --seeds=0,1 --set=train.eval_every=25 \
      --target=1.30

Runs go to runs/sweeps/<name>/<point>_s<seed>/ one after another (each is an ordinary
`experiments.train` run, so an interrupted sweep resumes where it stopped). The table (markdown,
also saved as summary.json) gives the final and best validation loss, the first eval step at or
below --target (interpolated between evals), and the wall-clock time.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time

from absl import flags

from experiments import configs_util
from experiments.training import metrics as metrics_lib

_NAME = flags.DEFINE_string("name", None, "Sweep name (directory under runs/sweeps).")
_CONFIG = flags.DEFINE_string("config", "configs/speedrun_cpu.py", "Config file.")
_GRID = flags.DEFINE_multi_string("grid", [], "key=v1,v2,... (repeatable; the product is run).")
_SET = flags.DEFINE_multi_string("set", [], "key=value applied to every run.")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "Seeds.")
_TARGET = flags.DEFINE_float("target", None, "Validation loss whose first crossing is reported.")
_ROOT = flags.DEFINE_string("root", "runs/sweeps", "Where sweeps go.")
flags.mark_flag_as_required("name")


def main(argv):
  del argv
  grid = [(kv.split("=", 1)[0], kv.split("=", 1)[1].split(",")) for kv in _GRID.value]
  points = list(itertools.product(*[[(k, v) for v in vs] for k, vs in grid])) or [()]
  sweep_dir = os.path.join(_ROOT.value, _NAME.value)
  os.makedirs(sweep_dir, exist_ok=True)
  rows = []
  for point in points:
    for seed in _SEEDS.value:
      tag = "_".join(f"{k.split('.')[-1]}{v}" for k, v in point) or "run"
      workdir = os.path.join(sweep_dir, f"{tag}_s{seed}")
      cmd = [sys.executable, "-m", "experiments.train", f"--config={_CONFIG.value}",
             f"--workdir={workdir}", f"--config.seed={seed}"]
      cmd += [f"--config.{kv}" for kv in _SET.value] + [f"--config.{k}={v}" for k, v in point]
      print("$", " ".join(cmd), flush=True)
      t0 = time.time()
      with open(os.path.join(sweep_dir, f"{tag}_s{seed}.log"), "a") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
      wall = time.time() - t0
      records = metrics_lib.read_metrics(workdir) if os.path.exists(
          os.path.join(workdir, "metrics.jsonl")) else []
      val = [r["val_loss"] for r in records if isinstance(r.get("val_loss"), float)]
      row = {"point": dict(point), "seed": seed, "rc": rc, "workdir": workdir,
             "final_val": val[-1] if val else None, "best_val": min(val) if val else None,
             "steps_to_target": (metrics_lib.steps_to_target(records, _TARGET.value)
                                 if _TARGET.value is not None else None),
             "wall_s": wall}
      rows.append(row)
      print(json.dumps(row), flush=True)
  with open(os.path.join(sweep_dir, "summary.json"), "w") as f:
    json.dump(rows, f, indent=1)
  keys = [k for k, _ in grid]
  print("\n| " + " | ".join(keys + ["seed", "final val", "best val", "steps to target",
                                    "wall s"]) + " |")
  print("|" + "---|" * (len(keys) + 5))
  for r in rows:
    stt = r["steps_to_target"]
    print("| " + " | ".join([r["point"][k] for k in keys] + [
        r["seed"], _f(r["final_val"]), _f(r["best_val"]),
        "-" if stt is None else f"{stt:.0f}", f"{r['wall_s']:.0f}"]) + " |")


def _f(x):
  return "-" if x is None else f"{x:.4f}"


if __name__ == "__main__":
  configs_util.run(main)
