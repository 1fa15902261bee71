"""CPU speedrun with Dion on the hidden matrices and AdamW on embeddings, head and norms.

  python -m experiments.train --config=configs/speedrun_cpu_dion.py --workdir=runs/speedrun_cpu_dion

Muon's config (configs/speedrun_cpu_muon.py: warmup 10, AdamW branch at 1e-2) with Dion at half
rank (r = 64 of the 128-wide matrices). The paper's scale sqrt(fan_out / fan_in) gives the
512 -> 128 MLP projection half Muon's step and the 128 -> 512 one twice: the learning rate is a
starting point, not tuned here yet. Variants: `--config.optimizer.rank_fraction=1.0` (full rank,
Muon-like), `--config.optimizer.scalar_optimizer=lion` (then lower adam_learning_rate ~3x).
"""

import ml_collections

import configs
from configs import speedrun_cpu_muon


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  configs.no_variant(arg, __file__)
  c = speedrun_cpu_muon.get_config()
  m = c.optimizer
  o = ml_collections.ConfigDict()
  o.name = "dion"
  o.learning_rate = 0.02
  o.momentum = 0.95
  o.rank_fraction = 0.5
  o.scale = "spectral_norm"  # or "original" / "match_adamw_rms" as in Muon
  o.eps = 1e-8
  o.weight_decay = 0.0
  o.seed = 0
  o.scalar_optimizer = "adamw"  # or "lion"
  for k in ("adam_learning_rate", "adam_b1", "adam_b2", "adam_eps", "adam_weight_decay"):
    o[k] = m[k]
  c.optimizer = o
  return c
