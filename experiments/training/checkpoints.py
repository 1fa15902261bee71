"""Orbax checkpoints of the train state, verified on restore.

A checkpoint holds the train state pytree (params, optimizer state, step, RNG) and a JSON record:
the data-iterator position, a fingerprint of what must not change across a resume (model shape,
optimizer name, data), the resolved config, and a checksum of every array.

Integrity: each array's checksum is two position-weighted sums of its raw bits, modulo 2^32,
computed on the devices that hold it (so it works on sharded and multi-host arrays and costs one
reduction per checkpoint). Any change of one element changes the first sum (its weight is odd,
hence invertible modulo 2^32). On restore the checksums are recomputed from the restored arrays:
a checkpoint that orbax cannot read or whose arrays differ is *damaged*. `restore_latest` then
moves it aside (`<workdir>/checkpoints_damaged/`, kept for inspection), warns loudly and tries the
next older one: resumes are deterministic, so restarting from an older checkpoint loses nothing
but time. If none is intact, it raises. A checkpoint written by another configuration is never
skipped over: that is an error (`CheckpointMismatchError`). Orbax has no content verification of
its own (it checks metadata, not values), hence the checksums here.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """No usable checkpoint: the message says which and what to do."""


class CheckpointMismatchError(CheckpointError):
  """The checkpoint belongs to another configuration."""


class _Damaged(Exception):
  pass


class StorageError(OSError):
  """The workdir cannot be written (no space, read-only, no permission, not a directory): one
  line naming the path, the cause and what to do. The trainer exits with status 3."""

  def __init__(self, code: int, message: str):
    super().__init__(code, message)
    self.message = message

  def __str__(self) -> str:
    return self.message


_STORAGE_HINTS = {
    errno.ENOSPC: "free some space there (df -h) and rerun the same command",
    errno.EDQUOT: "the disk quota is used up: free some space and rerun the same command",
    errno.EROFS: "the file system is mounted read-only: use a --workdir on a writable one",
    errno.EACCES: "no permission to write there: use another --workdir, or fix its owner and "
                  "mode",
    errno.EPERM: "the operation is not permitted (an immutable directory? `lsattr -d` shows "
                 "it): use another --workdir, or `chattr -i` it",
    errno.EEXIST: "a file (not a directory) is in the way: use another --workdir, or move the "
                  "file",
    errno.ENOTDIR: "a path component is a file, not a directory: use another --workdir",
    errno.EISDIR: "a directory is where a file should be: use another --workdir",
    errno.EIO: "the device reported an I/O error: check the disk, then rerun the same command",
    errno.EFBIG: "a file grew past the file system's size limit: use another --workdir",
}
_STORAGE_TEXT = {"No space left on device": errno.ENOSPC, "Read-only file system": errno.EROFS,
                 "Permission denied": errno.EACCES, "Disk quota exceeded": errno.EDQUOT}


def storage_error(error: BaseException, path: str, doing: str) -> StorageError | None:
  """`error` as a one-line StorageError when a filesystem failure caused it (an OSError in its
  chain, or orbax's / TensorStore's text of one); None when it is something else."""
  code, e = None, error
  while e is not None and code is None:
    if isinstance(e, StorageError):
      return e
    if isinstance(e, OSError) and e.errno in _STORAGE_HINTS:
      code, path = e.errno, e.filename or path
    e = e.__cause__ or e.__context__
  text = str(error)
  if code is None:
    found = re.search(r"os_error_code='?(\d+)", text)
    code = int(found.group(1)) if found else next(
        (c for t, c in _STORAGE_TEXT.items() if t in text), None)
  if code not in _STORAGE_HINTS:
    return None
  return StorageError(code, f"cannot {doing} {path}: {os.strerror(code)}; {_STORAGE_HINTS[code]}")


# The real stderr's descriptor once a failed save pointed descriptor 2 at /dev/null.
_real_stderr: int | None = None


def real_stderr() -> int:
  """The descriptor that reaches the user's stderr (see `_stderr_held`)."""
  return 2 if _real_stderr is None else _real_stderr


@contextlib.contextmanager
def _stderr_held():
  """Holds back what is written to file descriptor 2 during a save; yields a list that gets the
  text, for the caller to replay. When the save fails on the filesystem, orbax's and
  TensorStore's threads go on printing tracebacks ("Event loop is closed", ...) until the
  process ends: descriptor 2 then stays on /dev/null and `real_stderr()` is the user's stderr,
  where the one-line report goes."""
  global _real_stderr
  held: list[str] = []
  try:
    sys.stderr.flush()
    saved, spool = os.dup(2), tempfile.TemporaryFile()
  except OSError:  # no file descriptors or no temporary space: do not hold anything
    yield held
    return
  os.dup2(spool.fileno(), 2)
  restore = True
  try:
    yield held
  except BaseException as e:
    if storage_error(e, "", "") is not None and _real_stderr is None:
      devnull = os.open(os.devnull, os.O_WRONLY)
      os.dup2(devnull, 2)
      os.close(devnull)
      _real_stderr, restore = saved, False
    raise
  finally:
    sys.stderr.flush()
    if restore:
      os.dup2(saved, 2)
      os.close(saved)
    spool.seek(0)
    held.append(spool.read().decode(errors="replace"))
    spool.close()


# ---------------------------------------------------------------------------------------------
# Checksums.

_MIX = np.uint32(0x9E3779B1)  # 2^32 / golden ratio, odd: a multiplicative hash of the position


def _as_u32(x: jax.Array) -> jax.Array:
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  bits = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}.get(x.dtype.itemsize)
  if bits is None:  # 8-byte types: both halves
    return jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)
  return jax.lax.bitcast_convert_type(x, bits).astype(jnp.uint32).reshape(-1)


def _leaf_checksum(x: jax.Array) -> jax.Array:
  u = _as_u32(x)
  i = jnp.arange(u.size, dtype=jnp.uint32)
  odd = 2 * i + 1
  return jnp.stack([jnp.sum(u * odd, dtype=jnp.uint32),
                    jnp.sum((u ^ (i * _MIX)) * (odd * _MIX), dtype=jnp.uint32)])


@jax.jit
def _checksums(tree):
  return jax.tree.map(_leaf_checksum, tree)


def checksums(tree: Any) -> dict[str, list[int]]:
  """{leaf path: [sum1, sum2]} of every array in `tree` (see the module docstring)."""
  sums = jax.device_get(_checksums(tree))
  flat = jax.tree_util.tree_flatten_with_path(sums)[0]
  return {jax.tree_util.keystr(path): [int(v) for v in np.asarray(leaf)] for path, leaf in flat}


# ---------------------------------------------------------------------------------------------
# The state's handler: orbax's standard one, saving jax.Arrays one replica per shard.
#
# Orbax's ArrayHandler defaults to replica-parallel saves everywhere but on GPU: the replicas of a
# shard each write a slice of it, cut on device by `jax.lax.slice_in_dim`, one small `jit(slice)`
# compilation per distinct shape and replica (48 of them, about 2.6 s, in a save of the 2-layer CPU
# speedrun on 8 devices). Here replica 0 of each shard writes all of it instead, orbax's choice on
# GPU: one process or many, every shard is written exactly once by the process holding its replica
# 0, so it is correct on every backend; the checkpoint's format and values are the same.
#
# StandardCheckpointHandler takes no type-handler registry but does all its work through a
# PyTreeCheckpointHandler (`_impl`), which does; so a local registry goes there rather than into
# orbax's global one (no effect on other orbax users in the process). Should a later orbax hold
# something else there, the default handler is kept: slower saves, the same checkpoints.


def _state_registry() -> Any:
  # Orbax's default jax.Array handler writes per-process array metadata with this store.
  from orbax.checkpoint._src.metadata import array_metadata_store  # pylint: disable=g-import-not-at-top
  array_handler = ocp.type_handlers.ArrayHandler(
      use_replica_parallel=False, array_metadata_store=array_metadata_store.Store())
  others = [(ty, ocp.type_handlers.get_type_handler(ty))
            for ty in (int, float, bytes, np.number, np.ndarray, str)]
  return ocp.type_handlers.create_type_handler_registry((jax.Array, array_handler), *others)


def _state_handler() -> ocp.StandardCheckpointHandler:
  handler = ocp.StandardCheckpointHandler()
  if isinstance(getattr(handler, "_impl", None), ocp.PyTreeCheckpointHandler):
    handler._impl = ocp.PyTreeCheckpointHandler(  # pylint: disable=protected-access
        save_concurrent_gb=96, restore_concurrent_gb=96,  # StandardCheckpointHandler's defaults
        type_handler_registry=_state_registry())
  else:
    logging.warning("orbax %s: StandardCheckpointHandler has no PyTreeCheckpointHandler to give "
                    "a type-handler registry; checkpoints save replica-parallel (slower).",
                    getattr(ocp, "__version__", "?"))
  return handler


class Checkpointer:
  """Saves and restores `(state, record)` pairs under `directory`, one subdirectory per step."""

  def __init__(self, directory: str, keep: int | None):
    if keep is not None and keep < 1:
      raise ValueError(f"keep must be at least 1 (or None for all), got {keep}")
    self.directory = os.path.abspath(directory)
    self.damaged_dir = self.directory + "_damaged"
    # cleanup_tmp_directories: a save cut short (a full disk, a kill) leaves orbax's temporary
    # directory; the next run removes it.
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=False,
                                           cleanup_tmp_directories=True)
    try:
      self._manager = ocp.CheckpointManager(
          self.directory, options=options,
          item_handlers={"state": _state_handler(),
                         "record": ocp.JsonCheckpointHandler()})
    except Exception as e:  # pylint: disable=broad-except
      error = storage_error(e, self.directory, "create the checkpoint directory")
      if error is not None:
        raise error from e
      raise CheckpointError(f"cannot open checkpoint directory {self.directory}: {e}") from e

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, record: dict) -> None:
    """Saves checkpoint `step`. On a filesystem failure (a full disk, ...) the partial
    checkpoint is removed, so the previous one stays the newest, and `StorageError` says so."""
    record = dict(record, checksums=checksums(state))
    try:
      with _stderr_held() as held:
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)), force=True)
        self._manager.wait_until_finished()
        if jax.process_index() == 0:
          self._write_file_hashes(step)
    except Exception as e:  # pylint: disable=broad-except
      error = storage_error(e, self.directory, f"save checkpoint {step} in")
      if error is None:
        sys.stderr.write("".join(held))
        raise
      self._discard(step)
      raise error from e
    sys.stderr.write("".join(held))
    if jax.process_index() == 0:
      self._prune_file_hashes()

  def _discard(self, step: int) -> None:
    """Removes what a failed save of `step` left (orbax's temporary directory, the step)."""
    if jax.process_index() == 0:
      for path in [os.path.join(self.directory, str(step)), self._hash_path(step),
                   *glob.glob(os.path.join(self.directory, f"{step}.orbax-checkpoint-tmp*"))]:
        if os.path.isdir(path):
          shutil.rmtree(path, ignore_errors=True)
        elif os.path.exists(path):
          with contextlib.suppress(OSError):
            os.remove(path)
    with contextlib.suppress(Exception):
      self._manager.reload()

  def _prune_file_hashes(self) -> None:
    """Drops the hash files of checkpoints that `keep_checkpoints` pruned."""
    kept = {f"{s}.json" for s in self.all_steps()}
    with contextlib.suppress(OSError):
      for name in os.listdir(self.directory + "_hashes"):
        if name.endswith(".json") and name not in kept:
          os.remove(os.path.join(self.directory + "_hashes", name))

  # File hashes, checked before orbax opens anything: a checkpoint whose files were damaged is
  # rejected without handing garbage to TensorStore (whose failed reads leave asyncio callbacks
  # behind). The array checksums above still catch what the file hashes cannot (no hash file).
  def _hash_path(self, step: int) -> str:
    return os.path.join(self.directory + "_hashes", f"{step}.json")

  def _file_hashes(self, step: int) -> dict[str, str]:
    root = os.path.join(self.directory, str(step))
    out = {}
    for dirpath, _, files in os.walk(root):
      for f in sorted(files):
        path = os.path.join(dirpath, f)
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
          for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
        out[os.path.relpath(path, root)] = digest.hexdigest()
    return out

  def _write_file_hashes(self, step: int) -> None:
    path = self._hash_path(step)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
      json.dump(self._file_hashes(step), f)
    os.replace(path + ".tmp", path)

  def _check_file_hashes(self, step: int) -> None:
    try:
      with open(self._hash_path(step)) as f:
        want = json.load(f)
    except (OSError, ValueError):
      return  # written before file hashes: the array checksums decide
    got = self._file_hashes(step)
    bad = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
    if bad:
      raise _Damaged(f"{len(bad)} file(s) differ from their saved hashes, e.g. {bad[0]}")

  def restore_latest(self, abstract_state: Any, fingerprint: dict
                     ) -> tuple[int, Any, dict] | None:
    """(step, state, record) of the newest intact checkpoint; None if there is no checkpoint.

    Damaged checkpoints are moved aside with a warning; a mismatched one raises.
    """
    steps = self.all_steps()
    if not steps:
      return None
    damaged = []
    for step in reversed(steps):
      try:
        state, record = self._restore(step, abstract_state, fingerprint)
      except _Damaged as e:
        damaged.append(step)
        moved = self._move_aside(step)
        logging.warning(
            "CHECKPOINT DAMAGED: step %d (%s). Moved to %s; trying an older checkpoint (the "
            "run is deterministic, so resuming from an older step loses only time).",
            step, e, moved)
        continue
      return step, state, record
    raise CheckpointError(
        f"every checkpoint in {self.directory} is damaged (steps {sorted(damaged)}, moved to "
        f"{self.damaged_dir}); refusing to restart from step 0. Use another --workdir to start "
        "over.")

  def _restore(self, step: int, abstract_state: Any, fingerprint: dict) -> tuple[Any, dict]:
    where = os.path.join(self.directory, str(step))
    self._check_file_hashes(step)
    try:
      record = self._manager.restore(step, args=ocp.args.Composite(
          record=ocp.args.JsonRestore()))["record"]
    except Exception as e:  # pylint: disable=broad-except
      raise _Damaged(f"its record cannot be read: {_one_line(e)}") from e
    if not isinstance(record, dict):
      raise _Damaged("its record is not a JSON object")
    check_fingerprint(record.get("fingerprint", {}), fingerprint, where)
    try:
      meta = self._manager.item_metadata(step)["state"]
      if meta is None:
        raise ValueError("no metadata")
      saved_layout = _layout(getattr(meta, "tree", meta))
    except Exception as e:  # pylint: disable=broad-except
      raise _Damaged(f"its array metadata cannot be read: {_one_line(e)}") from e
    want_layout = _layout(abstract_state)
    if saved_layout != want_layout:
      diff = sorted(set(saved_layout.items()) ^ set(want_layout.items()))[:3]
      raise CheckpointMismatchError(
          f"checkpoint {where} holds a train state of another structure, shapes or dtypes than "
          f"this config's (e.g. {diff}). Use the config that wrote it, or another --workdir.")
    try:
      state = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state)))["state"]
    except Exception as e:  # pylint: disable=broad-except
      raise _Damaged(f"orbax cannot read its arrays: {_one_line(e)}") from e
    saved = record.get("checksums")
    if saved is None:
      logging.warning("Checkpoint %s has no checksums (written before integrity checks); "
                      "its values cannot be verified.", where)
    else:
      now = checksums(state)
      bad = sorted(k for k in now if saved.get(k) != now[k])
      if bad or set(saved) != set(now):
        raise _Damaged(f"{len(bad)} array(s) differ from their saved checksums, e.g. "
                       f"{', '.join(bad[:3])}")
    return state, record

  def _move_aside(self, step: int) -> str:
    src = os.path.join(self.directory, str(step))
    os.makedirs(self.damaged_dir, exist_ok=True)
    dst = os.path.join(self.damaged_dir, f"{step}.{time.strftime('%Y%m%d-%H%M%S')}")
    if jax.process_index() == 0 and os.path.exists(src):
      shutil.move(src, dst)
    self._manager.reload()
    return dst

  def close(self) -> None:
    try:
      self._manager.close()
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("Closing the checkpoint manager of %s failed: %s", self.directory,
                      _one_line(e))


def latest_step_on_disk(directory: str) -> int | None:
  """The newest step directory under `directory` (orbax's temporary ones aside), without orbax."""
  try:
    steps = [int(d) for d in os.listdir(directory) if d.isdigit()]
  except OSError:
    return None
  return max(steps) if steps else None


def check_fingerprint(saved: dict, current: dict, where: str) -> None:
  # The saved one went through JSON (tuples became lists): compare like with like.
  current = json.loads(json.dumps(current, default=str))
  diffs = {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v}
  if diffs:
    detail = "; ".join(f"{k}: checkpoint has {a!r}, config has {b!r}"
                       for k, (a, b) in diffs.items())
    raise CheckpointMismatchError(
        f"checkpoint {where} was written by an incompatible run ({detail}). Use another "
        "--workdir or the original config.")


def _layout(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
  """{normalized leaf path: (shape, dtype)}; named tuples and dicts, tuples and lists alike."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    key = "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)
    dtype = leaf.dtype
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
      dtype = jax.random.key_data(leaf).dtype
    out[key] = (tuple(leaf.shape), str(np.dtype(dtype)))
  return out


def _one_line(e: Exception, limit: int = 300) -> str:
  """An exception as one short line (TensorStore errors embed multi-line JSON specs)."""
  text = " ".join(str(e).split())
  return f"{type(e).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"
