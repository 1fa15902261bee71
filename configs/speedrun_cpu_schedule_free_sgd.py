"""CPU speedrun with Schedule-Free SGD (Defazio et al., 2024): no schedule on top.

  python -m experiments.train --config=configs/speedrun_cpu_schedule_free_sgd.py \
      --workdir=runs/speedrun_cpu_schedule_free_sgd

As `speedrun_cpu_schedule_free_adamw.py` (constant trainer schedule, the optimizer's own
50-step warmup, evaluate at x). Gradients here are small (global norm ~1), and the z step has
no momentum amplification (Nesterov SGD's tuned lr 1.0 at momentum 0.9 moves ~10x lr), so
the lr is large, with the SGD config's global-norm clipping. Untuned.
"""

import ml_collections

from configs import speedrun_cpu_schedule_free_adamw


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = speedrun_cpu_schedule_free_adamw.get_config(arg)
  o = c.optimizer
  o.name = "schedule_free_sgd"
  o.learning_rate = 5.0
  del o["b2"], o["eps"]
  c.train.grad_clip_norm = 1.0
  return c
