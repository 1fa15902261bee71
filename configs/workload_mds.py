"""Multidimensional scaling (course notes): recover 64 points in the plane from D_ij.

  python -m experiments.train --config=configs/workload_mds.py --workdir=runs/wl_mds

L(W) = sum_ij (||w_i - w_j||^2 - D_ij)^2 with D the squared distances of 64 points drawn from
N(0, I_2) (rng seed data.points_seed); W (64x2) starts from N(0, init_scale^2). Full batch
(every row each step). Metric: relative stress L(W) / sum_ij D_ij^2 (0 at the solution, up to
rotation, reflection and translation); target TARGET within 300 steps.
"""

import ml_collections

import configs
from configs import speedrun_cpu

# The target by experiments/harness/scoring.baseline_target's rule (issue 21), from tuned AdamW
# (records/history/issue21/mds.jsonl: 5 studies x 5 trials trained to the full budget): per study,
# the best relative stress at or before 90% of the budget, sorted: 1.3e-12, 6.6e-11, 2.8e-10,
# 1.0e-9, 1.3e-8; the 4th best is below the rule's floor, 1e-6 x the median step-0 stress (1.0738),
# so the floor, rounded up: that far down float32's rounding, not the optimizer, would decide.
# `python -m experiments.compare targets records/history/issue21` recomputes it. (Before: 1e-4.)
TARGET = 1.074e-6


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  configs.no_variant(arg, __file__)
  c = speedrun_cpu.get_config()
  c.workload = "mds"
  c.model = ml_collections.ConfigDict(dict(num_points=64, dim=2, init_scale=1.0))
  c.data = ml_collections.ConfigDict(dict(points_seed=0))
  c.optimizer.learning_rate = 3e-2
  c.schedule.warmup_steps = 10
  c.train.steps = 300
  c.train.batch_size = 64  # = num_points: full batch, 8 rows per device on 8 devices
  c.train.eval_every = 10
  c.train.eval_batches = 1
  c.train.log_every = 50
  c.train.checkpoint_every = 100
  c.train.target_val_loss = TARGET
  return c
