"""CPU speedrun with Shampoo (blocks of 128, Adam grafting), every leaf through `shampoo`.

  python -m experiments.train --config=configs/speedrun_cpu_shampoo.py \
      --workdir=runs/speedrun_cpu_shampoo

The base config's schedule (warmup 50 + cosine) shapes `learning_rate`. Why these defaults:
Adam grafting with AdamW's b1, b2 and eps gives every 128x128 block AdamW's step length, so
the learning rate transfers from AdamW (3e-3 here) and the first 24 steps are exactly AdamW's;
the Shampoo direction starts at step 25, once the factors' moving average (b2 = 0.95, a window
of about 20 steps) is filled; roots every 10 steps by eigendecomposition (one batched LAPACK
call) with a ridge of 1e-6 times the largest eigenvalue. Blocks of 128 keep every factor
128x128 (the width), so the roots cost little on CPU. Tuned (WORKSPACE.md): lr 3e-3 -> val
1.1929 at 800 steps, 6e-3 -> 1.1604 (AdamW's best: 1.2613), both with coupled Newton roots;
eigh roots give the same run (1.1605, 498 steps to AdamW's loss) with a train step 1.05x
AdamW's instead of 1.12x. On accelerators prefer `--config.optimizer.root_method=newton`
(matrix products only).
"""

import ml_collections

from configs import speedrun_cpu

FieldReference = ml_collections.FieldReference


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = speedrun_cpu.get_config(arg)
  o = ml_collections.ConfigDict()
  o.name = "shampoo"
  o.learning_rate = 6e-3
  o.b1 = 0.9
  o.b2 = 0.95
  o.eps = 1e-6
  o.relative_eps = True
  o.weight_decay = 0.0
  o.nesterov = False
  o.block_size = 128
  o.max_preconditioner_dim = 4096
  o.graft_only_dim = 1_000_000
  o.merge_small_dims = True
  o.precondition_every = 10
  o.statistics_every = 1
  o.start_preconditioning_step = 25
  o.grafting = "adam"  # "none", "sgd", "adagrad", "rmsprop" or "adam"
  o.graft_eps = 1e-8
  o.root_method = "eigh"  # or "newton" (matrix products only: accelerators)
  o.root_override = FieldReference(None, field_type=int)  # None: 2k (-1/4 per side of a matrix)
  o.newton_iters = 100
  o.newton_tol = 1e-6
  o.failure_threshold = 0.1
  c.optimizer = o
  return c
