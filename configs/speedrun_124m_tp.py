"""GPU speedrun, 124M GPT, tensor parallel over pairs of devices (Megatron layouts).

  python -m experiments.train --config=configs/speedrun_124m_tp.py --workdir=runs/124m_tp \
      --config.data.train_glob='data/fineweb10B/fineweb_train_*.bin' \
      --config.data.val_glob='data/fineweb10B/fineweb_val_*.bin'

configs/speedrun_124m.py with `mesh.model=2`: each of the 6 heads' q/k/v columns and the MLP's
3,072 hidden units split over 2 devices (3 heads, 1,536 units each), the output projections
split by rows, the vocabulary of the embedding and head split too; the other devices are data
parallel (`mesh.data=-1`). Per-device parameter bytes halve; each block costs two all-reduces
of the activations forward and two backward (WORKSPACE.md, "When to use which axis").
"""

import ml_collections

import configs
from configs import speedrun_124m


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  configs.no_variant(arg, __file__)
  c = speedrun_124m.get_config()
  c.mesh.data = -1
  c.mesh.model = 2
  return c
