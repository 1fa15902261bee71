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

from absl import flags
import jax
import numpy as np

from experiments import configs_util
from experiments.problems import finetune
from experiments.problems import workloads
from models import gpt
from models import quantize

_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's directory.", required=True)
_BLOCK = flags.DEFINE_integer("block_size", 64, "Values per 4-bit block.")
_BATCHES = flags.DEFINE_integer("eval_batches", None, "Validation batches (default: the run's).")


def evaluate(config, params, batches) -> float:
  model_cfg = gpt.GPTConfig.from_config(config.model)
  loss = jax.jit(lambda p, b: gpt.loss_fn(model_cfg, p, b))
  return float(np.mean([float(loss(params, b)) for b in batches]))


def main(argv):
  del argv
  config, params, step = finetune.restore_params(_WORKDIR.value)
  if _BATCHES.value:
    config.train.eval_batches = _BATCHES.value
  batches = workloads.build(config, _WORKDIR.value).eval_batches()  # the trainer's validation set
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
  configs_util.run(main)
