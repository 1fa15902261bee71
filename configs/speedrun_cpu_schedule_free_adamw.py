"""CPU speedrun with Schedule-Free AdamW (Defazio et al., 2024): no schedule on top.

  python -m experiments.train --config=configs/speedrun_cpu_schedule_free_adamw.py \
      --workdir=runs/speedrun_cpu_schedule_free_adamw

The trainer's schedule is constant with no warmup; the optimizer warms up itself (50 steps,
from lr/50 at step 1, as the authors' reference). The parameters trained are the gradient
point y; evaluate at x = `optimizers.eval_params(params, opt_state)`. b2 as in the AdamW
baseline; lr AdamW's tuned 1e-2. Untuned: the lead tunes with the harness's budget.
"""

import ml_collections

from configs import speedrun_cpu


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = speedrun_cpu.get_config(arg)
  c.schedule.name = "constant"
  c.schedule.warmup_steps = 0
  c.optimizer = ml_collections.ConfigDict(dict(
      name="schedule_free_adamw",
      learning_rate=1e-2,
      b1=0.9,
      b2=0.95,
      eps=1e-8,
      weight_decay=0.0,
      warmup_steps=50,
      weight_lr_power=2.0,
  ))
  return c
