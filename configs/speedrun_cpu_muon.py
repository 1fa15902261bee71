"""CPU speedrun with Muon on the hidden matrices and AdamW on embeddings, head and norms.

  python -m experiments.train --config=configs/speedrun_cpu_muon.py --workdir=runs/speedrun_cpu_muon

The base config's cosine schedule, with a 10-step warmup, shapes both learning rates. Variants:
`--config.optimizer.gram_ns=True` (Gram Newton–Schulz on the 128x512 MLP kernels),
`--config.optimizer.ns_coeffs=polar_express`; and `--config=configs/speedrun_cpu_muon.py:optax`,
the `optax.contrib.muon` baseline (`optax_muon`) with the same routing and hyperparameters;
`--config=configs/speedrun_cpu_muon.py:split_heads`, each attention head's slice of q, k, v
and the output projection orthogonalized separately (`num_heads` follows `model.num_heads`).
"""

import ml_collections

from configs import speedrun_cpu


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = speedrun_cpu.get_config()
  # Muon tolerates a short warmup (AdamW does not: 1.309 at 800 steps with 10, 1.261 with 50).
  c.schedule.warmup_steps = 10
  o = ml_collections.ConfigDict()
  o.name = "muon"
  o.learning_rate = 0.02  # tuned: 0.01 / 0.02 / 0.04 -> val 1.182 / 1.152 / 1.143 (WORKSPACE.md)
  o.momentum = 0.95
  o.nesterov = True
  o.momentum_warmup_steps = 150  # momentum 0.85 -> 0.95 over 150 steps: 418 -> 397 steps
  o.momentum_start = 0.85
  o.ns_steps = 5
  o.ns_coeffs = "quintic"  # "quintic", "polar_express" or "cubic"
  o.ns_dtype = "float32"  # bfloat16 is no faster on this CPU
  o.gram_ns = False
  o.scale = "original"  # or "match_adamw_rms"
  o.weight_decay = 0.0
  o.adam_learning_rate = 1e-2  # AdamW's tuned lr here; with warmup 10: 471 -> 418 steps
  o.adam_b1 = 0.9
  o.adam_b2 = 0.95
  o.adam_eps = 1e-8
  o.adam_weight_decay = 0.0
  if arg == "optax":
    o.name = "optax_muon"
    # optax.contrib.muon has none of these.
    del o["ns_dtype"], o["gram_ns"], o["momentum_warmup_steps"], o["momentum_start"]
  elif arg == "split_heads":  # each attention head's block orthogonalized on its own
    o.split_heads = True
    o.num_heads = c.model.get_ref("num_heads")
  elif arg:
    raise ValueError(f"unknown variant {arg!r}; choose 'optax' or 'split_heads'")
  c.optimizer = o
  return c
