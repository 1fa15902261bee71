"""Orbax checkpoints of the train state, with clear errors for damaged or mismatched ones.

A checkpoint holds the train state pytree (params, optimizer state, step, RNG) and a JSON
record (data-iterator position and a fingerprint of what must not change across a resume:
model shape, optimizer name, data source). A checkpoint that cannot be read, or that belongs to
another configuration, raises `CheckpointError`: a run never silently restarts from step 0.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  pass


class Checkpointer:

  def __init__(self, directory: str, keep: int):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=False)
    try:
      self._manager = ocp.CheckpointManager(self.directory, options=options)
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f"cannot open checkpoint directory {self.directory}: {e}") from e

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, record: dict) -> None:
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)), force=True)
    self._manager.wait_until_finished()

  def restore(self, step: int, abstract_state: Any, fingerprint: dict) -> tuple[Any, dict]:
    """Restores `step` into the structure, shapes and shardings of `abstract_state`."""
    where = os.path.join(self.directory, str(step))
    try:
      out = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), record=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f"checkpoint {where} is corrupt or incompatible with this config and cannot be "
          f"restored ({type(e).__name__}: {e}). Refusing to restart from step 0: move the "
          f"checkpoint away or use another --workdir.") from e
    record = out["record"]
    saved = record.get("fingerprint", {})
    diffs = {k: (saved.get(k), v) for k, v in fingerprint.items() if saved.get(k) != v}
    if diffs:
      detail = "; ".join(f"{k}: checkpoint has {a!r}, config has {b!r}" for k, (a, b) in diffs.items())
      raise CheckpointError(f"checkpoint {where} was written by an incompatible run ({detail}). "
                            "Use another --workdir or the original config.")
    state = out["state"]
    got = jax.tree.map(lambda x: (x.shape, x.dtype), state)
    want = jax.tree.map(lambda x: (x.shape, x.dtype), abstract_state)
    if jax.tree.structure(state) != jax.tree.structure(abstract_state) or got != want:
      raise CheckpointError(f"checkpoint {where} holds arrays whose shapes or dtypes differ "
                            "from this config's")
    return state, record

  def close(self) -> None:
    self._manager.close()
