"""CPU speedrun with SOAP (Adam in Shampoo's eigenbasis, blocks of 128), every leaf through it.

  python -m experiments.train --config=configs/speedrun_cpu_soap.py --workdir=runs/speedrun_cpu_soap

The base config's schedule (warmup 50 + cosine) shapes `learning_rate`. Defaults follow the
SOAP paper's language-model runs (b1 = b2 = 0.95, factors with the same decay, basis refreshed
every 10 steps). Tuned (WORKSPACE.md): lr 3e-3 / 6e-3 / 1e-2 -> AdamW's 800-step loss in 566 /
498 / 506 steps (6e-3, seed 1: 515), val 1.2077 / 1.1698 / 1.1651 at 800 (AdamW's best: 1.2613).
Each step's QRs (and the first step's eigh) run as one batched LAPACK call: separate concurrent
calls deadlocked XLA's CPU thread pool (optimizers/shampoo/linalg.py).
"""

import ml_collections

from configs import speedrun_cpu

FieldReference = ml_collections.FieldReference


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = speedrun_cpu.get_config(arg)
  o = ml_collections.ConfigDict()
  o.name = "soap"
  o.learning_rate = 6e-3
  o.b1 = 0.95
  o.b2 = 0.95
  o.eps = 1e-8
  o.weight_decay = 0.0
  o.shampoo_b2 = FieldReference(None, field_type=float)  # None: b2
  o.nesterov = False
  o.block_size = 128
  o.max_preconditioner_dim = 4096
  o.graft_only_dim = 1_000_000
  o.merge_small_dims = True
  o.precondition_every = 10
  o.statistics_every = 1
  o.start_preconditioning_step = 1  # the paper: bases from the first gradient, no move
  c.optimizer = o
  return c
