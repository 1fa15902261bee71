"""Branched cooldowns against standalone runs: is one run's loss at budget B a B-step run's?

  python -m scripts.check_branched_cooldown --optimizers=adamw,muon --seeds=2 \\
      --workload=speedrun_budgets --out=results/check_branched_cooldown.json

For each optimizer and seed (0, 1, ...): one run of the workload with its `train.budgets`
(experiments/training/budgets.py: a WSD cooldown forked per shorter budget; Hägele et al. 2024,
arXiv 2405.18392), and a standalone run of every shorter budget with the same config and seed.
Configs are the sweep's (`runs.run_config` at the optimizer's base hyperparameters, trained to
the full budget), so the numbers are those `compare sweep` would record. Printed per optimizer
and budget: the branched and standalone losses (means over seeds), the largest
|branched - standalone| over seeds, and the standalone runs' seed-to-seed spread (max - min), the
scale against which a difference is "within seed noise"; then each run's training seconds. The
JSON holds every seed's values. On one CPU device the difference is expected to be exactly 0
(tests/test_branched_cooldown.py).

A tiny setting to see it work (about a minute):

  python -m scripts.check_branched_cooldown --seeds=2 --out=/tmp/bc.json \\
      --set=model.num_layers=2 --set=model.width=32 --set=model.num_heads=2 \\
      --set=model.max_seq_len=32 --set=data.seq_len=32 --set=train.batch_size=8 \\
      --set=train.eval_batches=2 --set=schedule.warmup_steps=5 --set=train.eval_every=8 \\
      --set=train.steps=24 --set="train.budgets=(8,16,24)"

Workdirs go under --runs_dir (a temporary directory by default); rerunning with the same one
reuses finished runs (the trainer finds them complete).
"""

from __future__ import annotations

import ast
import json
import os
import tempfile

from absl import app
from absl import flags

from experiments import configs_util
from experiments.harness import records as records_lib
from experiments.harness import runs as runs_lib
from experiments.training import validate as validate_lib

_OPTIMIZERS = flags.DEFINE_list("optimizers", ["adamw", "muon"], "Optimizers (registry names "
                                "with a base config, records.BASE_CONFIGS).")
_SEEDS = flags.DEFINE_integer("seeds", 2, "Seeds 0 .. seeds-1 per optimizer.")
_WORKLOAD = flags.DEFINE_string("workload", "speedrun_budgets", "A workload of "
                                "runs.WORKLOAD_CONFIGS whose config sets train.budgets.")
_OUT = flags.DEFINE_string("out", "results/check_branched_cooldown.json", "JSON of the results.")
_RUNS = flags.DEFINE_string("runs_dir", None, "Workdirs of the runs; default: a temporary one.")
_SET = flags.DEFINE_multi_string("set", [], "key=value config override (a Python literal, "
                                 "else a string), applied over the sweep's config; repeatable.")


def parse_overrides(items: list[str]) -> dict:
  """["a.b=1", "c=(1,2)"] -> {"a.b": 1, "c": (1, 2)}."""
  out = {}
  for item in items:
    key, sep, text = item.partition("=")
    if not sep:
      raise app.UsageError(f"--set={item!r}: expected key=value")
    try:
      out[key] = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      out[key] = text
  return out


def make_config(workload: str, optimizer: str, seed: int, overrides: dict):
  """The sweep's config of (workload, optimizer, seed) at base hyperparameters, full budget."""
  spec = records_lib.RunSpec(workload=workload, optimizer=optimizer, hparams={},
                             study="check_branched_cooldown", trial=0, seed=seed,
                             full_budget=True)
  cfg = runs_lib.run_config(spec)
  for key, value in overrides.items():
    *head, last = key.split(".")
    node = cfg
    for part in head:
      node = node[part]
    node[last] = value
  return cfg


def check(workload: str, optimizers: list[str], seeds: int, overrides: dict,
          runs_dir: str) -> list[dict]:
  """One row per (optimizer, seed, budget): branched and standalone loss and seconds."""
  from experiments.training import loop  # pylint: disable=g-import-not-at-top
  rows = []
  for opt in optimizers:
    for seed in range(seeds):
      cfg = make_config(workload, opt, seed, overrides)
      budgets = validate_lib.budgets_of(cfg)
      if len(budgets) < 2:
        raise app.UsageError(f"workload {workload!r} has train.budgets={budgets}: nothing to "
                             "branch (use speedrun_budgets or speedrun_wide, or --set them)")
      where = os.path.join(runs_dir, opt, f"seed{seed}")
      summary = loop.train_and_evaluate(cfg, os.path.join(where, "branched"))
      metric = summary["metric"]
      branched = {r["budget"]: r for r in summary["budget_metrics"]}
      for b in budgets:
        row = {"optimizer": opt, "seed": seed, "budget": b, "metric": metric,
               "branched": branched[b][metric], "branched_train_time_s":
               branched[b]["train_time_s"]}
        if b == budgets[-1]:  # the main run is the standalone run of the longest budget
          row.update(standalone=row["branched"], standalone_train_time_s=summary["train_time_s"])
        else:
          alone = loop.train_and_evaluate(validate_lib.budget_config(cfg, b),
                                          os.path.join(where, f"standalone{b}"))
          row.update(standalone=alone["val_loss"], standalone_train_time_s=alone["train_time_s"])
        row["difference"] = row["branched"] - row["standalone"]
        rows.append(row)
  return rows


def table(rows: list[dict]) -> list[dict]:
  """Per (optimizer, budget): means over seeds, the largest |difference|, the seed spread."""
  out = []
  for opt in dict.fromkeys(r["optimizer"] for r in rows):
    for b in sorted({r["budget"] for r in rows if r["optimizer"] == opt}):
      rs = [r for r in rows if r["optimizer"] == opt and r["budget"] == b]
      alone = [r["standalone"] for r in rs]
      out.append({"optimizer": opt, "budget": b, "seeds": len(rs),
                  "branched": sum(r["branched"] for r in rs) / len(rs),
                  "standalone": sum(alone) / len(rs),
                  "max_abs_difference": max(abs(r["difference"]) for r in rs),
                  "seed_spread": max(alone) - min(alone),
                  "branched_train_time_s": sum(r["branched_train_time_s"] for r in rs) / len(rs),
                  "standalone_train_time_s":
                      sum(r["standalone_train_time_s"] for r in rs) / len(rs)})
  return out


def print_table(summary: list[dict]) -> None:
  print("| optimizer | budget | branched | standalone | max abs difference | seed spread "
        "(standalone) | train s branched / standalone |")
  print("|---|---|---|---|---|---|---|")
  for t in summary:
    print(f"| {t['optimizer']} | {t['budget']} | {t['branched']:.4f} | {t['standalone']:.4f} | "
          f"{t['max_abs_difference']:.3g} | {t['seed_spread']:.3g} | "
          f"{t['branched_train_time_s']:.1f} / {t['standalone_train_time_s']:.1f} |")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if _WORKLOAD.value not in runs_lib.WORKLOAD_CONFIGS:
    raise app.UsageError(f"unknown workload {_WORKLOAD.value!r}; choose from "
                         f"{', '.join(runs_lib.WORKLOAD_CONFIGS)}")
  unknown = [o for o in _OPTIMIZERS.value if o not in records_lib.BASE_CONFIGS]
  if unknown:
    raise app.UsageError(f"--optimizers: no base config for {', '.join(unknown)}; choose from "
                         f"{', '.join(records_lib.BASE_CONFIGS)}")
  if _SEEDS.value < 1:
    raise app.UsageError(f"--seeds must be >= 1, not {_SEEDS.value}")
  overrides = parse_overrides(_SET.value)
  runs_dir = _RUNS.value or tempfile.mkdtemp(prefix="check_branched_cooldown_")
  rows = check(_WORKLOAD.value, _OPTIMIZERS.value, _SEEDS.value, overrides, runs_dir)
  summary = table(rows)
  print_table(summary)
  if os.path.dirname(_OUT.value):
    os.makedirs(os.path.dirname(_OUT.value), exist_ok=True)
  with open(_OUT.value, "w") as f:
    json.dump({"workload": _WORKLOAD.value, "overrides": {k: repr(v) for k, v in
                                                          overrides.items()},
               "runs_dir": runs_dir, "table": summary, "rows": rows,
               "provenance": records_lib.provenance()}, f, indent=1)
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  configs_util.run(main)
