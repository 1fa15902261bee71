"""Vectorized trials against one trial at a time, per workload and optimizer, in one run.

  PYTHONPATH=. python scripts/bench_vectorized.py [--workloads=mds,logreg] [--optimizers=adamw]
      [--trials=5] [--out=results/bench_vectorized.json]

For each (workload, optimizer): the same K specs of one study (the sweep's draws and seeds)
trained twice, by K trainer runs (`runs.train_run`, each compiling its own step, as
`experiments.compare sweep --vectorize=never` does) and by one vectorized program
(`vectorized.train_trials`) plus the timing record that times its trials (`measure_alone`,
once per workload and optimizer in a sweep, so amortized over its studies). Printed: the
wall-clock seconds of each, their ratio (> 1: vectorized is faster) and on how many trials the
two agree on the steps to target. Float32 rounding differs between the two (a drawn value is a
float32 array, not a constant folded in float64), which a chaotic trial (a high learning rate
on the MLP's error rate) can amplify into another eval's crossing. The trainer runs go first,
the vectorized second, on the same idle machine; the ratio is what `--vectorize=auto` reads
(experiments/harness/runs.py, VECTORIZE_SPEEDUP).
"""

from __future__ import annotations

import json
import os
import tempfile
import time

from absl import flags
from absl import logging

from experiments import configs_util
from experiments.harness import records as records_lib
from experiments.harness import runs as runs_lib
from experiments.harness import vectorized
from scripts import bench_common

_WORKLOADS = flags.DEFINE_list(
    "workloads", [w for w in runs_lib.WORKLOAD_CONFIGS if w not in runs_lib.BUDGET_WORKLOADS],
    "Workloads.")
_OPTIMIZERS = flags.DEFINE_list("optimizers", ["adamw", "shampoo"], "Optimizers.")
_TRIALS = flags.DEFINE_integer("trials", 5, "Trials per program (AlgoPerf's per study).")
_STUDY = flags.DEFINE_integer("study", 0, "Which study's draws and seeds.")
_OUT = flags.DEFINE_string("out", "results/bench_vectorized.json", "JSON of the rows.")


def bench(workload: str, optimizer: str, trials: int, study: int) -> dict:
  specs = records_lib.plan(workload, [optimizer], trials, [study])
  with tempfile.TemporaryDirectory() as runs_dir:
    t0 = time.perf_counter()
    refs = [runs_lib.train_run(sp, runs_dir) for sp in specs]
    alone_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  timing = vectorized.measure_alone(specs[0])
  timing_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  got = vectorized.train_trials(specs, timing)
  vec_s = time.perf_counter() - t0
  same = sum(a["steps_to_target"] == b["steps_to_target"] and a["diverged"] == b["diverged"]
             for a, b in zip(got, refs))
  return {"workload": workload, "optimizer": optimizer, "trials": trials,
          "one_at_a_time_s": alone_s, "vectorized_s": vec_s, "timing_record_s": timing_s,
          "speedup": alone_s / vec_s, "speedup_with_timing": alone_s / (vec_s + timing_s),
          "steps_to_target": [r["steps_to_target"] for r in refs],
          "vectorized_steps_to_target": [r["steps_to_target"] for r in got], "agree": same}


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  rows = []
  for w in _WORKLOADS.value:
    for o in _OPTIMIZERS.value:
      r = bench(w, o, _TRIALS.value, _STUDY.value)
      rows.append(r)
      print(json.dumps(r), flush=True)
  os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
  with open(_OUT.value, "w") as f:
    json.dump({"rows": rows, "provenance": records_lib.provenance()}, f, indent=1)
  bench_common.print_table(
      [(r["workload"], r["optimizer"], r["trials"], f"{r['one_at_a_time_s']:.1f}",
        f"{r['vectorized_s']:.1f}", f"{r['timing_record_s']:.1f}", f"{r['speedup']:.2f}x",
        f"{r['speedup_with_timing']:.2f}x", f"{r['agree']}/{r['trials']}") for r in rows],
      ["workload", "optimizer", "K", "K trainer runs (s)", "vectorized (s)", "timing record (s)",
       "speed-up", "with timing record", "same steps to target"])
  return 0


if __name__ == "__main__":
  configs_util.run(main)
