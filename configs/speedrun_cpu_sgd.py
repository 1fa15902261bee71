"""CPU speedrun with SGD and Nesterov momentum.

  python -m experiments.train --config=configs/speedrun_cpu_sgd.py \
      --workdir=runs/speedrun_cpu_sgd

Gradients of this model are small at initialization (RMS ~1e-3 per hidden matrix, global norm
~1), so SGD needs a learning rate far above Adam's. Momentum 0.9 multiplies the step by ~10.
Tuned: lr 0.3 -> val 1.5262 at 800 steps; 1.0 with global-norm clipping at 1.0 -> 1.3165
(WORKSPACE.md).
"""

import ml_collections

from configs import speedrun_cpu


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = speedrun_cpu.get_config(arg)
  c.optimizer = ml_collections.ConfigDict(dict(
      name="sgd",
      learning_rate=1.0,
      momentum=0.9,
      nesterov=True,
      weight_decay=0.0,
  ))
  c.train.grad_clip_norm = 1.0
  c.schedule.lr_scaling = "linear"  # Goyal et al.'s rule was found for SGD with momentum
  return c
