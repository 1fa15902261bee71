"""CPU speedrun: a ~0.85M-parameter byte-level GPT on the built-in CPython-stdlib corpus.

  python -m experiments.train --config=configs/speedrun_cpu.py --workdir=runs/speedrun_cpu

800 AdamW steps, batch 32 x 128 bytes; 6-8 minutes on two CPU cores. Override any field,
e.g. `--config.optimizer.learning_rate=1e-3 --config.train.steps=400`.
"""

import ml_collections

import configs
from experiments.parallel import compression
from experiments.parallel import distributed

FieldReference = ml_collections.FieldReference


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  configs.no_variant(arg, __file__)
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.vocab_size = 256
  c.model.num_layers = 4
  c.model.width = 128
  c.model.num_heads = 4
  c.model.mlp_ratio = 4
  c.model.max_seq_len = 128
  c.model.rope_base = 10000.0
  c.model.logit_softcap = FieldReference(None, field_type=float)
  # Activation checkpointing policy: "none", "block", "dots_saveable" or "offload_dots"
  # (models/gpt.py); changes memory and time, not the math (free to change on resume).
  c.model.remat = "none"
  c.model.dtype = "float32"  # compute dtype; parameters and optimizer states stay float32
  c.model.init_std = FieldReference(None, field_type=float)

  # Mixed precision: "bf16" computes in bfloat16 (loss and softmax in float32) with float32
  # master weights and optimizer states; "fp32"; None: model.dtype as set.
  c.precision = FieldReference(None, field_type=str)

  c.data = ml_collections.ConfigDict()
  c.data.source = "stdlib"  # "stdlib" (built-in corpus) or "bin" (FineWeb-style shards)
  c.data.train_glob = FieldReference(None, field_type=str)  # for source="bin"
  c.data.val_glob = FieldReference(None, field_type=str)  # for source="bin"
  # None: $SOJ_CACHE_DIR, else ~/.cache/second_order_jax (shared by every run on the machine)
  c.data.cache_dir = FieldReference(None, field_type=str)
  c.data.seq_len = 128

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 3e-3
  # A second peak learning rate for the embeddings, the output head and the vectors (norm
  # scales, biases): Muon's AdamW group; the hidden matrices keep learning_rate. The trainer
  # splits the tree with optax.partition (train_state.TRAINER_KEYS), for any optimizer; both
  # rates get the schedule. None: one learning rate for every parameter.
  c.optimizer.embed_learning_rate = FieldReference(None, field_type=float)
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.95
  c.optimizer.eps = 1e-8
  c.optimizer.weight_decay = 0.0

  c.schedule = ml_collections.ConfigDict()
  c.schedule.name = "warmup_cosine"  # "warmup_cosine", "wsd" or "constant"
  c.schedule.warmup_steps = 50
  c.schedule.final_lr_fraction = 0.0  # lr at the last step, as a fraction of the peak
  c.schedule.decay_fraction = 0.2  # wsd only: fraction of the steps spent decaying
  # Linear scaling rule with gradual warmup (Goyal et al. 2017, arXiv 1706.02677): every peak
  # learning rate is multiplied by train.batch_size / base_batch_size, so changing the batch
  # keeps the tuned rates (set for batch 32) in step. None turns the rule off.
  c.schedule.base_batch_size = FieldReference(32, field_type=int)
  # How peak rates follow the batch: "linear" (Goyal et al.; SGD), "sqrt" (Malladi et al. 2022,
  # arXiv 2205.10287; the usual rule for Adam-type methods) or "none".
  c.schedule.lr_scaling = "sqrt"

  c.train = ml_collections.ConfigDict()
  c.train.steps = 800
  # End this invocation after this step (checkpointing first); rerunning resumes. For job slots
  # shorter than the run. The schedule still spans `steps`.
  c.train.stop_at_step = FieldReference(None, field_type=int)
  # Branched cooldowns (Hägele et al. 2024, arXiv 2405.18392; experiments/training/budgets.py):
  # sorted step counts, the longest == steps, schedule "wsd". Each shorter budget's cooldown
  # forks off the main run where its decay would start, and its final validation loss is
  # recorded (budgets.jsonl; `budget_metrics` in the summary). Empty: off.
  c.train.budgets = ()
  c.train.batch_size = 32  # global batch, in sequences
  c.train.grad_accum_steps = 1
  # GPipe (mesh.stage > 1): each accumulation step's rows go through the pipeline in this many
  # micro-batches; bubble fraction (stage - 1) / (microbatches + stage - 1).
  c.train.microbatches = 1
  c.train.grad_clip_norm = FieldReference(None, field_type=float)
  c.train.eval_every = 100
  # Comparisons: the first eval step at or below this validation loss is logged as
  # `steps_to_target` (in metrics.jsonl); with stop_at_target the run ends there.
  c.train.target_val_loss = FieldReference(None, field_type=float)
  c.train.stop_at_target = False
  c.train.eval_batches = 16
  c.train.log_every = 25
  c.train.checkpoint_every = 200
  # Also checkpoint at the first step after this many wall-clock seconds since the last
  # checkpoint (bounds what a killed run loses, however slow its steps); 0: only by steps.
  c.train.checkpoint_every_s = 0.0
  c.train.keep_checkpoints = FieldReference(3, field_type=int)  # None: keep every checkpoint
  # A resume under changed settings that alter the trajectory (lr, batch, schedule, steps, data,
  # ...) is an error listing the differences; True continues under the new values and records
  # the change in run.json and metrics.jsonl.
  c.train.allow_config_change = False
  # Skip (do not apply) a step whose loss or update holds NaN/Inf, counting it in metrics.jsonl
  # (`skipped`); stop after more than max_consecutive_skips in a row.
  c.train.skip_nonfinite_updates = False
  c.train.max_consecutive_skips = 10
  # Warn (with what to do) when no step has finished for this long; 0: never.
  c.train.stall_warning_s = 600.0

  # "jit" (one jitted step over a device mesh; the main path) or "pmap" (replicated data
  # parallelism with jax.pmap: every local device holds the whole state).
  c.parallelism = "jit"
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # data parallel: batch rows split, params and states replicated
  # ZeRO-3: params and every optimizer state split over this axis too
  # (experiments/parallel/sharding.py);
  # -1 on either axis: every device the other leaves.
  c.mesh.fsdp = 1
  # Tensor parallel (Megatron): attention heads and MLP units split over this many devices.
  c.mesh.model = 1
  # Pipeline parallel (GPipe): the blocks split into this many contiguous stages.
  c.mesh.stage = 1

  # Gradient compression for data parallelism (PowerSGD, top-k, sign; error feedback):
  # experiments/parallel/compression.py. "none": the plain all-reduce.
  c.compression = compression.default_config()

  # Multi-process runs (jax.distributed): see experiments/parallel/distributed.py and
  # scripts/launch_local.py. enabled=True with no coordinator detects SLURM / TPU pods / MPI.
  c.distributed = distributed.default_config()

  # Fault injection, for testing the non-finite guards: at these steps (comma-separated, e.g.
  # "5,6") the gradient gets a NaN ("nan") or Inf ("inf") element, or becomes 1e30 ("huge").
  c.debug = ml_collections.ConfigDict()
  c.debug.nonfinite_grad_steps = ""
  c.debug.nonfinite_grad_kind = "nan"
  return c
