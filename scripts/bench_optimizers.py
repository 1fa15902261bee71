r"""Optimizer benchmarks: update time (median) and optimizer-state bytes per parameter.

  .venv/bin/python -m scripts.bench_optimizers                      # every suite
  .venv/bin/python -m scripts.bench_optimizers --suite=registry     # one suite

Suites live in `scripts/bench_suites/<name>.py`, each with `run(flags)`:
  registry  every registry entry on the CPU speedrun model (time, bytes/param)
  muon      `muon` against `optax.contrib.muon` (speedrun model; 12x768^2 + 12x768x3072 stack)
  shampoo   `shampoo` against precondition-opt's distributed_shampoo; train step vs adamw
Times are ratios against a baseline measured in the same run: this machine is shared and noisy.
"""

import importlib

from absl import app
from absl import flags

from experiments import configs_util

SUITES = ("registry", "muon", "shampoo")

_SUITE = flags.DEFINE_list("suite", list(SUITES), f"Suites to run, from {SUITES}.")
_CONFIG = flags.DEFINE_string("config", "configs/speedrun_cpu.py", "Speedrun config for the model.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repetitions (median is reported).")


def main(argv):
  del argv
  for name in _SUITE.value:
    if name not in SUITES:
      raise app.UsageError(f"unknown suite {name!r}; choose from {SUITES}")
    print(f"\n=== suite: {name} ===")
    module = importlib.import_module(f"scripts.bench_suites.{name}")
    module.run(flags.FLAGS)


if __name__ == "__main__":
  configs_util.run(main)
