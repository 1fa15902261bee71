"""LoRA fine-tuning through the trainer: adapters trained, the base run's weights frozen.

LoRA (Hu et al. 2021, arXiv 2106.09685) as a workload: `lora_workload(config, workload)` turns
the GPT workload of `config` into one whose parameters are the adapters (models/lora.py) and
whose loss and eval functions take the frozen base weights as an extra argument
(`Workload.frozen`). The trainer passes frozen arguments to its jitted step without donating
them and never hands them to the optimizer, so the base gets no gradient, no optimizer state,
and no copy in the run's checkpoints (which hold adapters and their states only). The base
comes from the newest intact checkpoint of `config.lora.base_workdir`; its checksums go into
the fingerprint, so a resume against another base is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

import jax
import ml_collections

from experiments.training import checkpoints as ckpt_lib
from experiments.training import train_state
from experiments.training import validate as validate_lib
from models import gpt
from models import lora

# Model fields that may differ between the base run and the fine-tuning run: they change how
# the same weights are computed with, not their shapes.
_FREE_MODEL_FIELDS = ("remat", "dtype")


def restore_params(workdir: str) -> tuple[ml_collections.ConfigDict, Any, int]:
  """(config, params, step) of the newest intact checkpoint of a training run's `workdir`.

  Raises `validate.ConfigError` when `workdir` holds no run or no checkpoint.
  """
  try:
    with open(os.path.join(workdir, "run.json")) as f:
      config = ml_collections.ConfigDict(json.load(f)["config"])
  except (OSError, ValueError, KeyError) as e:
    raise validate_lib.ConfigError(
        f"{workdir!r} is not a training run's workdir (its run.json cannot be read: {e})") from e
  model_cfg = gpt.GPTConfig.from_config(config.model)
  tx, _ = train_state.make_optimizer(config)
  abstract = jax.eval_shape(train_state.make_init_state(model_cfg, tx), int(config.seed))
  checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), None)
  try:
    restored = checkpointer.restore_latest(abstract, {})  # checksums verified on restore
  finally:
    checkpointer.close()
  if restored is None:
    raise validate_lib.ConfigError(f"no checkpoint in {workdir}/checkpoints")
  step, state, _ = restored
  return config, state["params"], step


def _check_model(base_model: ml_collections.ConfigDict, model: ml_collections.ConfigDict,
                 where: str) -> None:
  a, b = base_model.to_dict(), model.to_dict()
  diff = {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
          if k not in _FREE_MODEL_FIELDS and a.get(k) != b.get(k)}
  if diff:
    detail = "; ".join(f"model.{k}: base {x!r}, config {y!r}" for k, (x, y) in diff.items())
    raise validate_lib.ConfigError(
        f"lora.base_workdir={where!r} trained another model shape ({detail}); set the model "
        "section to the base run's")


def lora_workload(config: ml_collections.ConfigDict, workload):
  """`workload` (a GPT workload) fine-tuned with LoRA adapters on the base `config.lora` names.

  Parameters: the adapters {"blocks": {i: {target: {"a", "b"}}}}; frozen: (base params,).
  """
  c = config.lora
  where = c.get("base_workdir")
  if not where:
    raise validate_lib.ConfigError(
        "lora.base_workdir is not set: pass the --workdir of the run to fine-tune, e.g. "
        "--config.lora.base_workdir=runs/speedrun_cpu")
  if (config.get("compression") or {}).get("kind", "none") != "none":
    raise validate_lib.ConfigError("lora: gradient compression is not supported with LoRA")
  try:
    lcfg = lora.LoRAConfig.from_config(c)
  except ValueError as e:
    raise validate_lib.ConfigError(str(e)) from e
  base_config, base, base_step = restore_params(where)
  _check_model(base_config.model, config.model, where)
  digest = hashlib.sha256(json.dumps(ckpt_lib.checksums(base), sort_keys=True).encode())
  base_loss = workload.loss_fn

  def loss_fn(adapters, batch, frozen):
    return base_loss(lora.apply_lora(frozen, adapters, lcfg), batch)

  def eval_fn(adapters, batch, frozen):
    return workload.eval_fn(lora.apply_lora(frozen, adapters, lcfg), batch)

  lora_info = {"rank": lcfg.rank, "alpha": lcfg.alpha, "targets": list(lcfg.targets),
               "base_workdir": os.path.abspath(where), "base_step": base_step,
               "base_params": gpt.num_params(base),
               "adapter_params": lora.num_adapter_params(base, lcfg)}
  return dataclasses.replace(
      workload,
      init_params=lambda key: lora.init_adapters(base, lcfg, key),  # reads shapes only
      loss_fn=loss_fn, eval_fn=eval_fn, frozen=(base,),
      # The adapters declare no logical axes: LoRA runs on data and fsdp meshes only (the trainer
      # refuses mesh.model / mesh.stage > 1 for a workload without them).
      logical_axes=None,
      info=dict(workload.info, lora=lora_info),
      fingerprint=dict(workload.fingerprint,
                       lora={"rank": lcfg.rank, "alpha": lcfg.alpha,
                             "targets": list(lcfg.targets), "base": digest.hexdigest()}))
