"""CPU speedrun with LAMB (layer-wise trust ratio on the Adam step).

  python -m experiments.train --config=configs/speedrun_cpu_lamb.py \
      --workdir=runs/speedrun_cpu_lamb

LAMB's step on a leaf has norm lr * ||theta||, so lr is a relative step size per layer (zero
leaves, like the zero-initialized output projections, take a plain Adam step of size lr).
b1, b2 as in the AdamW baseline; eps 1e-6 as in the paper.
Tuned: lr 1e-2 -> val 1.5734 at 800 steps, 3e-2 -> 1.2811 (WORKSPACE.md); larger is untried.
"""

import ml_collections

from configs import speedrun_cpu


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = speedrun_cpu.get_config(arg)
  c.optimizer = ml_collections.ConfigDict(dict(
      name="lamb",
      learning_rate=3e-2,
      b1=0.9,
      b2=0.95,
      eps=1e-6,
      weight_decay=0.0,
  ))
  return c
