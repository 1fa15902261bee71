r"""Table of finished runs: final and best validation loss, steps to a target, tokens/s.

  .venv/bin/python -m scripts.report runs/sweeps/*/* --target=1.2613 [--baseline_steps=800]

`steps to target` is the first crossing of the validation curve, interpolated between evals;
with --baseline_steps it is also shown as a fraction of that many steps.
"""

import os
import sys

from absl import app
from absl import flags
import numpy as np

from experiments import configs_util
from experiments.training import metrics as metrics_lib

_TARGET = flags.DEFINE_float("target", None, "Validation loss to reach.")
_BASELINE = flags.DEFINE_integer("baseline_steps", None, "Steps the baseline took to the target.")


def main(argv):
  if len(argv) < 2:
    raise app.UsageError("give one or more workdirs")
  # A glob (runs/sweeps/*/*) may catch directories that are no runs: each is named on stderr;
  # none that is a run is the one error line.
  skipped = [wd for wd in argv[1:] if not os.path.isfile(os.path.join(wd, "metrics.jsonl"))]
  if len(skipped) == len(argv) - 1:
    raise app.UsageError(f"no training run's workdir (none holds a metrics.jsonl): "
                         f"{', '.join(skipped)}")
  for wd in skipped:
    print(f"skipped {wd}: no metrics.jsonl", file=sys.stderr)
  rows = []
  for wd in argv[1:]:
    if wd in skipped:
      continue
    rec = metrics_lib.read_metrics(wd)
    val = [(r["step"], r["val_loss"]) for r in rec if isinstance(r.get("val_loss"), float)]
    tps = [r["tokens_per_s"] for r in rec if "tokens_per_s" in r]
    stt = metrics_lib.steps_to_target(rec, _TARGET.value) if _TARGET.value is not None else None
    frac = (f"{stt / _BASELINE.value:.3f}" if stt is not None and _BASELINE.value else "-")
    rows.append((wd, val[-1][0] if val else "-", f"{val[-1][1]:.4f}" if val else "-",
                 f"{min(v for _, v in val):.4f}" if val else "-",
                 "-" if stt is None else f"{stt:.0f}", frac,
                 f"{np.median(tps):,.0f}" if tps else "-"))
  print("| run | last eval step | val loss | best val | steps to target | fraction | "
        "median tokens/s |")
  print("|---|---|---|---|---|---|---|")
  for r in rows:
    print("| " + " | ".join(str(x) for x in r) + " |")


if __name__ == "__main__":
  configs_util.run(main)
