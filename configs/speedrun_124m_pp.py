"""GPU speedrun, 124M GPT, GPipe over two pipeline stages.

  python -m experiments.train --config=configs/speedrun_124m_pp.py --workdir=runs/124m_pp \
      --config.data.train_glob='data/fineweb10B/fineweb_train_*.bin' \
      --config.data.val_glob='data/fineweb10B/fineweb_val_*.bin'

configs/speedrun_124m.py with `mesh.stage=2`: blocks 0-5 on one stage, 6-11 on the other
(experiments/parallel/pipeline.py); each accumulation step's 64 sequences go through the pipeline
as 8
micro-batches of 8, so the bubble is (2 - 1) / (8 + 2 - 1) = 11% of each stage's time. The
other devices are data parallel (`mesh.data=-1`). The blocks' parameters are stacked along a
layer axis: checkpoints of this config do not load into the unpipelined one (and back).
"""

import ml_collections

import configs
from configs import speedrun_124m


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  configs.no_variant(arg, __file__)
  c = speedrun_124m.get_config()
  c.mesh.data = -1
  c.mesh.stage = 2
  c.train.microbatches = 8
  return c
