"""CPU speedrun with cautious Adam (Liang et al., 2024): C-AdamW with the baseline's betas.

  python -m experiments.train --config=configs/speedrun_cpu_cautious.py \
      --workdir=runs/speedrun_cpu_cautious

Any registry entry can be made cautious: `--config.optimizer.inner=lion` (with its own
`inner_hparams`). lr is AdamW's tuned 1e-2 (masking rescales the kept coordinates, so the
step size is about AdamW's). Untuned.
"""

import ml_collections

from configs import speedrun_cpu


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = speedrun_cpu.get_config(arg)
  c.optimizer = ml_collections.ConfigDict(dict(
      name="cautious",
      inner="adam",
      learning_rate=1e-2,
      inner_hparams=dict(b1=0.9, b2=0.95, eps=1e-8),
      weight_decay=0.0,
      floor=1e-3,
  ))
  return c
