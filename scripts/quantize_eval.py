r"""Validation loss of a trained GPT before and after post-training weight quantization.

  python -m scripts.quantize_eval --workdir=runs/speedrun_cpu
  python -m scripts.quantize_eval --workdir=runs/speedrun_cpu --block_size=32

Restores the newest intact checkpoint of `workdir` (its run.json gives the config), evaluates
on the run's validation batches, then quantizes every 2-D weight (models/quantize.py: int8 per
output channel, 4-bit in blocks) and evaluates the dequantized weights. The last line is one
JSON object with the losses and storage sizes.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # see experiments/train.py

from absl import app
from absl import flags
import jax
import ml_collections
import numpy as np

from experiments import checkpoints as ckpt_lib
from experiments import data as data_lib
from experiments import trainer
from models import gpt
from models import quantize

_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's directory.", required=True)
_BLOCK = flags.DEFINE_integer("block_size", 64, "Values per 4-bit block.")
_BATCHES = flags.DEFINE_integer("eval_batches", None, "Validation batches (default: the run's).")


def load_params(workdir: str) -> tuple[ml_collections.ConfigDict, dict, int]:
  """(config, params, step) of `workdir`'s newest intact checkpoint."""
  with open(os.path.join(workdir, "run.json")) as f:
    config = ml_collections.ConfigDict(json.load(f)["config"])
  model_cfg = gpt.GPTConfig.from_config(config.model)
  tx, _ = trainer.make_optimizer(config)
  abstract = jax.eval_shape(trainer.make_init_state(model_cfg, tx), int(config.seed))
  checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), None)
  try:
    restored = checkpointer.restore_latest(abstract, {})  # checksums verified on restore
  finally:
    checkpointer.close()
  if restored is None:
    raise app.UsageError(f"no checkpoint in {workdir}/checkpoints")
  step, state, _ = restored
  return config, state["params"], step


def evaluate(config, params, batches) -> float:
  model_cfg = gpt.GPTConfig.from_config(config.model)
  loss = jax.jit(lambda p, b: gpt.loss_fn(model_cfg, p, b))
  return float(np.mean([float(loss(params, b)) for b in batches]))


def main(argv):
  del argv
  config, params, step = load_params(_WORKDIR.value)
  _, val, _ = trainer.make_data(config, _WORKDIR.value, int(config.model.vocab_size))
  n = _BATCHES.value or int(config.train.eval_batches)
  batches = list(data_lib.eval_batches(val, int(config.train.batch_size), n))
  out = {"workdir": _WORKDIR.value, "step": step, "params": gpt.num_params(params),
         "float32": {"val_loss": evaluate(config, params, batches),
                     "bytes": quantize.storage_bytes(params)}}
  for method in ("int8", "int4"):
    q = quantize.quantize_params(params, method, _BLOCK.value)
    loss = evaluate(config, quantize.dequantize_params(q), batches)
    out[method] = {"val_loss": loss, "delta": loss - out["float32"]["val_loss"],
                   "bytes": quantize.storage_bytes(q)}
  print(f"step {step}: float32 val {out['float32']['val_loss']:.4f} "
        f"({out['float32']['bytes'] / 2**20:.2f} MiB)")
  for method in ("int8", "int4"):
    r = out[method]
    print(f"{method:5} val {r['val_loss']:.4f} (delta {r['delta']:+.4f}), "
          f"{r['bytes'] / 2**20:.2f} MiB")
  out["block_size"] = _BLOCK.value
  print(json.dumps(out))


if __name__ == "__main__":
  app.run(main)
