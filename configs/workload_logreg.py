"""L2-regularized logistic regression (course notes' "main problem of SGD") on breast cancer.

  python -m experiments.train --config=configs/workload_logreg.py --workdir=runs/wl_logreg

f(x) = mu/2 ||x||^2 + 1/m sum_i log(1 + exp(-y_i <a_i, x>)) on scikit-learn's bundled Wisconsin
breast-cancer set (no download): the first 568 of its 569 rows (568 = 8 x 71 splits over 8
devices), 30 standardized features plus a constant 1, mu = 1e-3. Minibatches of 64 rows drawn
with replacement. Metric: suboptimality f(x) - f* (f* by Newton's method in float64); target
TARGET within 400 steps.
"""

import ml_collections

import configs
from configs import speedrun_cpu

# The target by experiments/harness/scoring.baseline_target's rule (issue 21), from tuned AdamW
# (records/history/issue21/logreg.jsonl: 5 studies x 5 trials trained to the full budget): per
# study, the best suboptimality at or before 90% of the budget, sorted: 4.89e-4, 6.41e-4, 1.030e-3,
# 1.3865e-3, 1.497e-3; the 4th best, rounded up. `python -m experiments.compare targets
# records/history/issue21` recomputes it. (Before: 1e-3, which no optimizer of the first sweep
# reached.)
TARGET = 1.387e-3


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  configs.no_variant(arg, __file__)
  c = speedrun_cpu.get_config()
  c.workload = "logreg"
  c.model = ml_collections.ConfigDict(dict(mu=1e-3))
  c.data = ml_collections.ConfigDict(dict(num_examples=568))
  c.optimizer.learning_rate = 3e-2
  c.schedule.warmup_steps = 10
  c.train.steps = 400
  c.train.batch_size = 64
  c.train.eval_every = 10
  c.train.eval_batches = 1
  c.train.log_every = 50
  c.train.checkpoint_every = 100
  c.train.target_val_loss = TARGET
  return c
