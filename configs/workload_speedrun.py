"""The CPU speedrun as a workload: `speedrun_cpu.py`'s byte-level GPT with a fixed target.

  python -m experiments.train --config=configs/workload_speedrun.py --workdir=runs/wl_speedrun

Default: the speedrun itself (800 steps; target 1.2560, AdamW's tuned 800-step loss averaged
over two seeds, WORKSPACE.md), evaluated every 25 steps. Variant `:short` is the size a tuning
sweep on two CPU cores can afford: 200 steps (the schedule spans them), target TARGET_SHORT.

Variants for the loss-at-several-budgets comparison (issue 39; branched cooldowns,
experiments/training/budgets.py): `:budgets`, the speedrun model under WSD (warmup 20, decay
20% of each budget) with `train.budgets=BUDGETS`, so one 400-step run also gives the losses of
runs of 50, 100 and 200 steps; `:wide_budgets`, the same with model width WIDE_WIDTH (3,482,952
parameters, 4.08x the speedrun's 853,120; width 256 would give 3.84x), evaluated every
WIDE_EVAL_EVERY = 50 steps instead of 25. Neither has a target: the result is the loss per
budget, evaluated at each budget's end whatever the cadence (evaluation leaves the training
state, its data and its RNG untouched), so the cadence only sets the curve's resolution (the
steps-to-target view interpolates between evaluations). The wide model's 16-batch evaluation
costs about 5 of its training steps; at 50 steps that saves about 1 h of its 15 h sweep.

  python -m experiments.train --config=configs/workload_speedrun.py:budgets --workdir=runs/budgets
  python -m scripts.check_branched_cooldown --workload=speedrun_budgets --out=results/bc.json
"""

import ml_collections

from configs import speedrun_cpu

# The target by experiments/harness/scoring.baseline_target's rule (issue 21), from tuned AdamW
# (records/history/issue21/speedrun.jsonl: 5 studies x 5 trials trained to the full budget): per
# study, the best validation loss at or before 90% of the budget, sorted: 1.834, 1.878, 1.885,
# 1.8934, 1.905; the 4th best, rounded up. `python -m experiments.compare targets
# records/history/issue21` recomputes it. (Before: 1.92, from one hand-tuned AdamW run.)
TARGET_SHORT = 1.894
BUDGETS = (50, 100, 200, 400)
WIDE_WIDTH = 264  # the smallest width (head dim even) with at least 4x the parameters
WIDE_EVAL_EVERY = 50


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = speedrun_cpu.get_config()
  c.workload = "speedrun"
  c.train.eval_every = 25
  c.train.target_val_loss = 1.2560
  if arg == "short":
    c.train.steps = 200
    c.schedule.warmup_steps = 20
    c.train.target_val_loss = TARGET_SHORT
  elif arg in ("budgets", "wide_budgets"):
    c.schedule.name = "wsd"
    c.schedule.decay_fraction = 0.2
    c.schedule.warmup_steps = 20
    c.train.steps = BUDGETS[-1]
    c.train.budgets = BUDGETS
    c.train.target_val_loss = None
    c.train.stop_at_target = False
    if arg == "wide_budgets":
      c.model.width = WIDE_WIDTH
      c.train.eval_every = WIDE_EVAL_EVERY
  elif arg:
    raise ValueError(f"unknown variant {arg!r}; choose 'short', 'budgets' or 'wide_budgets'")
  return c
