"""LoRA fine-tuning of a CPU-speedrun checkpoint on the stdlib's English docs (Hu et al. 2021).

  python -m experiments.train --config=configs/lora_cpu.py --workdir=runs/lora_cpu \
      --config.lora.base_workdir=runs/speedrun_cpu

The base model (trained on the stdlib's .py sources) is frozen; rank-8 adapters on every
attention and MLP matrix train on a different built-in corpus: the stdlib's .txt and .rst files
outside test directories (IDLE's NEWS/README/HISTORY, LICENSE, ...; about 150 KB of prose,
none of it in the speedrun's corpus; the last tenth of each file is validation). The base is the
newest intact checkpoint of `lora.base_workdir`; the run's checkpoints hold the adapters and
their optimizer state only. Any registry optimizer works on the adapters, e.g.
`--config=configs/lora_cpu.py:muon`.

Fields beyond the speedrun's: `lora.*` (rank, alpha, targets, base_workdir) and
`data.source = "stdlib_docs"`; the model section must match the base run's (experiments/
finetune.py).
"""

import ml_collections

from configs import speedrun_cpu
from configs import speedrun_cpu_muon

FieldReference = ml_collections.FieldReference


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = speedrun_cpu.get_config()
  c.lora = ml_collections.ConfigDict()
  c.lora.rank = 8
  c.lora.alpha = 16.0
  c.lora.targets = "attn.q,attn.k,attn.v,attn.proj,mlp.fc,mlp.proj"
  c.lora.base_workdir = FieldReference(None, field_type=str)  # the base run's --workdir
  c.data.source = "stdlib_docs"
  c.train.steps = 200
  c.train.eval_every = 50
  c.schedule.warmup_steps = 10
  c.optimizer.learning_rate = 1e-2
  if arg == "muon":
    c.optimizer = speedrun_cpu_muon.get_config().optimizer
  elif arg:
    raise ValueError(f"unknown variant {arg!r}; the only variant is 'muon'")
  return c
