"""An MLP classifier on scikit-learn's bundled 8x8 digits (the notes' Fashion-MNIST, small).

  python -m experiments.train --config=configs/workload_mlp_digits.py --workdir=runs/wl_mlp

64 -> 128 -> 128 -> 10 ReLU MLP, softmax cross entropy, batch 128 drawn with replacement from
1,501 training images; 296 held out (296 = 8 x 37, rng seed data.split_seed). Metric:
validation error rate; target TARGET within 400 steps.
"""

import ml_collections

import configs
from configs import speedrun_cpu

# The target by experiments/harness/scoring.baseline_target's rule (issue 21), from tuned AdamW
# (records/history/issue21/mlp_digits.jsonl: 5 studies x 5 trials trained to the full budget): per
# study, the best validation error at or before 90% of the budget, sorted: 1/296 four times, then
# 2/296; the 4th best is one error among the 296 held-out images. On this discrete metric every
# value in [1/296, 2/296) is the same target; the middle is taken so that float32's rounding of
# 1/296 cannot decide it. `python -m experiments.compare targets records/history/issue21` recomputes
# it. (Before: 0.02, about 6 errors.)
TARGET = 1.5 / 296


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  configs.no_variant(arg, __file__)
  c = speedrun_cpu.get_config()
  c.workload = "mlp_digits"
  c.model = ml_collections.ConfigDict(dict(hidden=(128, 128)))
  c.data = ml_collections.ConfigDict(dict(num_val=296, split_seed=0))
  c.optimizer.learning_rate = 3e-3
  c.schedule.warmup_steps = 20
  c.train.steps = 400
  c.train.batch_size = 128
  c.train.eval_every = 20
  c.train.eval_batches = 1
  c.train.log_every = 50
  c.train.checkpoint_every = 100
  c.train.target_val_loss = TARGET
  return c
