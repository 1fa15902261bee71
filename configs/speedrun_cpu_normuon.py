"""CPU speedrun with NorMuon on the hidden matrices and AdamW on embeddings, head and norms.

  python -m experiments.train --config=configs/speedrun_cpu_normuon.py \
      --workdir=runs/speedrun_cpu_normuon

Muon's tuned config (configs/speedrun_cpu_muon.py) with the per-neuron second moment (`b2`, the
authors' 0.95) and the NanoGPT speedrun's cautious weight decay switch (off: the base has no
weight decay). NorMuon keeps Muon's update norm, so Muon's learning rate is the starting point;
not tuned here yet.
"""

import ml_collections

import configs
from configs import speedrun_cpu_muon


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  configs.no_variant(arg, __file__)
  c = speedrun_cpu_muon.get_config()
  c.optimizer.name = "normuon"
  c.optimizer.b2 = 0.95
  c.optimizer.cautious_weight_decay = False
  return c
