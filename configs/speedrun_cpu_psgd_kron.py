"""CPU speedrun with PSGD-Kron on every parameter (Kronecker-factored preconditioner).

  python -m experiments.train --config=configs/speedrun_cpu_psgd_kron.py \
      --workdir=runs/speedrun_cpu_psgd_kron

The base config's schedule (warmup 50 + cosine). PSGD-Kron's update has an RMS of about 1 (capped
at 1.1), like Adam's, so AdamW's tuned learning rate is the starting point; kron's default
(3e-4 at large scale) is for much larger models. The preconditioner is fitted at every step for
the first 200 steps, then ever less often, down to every 33rd (kron: flat for 500, but the run is
800 steps). Not tuned here yet.
"""

import ml_collections

import configs
from configs import speedrun_cpu


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  configs.no_variant(arg, __file__)
  c = speedrun_cpu.get_config()
  o = ml_collections.ConfigDict()
  o.name = "psgd_kron"
  o.learning_rate = 1e-3
  o.b1 = 0.9
  o.weight_decay = 0.0
  o.update_prob_flat_start = 200
  o.update_prob_min = 0.03
  o.update_prob_decay = 0.001
  o.max_size_triangular = 8192
  o.min_ndim_triangular = 2
  o.memory_save_mode = ml_collections.FieldReference(None, field_type=str)  # or "one_diag"
  o.momentum_into_precond_update = True
  o.preconditioner_lr = 0.1
  o.preconditioner_init_scale = 1.0
  o.seed = 0
  c.optimizer = o
  return c
