"""CPU speedrun with AdEMAMix (Pagliardini et al., 2024).

  python -m experiments.train --config=configs/speedrun_cpu_ademamix.py \
      --workdir=runs/speedrun_cpu_ademamix

Warmups of alpha and b3 over the whole run (T_alpha = T_b3 = T, the paper's choice); b3 0.999
rather than 0.9999 for a run this short (the paper's appendix on short runs). The slow EMA
adds up to alpha times a momentum-sized term, so lr is half AdamW's tuned 1e-2. Untuned.
"""

import ml_collections

from configs import speedrun_cpu


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = speedrun_cpu.get_config(arg)
  c.optimizer = ml_collections.ConfigDict(dict(
      name="ademamix",
      learning_rate=5e-3,
      b1=0.9,
      b2=0.95,
      b3=0.999,
      alpha=5.0,
      eps=1e-8,
      weight_decay=0.0,
      # References: they follow --config.train.steps.
      alpha_warmup_steps=c.train.get_ref("steps"),
      b3_warmup_steps=c.train.get_ref("steps"),
  ))
  return c
