"""CPU speedrun with 8-bit AdamW (block-wise quantized moments), otherwise the AdamW baseline.

  python -m experiments.train --config=configs/speedrun_cpu_adamw_8bit.py \
      --workdir=runs/speedrun_cpu_adamw_8bit

Same hyperparameters as `speedrun_cpu.py` (AdamW lr 3e-3, b2 0.95, no weight decay), so the
val loss at 800 steps can be compared with AdamW's directly (target: within 0.02).
Proposed sweep: `--config.optimizer.learning_rate` in {1e-3, 3e-3, 1e-2}.
"""

import ml_collections

from configs import speedrun_cpu


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = speedrun_cpu.get_config(arg)
  c.optimizer = ml_collections.ConfigDict(dict(
      name="adamw_8bit",
      learning_rate=3e-3,
      b1=0.9,
      b2=0.95,
      eps=1e-8,
      weight_decay=0.0,
      block_size=256,  # elements per float32 absmax scale
      min_quantized_size=4096,  # smaller leaves (norm scales) keep float32 moments
  ))
  return c
