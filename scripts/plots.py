r"""Loss curves of one or more runs, from their `metrics.jsonl`, as a PNG.

  .venv/bin/python -m scripts.plots runs/adamw runs/muon [--out=curves.png] [--target=1.95]

Each run is labelled by its optimizer and learning rate (from its run.json), plus its workdir's
name where two labels would collide. Without --out the PNG goes beside the first run
(`<first workdir>/curves.png`).
"""

from __future__ import annotations

import json
import os

from absl import app
from absl import flags
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from experiments import metrics as metrics_lib

_OUT = flags.DEFINE_string("out", None, "Output PNG (default: <first workdir>/curves.png).")
_TARGET = flags.DEFINE_float("target", None, "Draw a horizontal line at this validation loss.")
_SMOOTH = flags.DEFINE_integer("smooth", 20, "Moving-average window for the training loss.")


def main(argv):
  workdirs = argv[1:]
  if not workdirs:
    raise app.UsageError("give one or more workdirs")
  fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(12, 4.5))
  labels = [run_label(wd) for wd in workdirs]
  labels = [f"{l} [{os.path.basename(os.path.normpath(wd))}]" if labels.count(l) > 1 else l
            for l, wd in zip(labels, workdirs)]
  for wd, label in zip(workdirs, labels):
    records = metrics_lib.read_metrics(wd)
    tr = [(r["step"], r["train_loss"]) for r in records if isinstance(r.get("train_loss"), float)]
    if tr:
      s, l = map(np.array, zip(*tr))
      k = max(1, min(_SMOOTH.value, len(l)))
      ax_train.plot(s[k - 1:], np.convolve(l, np.ones(k) / k, mode="valid"), label=label)
    va = [(r["step"], r["val_loss"]) for r in records if isinstance(r.get("val_loss"), float)]
    if va:
      ax_val.plot(*zip(*va), marker="o", ms=3, label=label)
  for ax, title in ((ax_train, f"train loss (moving average of {_SMOOTH.value})"),
                    (ax_val, "validation loss")):
    ax.set_xlabel("step")
    ax.set_ylabel("nats per token")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
  if _TARGET.value is not None:
    ax_val.axhline(_TARGET.value, color="k", ls="--", lw=1)
  ax_val.set_ylim(top=min(ax_val.get_ylim()[1], 3.0))
  fig.tight_layout()
  out = _OUT.value or os.path.join(workdirs[0], "curves.png")
  fig.savefig(out, dpi=120)
  print(f"wrote {out}")


def run_label(workdir: str) -> str:
  """"muon (lr 0.02)" from the run's run.json; the workdir's name if it has none."""
  try:
    with open(os.path.join(workdir, "run.json")) as f:
      opt = json.load(f)["config"]["optimizer"]
  except (OSError, ValueError, KeyError):
    return os.path.basename(os.path.normpath(workdir))
  lr = opt.get("learning_rate")
  return f"{opt.get('name', '?')} (lr {lr:g})" if isinstance(lr, (int, float)) else opt.get("name", "?")


if __name__ == "__main__":
  app.run(main)
