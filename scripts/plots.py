r"""Loss curves of one or more runs, from their `metrics.jsonl`, as a PNG.

  .venv/bin/python -m scripts.plots runs/adamw runs/muon [--out=curves.png] [--target=1.95]

Each run is labelled by its optimizer and learning rate (from its run.json), plus its workdir's
name where two labels would collide. Without --out the PNG goes beside the first run
(`<first workdir>/curves.png`). The validation axis stops at 3.0 nats so that the final values
can be compared; the values above it (step 0's ~5.5-6) are drawn as triangles on its top edge and
the panel's title says so, with the largest one.
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

from experiments import configs_util
from experiments.training import metrics as metrics_lib

_OUT = flags.DEFINE_string("out", None, "Output PNG (default: <first workdir>/curves.png).")
_TARGET = flags.DEFINE_float("target", None, "Draw a horizontal line at this validation loss.")
_SMOOTH = flags.DEFINE_integer("smooth", 20, "Moving-average window for the training loss.")
VAL_TOP = 3.0  # the validation axis's top (nats per token); values above are marked clipped


def main(argv):
  workdirs = argv[1:]
  if not workdirs:
    raise app.UsageError("give one or more workdirs")
  missing = [wd for wd in workdirs if not os.path.isfile(os.path.join(wd, "metrics.jsonl"))]
  if missing:
    raise app.UsageError(f"not a training run's workdir (no metrics.jsonl): {', '.join(missing)}")
  fig = draw(workdirs, smooth=_SMOOTH.value, target=_TARGET.value)
  out = _OUT.value or os.path.join(workdirs[0], "curves.png")
  fig.savefig(out, dpi=120)
  print(f"wrote {out}")


def draw(workdirs: list[str], smooth: int = 20, target: float | None = None,
         val_top: float = VAL_TOP):
  """The figure: smoothed training loss (left) and validation loss (right) of every run.

  The validation axis stops at `val_top` (the early values, ~5.5 nats at step 0, would squash
  the comparison of the final ones); values above it are drawn as triangles on the top edge and
  the title says what was clipped.
  """
  fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(12, 4.5))
  labels = [run_label(wd) for wd in workdirs]
  labels = [f"{l} [{os.path.basename(os.path.normpath(wd))}]" if labels.count(l) > 1 else l
            for l, wd in zip(labels, workdirs)]
  clipped = []  # (step, val_loss, color) above val_top
  for wd, label in zip(workdirs, labels):
    records = metrics_lib.read_metrics(wd)
    tr = [(r["step"], r["train_loss"]) for r in records if isinstance(r.get("train_loss"), float)]
    if tr:
      s, l = map(np.array, zip(*tr))
      k = max(1, min(smooth, len(l)))
      ax_train.plot(s[k - 1:], np.convolve(l, np.ones(k) / k, mode="valid"), label=label)
    va = [(r["step"], r["val_loss"]) for r in records if isinstance(r.get("val_loss"), float)]
    if va:
      line, = ax_val.plot(*zip(*va), marker="o", ms=3, label=label)
      clipped += [(s, v, line.get_color()) for s, v in va if v > val_top]
  for ax, title in ((ax_train, f"train loss (moving average of {smooth})"),
                    (ax_val, "validation loss")):
    ax.set_xlabel("step")
    ax.set_ylabel("nats per token")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend()
  if target is not None:
    ax_val.axhline(target, color="k", ls="--", lw=1)
  bottom, top = ax_val.get_ylim()
  if bottom < val_top < top:
    ax_val.set_ylim(top=val_top)
    for s, _, color in clipped:
      ax_val.plot([s], [val_top], marker="^", ms=7, color=color, clip_on=False)
    if clipped:
      s, v, _ = max(clipped, key=lambda c: c[1])
      ax_val.set_title(f"validation loss (\u25b2: above {val_top:g}, clipped; "
                       f"max {v:.2f} at step {s})")
  fig.tight_layout()
  return fig


def run_label(workdir: str) -> str:
  """"muon (lr 0.02)" from the run's run.json; the workdir's name if it has none."""
  try:
    with open(os.path.join(workdir, "run.json")) as f:
      opt = json.load(f)["config"]["optimizer"]
  except (OSError, ValueError, KeyError):
    return os.path.basename(os.path.normpath(workdir))
  lr = opt.get("learning_rate")
  name = opt.get("name", "?")
  return f"{name} (lr {lr:g})" if isinstance(lr, (int, float)) else name


if __name__ == "__main__":
  configs_util.run(main)
