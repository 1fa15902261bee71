"""GPU speedrun: the 124M-parameter GPT of the NanoGPT speedrun on FineWeb `.bin` shards.

  python -m experiments.train --config=configs/speedrun_124m.py --workdir=runs/124m \
      --config.data.train_glob='data/fineweb10B/fineweb_train_*.bin' \
      --config.data.val_glob='data/fineweb10B/fineweb_val_*.bin'

12 layers, width 768, 6 heads, sequence 1024, 524,288 tokens per step (512 sequences). The shards
are modded-nanogpt's GPT-2-tokenized FineWeb files (256 int32 header, uint16 tokens); fetch them
with that project's data script on a machine with network access. On one 80 GB GPU the batch is
split into 8 micro-batches of 64; on an 8-GPU host use `--config.train.grad_accum_steps=1`.
Target: 3.28 validation loss (the speedrun's optimizer track: AdamW needs about 5,625 steps).
"""

import ml_collections

import configs
from configs import speedrun_cpu


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  configs.no_variant(arg, __file__)
  c = speedrun_cpu.get_config()
  c.model.vocab_size = 50304  # GPT-2's 50,257 padded to a multiple of 128
  c.model.num_layers = 12
  c.model.width = 768
  c.model.num_heads = 6
  c.model.max_seq_len = 1024
  c.model.logit_softcap = 30.0
  c.model.dtype = "bfloat16"

  c.data.source = "bin"
  c.data.train_glob = "data/fineweb10B/fineweb_train_*.bin"
  c.data.val_glob = "data/fineweb10B/fineweb_val_*.bin"
  c.data.seq_len = 1024

  c.optimizer.learning_rate = 1.8e-3
  c.optimizer.b2 = 0.95
  c.optimizer.weight_decay = 0.0

  c.schedule.warmup_steps = 250
  c.schedule.base_batch_size = 512  # the learning rate above is for 512 sequences

  c.train.steps = 5625
  c.train.batch_size = 512  # x 1024 tokens = 524,288 tokens per step
  c.train.grad_accum_steps = 8
  c.train.grad_clip_norm = 1.0
  c.train.eval_every = 250
  c.train.eval_batches = 20  # x 512 x 1024 = 10,485,760 validation tokens (in micro-batches)
  c.train.log_every = 10
  c.train.checkpoint_every = 500
  return c
