"""CPU speedrun on 8 data-parallel devices with compressed gradients: Adam's metric frozen.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m experiments.train \
      --config=configs/speedrun_cpu_compressed.py:topk --workdir=runs/comp_topk

Args "sgd_topk", "sgd_powersgd", "sgd_none": the SGD-momentum speedrun
(`speedrun_cpu_sgd.py`: Nesterov 0.9, lr 1.0, global-norm clipping 1.0) on 8 devices with the
papers' own setting, the raw gradient compressed with error feedback and momentum applied after
the exchange (Vogels et al. 2019, Algorithm 2; Stich et al. 2018 for top-k), after an
uncompressed warm-up as long as the learning-rate warmup (50 steps).

Args "muon_topk", "muon_powersgd", "muon_none": the Muon speedrun (`speedrun_cpu_muon.py`) on 8
devices, the raw gradient compressed with error feedback, Muon's momentum and orthogonalization
(and AdamW on embeddings and head) after the exchange, 50 uncompressed steps first. Override
`--config.compression.alternating=2` for PowerSGD's alternating half-steps (same bytes).

Arg: "topk" (1%), "powersgd" (rank 4) or "none" (the same recipe uncompressed). The recipe
(`experiments/parallel/compression.py`, `make_compressor`): the first `warmup_steps` steps
all-reduce the
full gradient and estimate Adam's variance v from it (1-bit Adam, Tang et al. 2021, arXiv
2102.02888); then v is held, refreshed from one full all-reduce every `variance_refresh_every`
steps (0/1 Adam, Lu et al. 2022, arXiv 2202.06009; 0: frozen), and each device compresses, with
error feedback, its local velocity u <- b1 u + g / (sqrt(v_hat) + eps) (top-k: DGC's momentum
correction with masking, Lin et al. 2018, arXiv 1712.01887) or, for PowerSGD, the preconditioned
gradient, with heavy-ball momentum b1 after the exchange (Vogels et al. 2019, arXiv 1905.13727).
The optimizer is SGD at AdamW's rate times 1 - b1: uncompressed, with v updated every step, this
is AdamW (b1 0.9, b2 0.95, no weight decay) up to where v divides (each gradient, not the
momentum).
"""

import ml_collections

from configs import speedrun_cpu
from configs import speedrun_cpu_muon
from configs import speedrun_cpu_sgd


VARIANTS = tuple(f"{base}{kind}" for base in ("", "sgd_", "muon_")
                 for kind in ("topk", "powersgd", "none"))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  kind = arg or "topk"
  if kind not in VARIANTS:
    raise ValueError(f"unknown variant {kind!r}; variants: {', '.join(VARIANTS)}")
  for prefix, base in (("sgd_", speedrun_cpu_sgd), ("muon_", speedrun_cpu_muon)):
    if kind.startswith(prefix):
      c = base.get_config()
      c.mesh.data = 8
      c.compression.kind = kind[len(prefix):]
      c.compression.rank = 4
      c.compression.fraction = 0.01
      c.compression.warmup_steps = 50
      return c
  c = speedrun_cpu.get_config()
  adamw = c.optimizer
  c.mesh.data = 8
  c.compression.kind = kind
  c.compression.rank = 4
  c.compression.fraction = 0.01
  c.compression.warmup_steps = 100
  c.compression.momentum = adamw.b1
  c.compression.precondition = "adam"
  c.compression.variance_refresh_every = 10
  c.compression.b2 = adamw.b2
  c.compression.eps = adamw.eps
  c.optimizer = ml_collections.ConfigDict(dict(
      name="sgd", learning_rate=adamw.learning_rate * (1.0 - adamw.b1), momentum=None,
      nesterov=False, weight_decay=0.0))
  if kind == "powersgd":
    # Vogels et al.'s Algorithm 2: error feedback on the gradient, heavy-ball momentum after
    # the exchange. Momentum correction without masking let PowerSGD's residual keep stale
    # velocity: the applied norm grew 4x within 30 steps of the warm-up and the loss rose.
    c.compression.momentum = 0.0
    c.optimizer.momentum = adamw.b1
    # Rank 4 of Adam-normalized (flat-spectrum) gradients kept little: train loss 2.10 against
    # 1.80 uncompressed at steps 150-200. Raw gradients are compressed, the mean preconditioned.
    c.compression.precondition_after = True
  return c
