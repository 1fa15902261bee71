"""CPU speedrun with Lion (Chen et al., 2023) on every parameter.

  python -m experiments.train --config=configs/speedrun_cpu_lion.py \
      --workdir=runs/speedrun_cpu_lion

Lion's step has unit RMS per coordinate, so its lr is AdamW's tuned 1e-2 divided by ~5 (the
paper's 3-10x); betas are the paper's. Untuned: the lead tunes with the harness's budget.
"""

import ml_collections

from configs import speedrun_cpu


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = speedrun_cpu.get_config(arg)
  c.optimizer = ml_collections.ConfigDict(dict(
      name="lion",
      learning_rate=2e-3,
      b1=0.9,
      b2=0.99,
      weight_decay=0.0,
  ))
  return c
