"""Workloads: what the one trainer trains, as data and pure functions (AlgoPerf's split).

A `Workload` is built from a config (`build(config, workdir)`, keyed by `config.workload`) and
gives the trainer everything that depends on the problem:

  params = w.init_params(key)                        # plain pytree
  loss = w.loss_fn(params, batch, *w.frozen)         # mean over the batch's leading axis
  rows = w.train_batch(seed, step, process_index, process_count)  # this process's rows (host)
  val = w.eval_batches(process_index, process_count)  # fixed list of host pytrees
  metric = mean(w.eval_fn(params, b, *w.frozen) for b in val)  # lower is better: w.target

Batches are pytrees of NumPy arrays sharing a leading example axis of `batch_size` rows
(globally), a pure function of (seed, step): a resumed run sees the batches it would have seen,
and the trainer splits the axis into `[grad_accum_steps, micro]` and over the `data` mesh axis.
Every process computes the same global row indices and keeps rows
`[pi * B / pc, (pi + 1) * B / pc)`, as `data.BatchIterator` does.

Workloads: `speedrun` (the CPU speedrun's byte-level GPT on the stdlib corpus, exactly as the
trainer built it), `gpt_deep` (a deeper, narrower GPT with shorter context on the same corpus),
`mds` (multidimensional scaling of generated points), `logreg` (L2-regularized logistic
regression on scikit-learn's bundled breast-cancer set; metric: suboptimality f(x) - f*) and
`mlp_digits` (an MLP on scikit-learn's bundled 8x8 digits; metric: validation error rate).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from experiments.problems import data as data_lib
from experiments.problems import finetune
from experiments.parallel import memory
from experiments.parallel import pipeline
from models import gpt
from models import small

Batch = Any
Params = Any


@dataclasses.dataclass(frozen=True)
class Workload:
  """A training problem: model, loss, data and the validation target (see the module doc)."""
  name: str
  init_params: Callable[[jax.Array], Params]
  loss_fn: Callable[[Params, Batch], jax.Array]
  train_batch: Callable[..., Batch]  # (seed, step, process_index=0, process_count=1)
  eval_batches: Callable[..., list]  # (process_index=0, process_count=1)
  eval_fn: Callable[[Params, Batch], jax.Array]
  metric: str  # name of the validation metric, e.g. "val_loss"
  target: float | None  # the run has reached its goal once the metric is <= target
  step_budget: int
  batch_size: int  # global rows per step
  items_per_step: int  # tokens (text) or examples: the throughput unit
  info: dict  # for run.json: data source and content hash
  fingerprint: dict  # what a checkpoint must agree on to be resumed
  # params -> logical axis names per parameter, for tensor / pipeline parallel shardings
  # (experiments/parallel/sharding.py); None: the workload supports data and fsdp only.
  logical_axes: Callable[[Params], Any] | None = None
  # Arrays every loss_fn / eval_fn call gets after the batch, never trained nor donated (LoRA's
  # frozen base weights, experiments/problems/finetune.py).
  frozen: tuple = ()

  def batches(self, seed: int, position: int = 0, process_index: int = 0,
              process_count: int = 1) -> "BatchStream":
    return BatchStream(self, seed, position, process_index, process_count)


class BatchStream(data_lib.BatchIterator):
  """`train_batch` as an iterator whose state is its position (BatchIterator's own state)."""

  def __init__(self, workload: Workload, seed: int, position: int = 0, process_index: int = 0,
               process_count: int = 1):  # pylint: disable=super-init-not-called
    if workload.batch_size % process_count:
      raise ValueError(f"batch_size {workload.batch_size} is not divisible by "
                       f"{process_count} processes")
    self.workload, self.seed, self.position = workload, seed, position
    self._where = (process_index, process_count)

  def batch_at(self, step: int) -> Batch:
    return self.workload.train_batch(self.seed, step, *self._where)


def local_rows(batch_size: int, process_index: int, process_count: int) -> slice:
  return slice(process_index * batch_size // process_count,
               (process_index + 1) * batch_size // process_count)


def _take(tree: Batch, rows: slice) -> Batch:
  return jax.tree.map(lambda a: a[rows], tree)


_BUILDERS: dict[str, Callable[[ml_collections.ConfigDict, str], Workload]] = {}


def _register(*names: str):
  def wrap(fn):
    for n in names:
      _BUILDERS[n] = fn
    return fn
  return wrap


def names() -> list[str]:
  return sorted(_BUILDERS)


def build(config: ml_collections.ConfigDict, workdir: str) -> Workload:
  """The workload `config.workload` names (default `speedrun`), set up as `config` says."""
  name = config.get("workload", "speedrun")
  if name not in _BUILDERS:
    raise ValueError(f"Unknown workload {name!r}; known workloads: {', '.join(names())}")
  workload = _BUILDERS[name](config, workdir)
  if config.get("lora") is not None:  # adapters on a frozen base run's weights
    workload = finetune.lora_workload(config, workload)
  return workload


def _budget_and_target(config) -> dict:
  target = config.train.get("target_val_loss")
  return {"step_budget": int(config.train.steps),
          "target": None if target is None else float(target),
          "batch_size": int(config.train.batch_size)}


# ---------------------------------------------------------------------------------------------
# Byte-level GPT on a token corpus.

def token_sources(config, workdir: str, vocab_size: int):
  """(train source, val source, description for run.json) from `config.data`."""
  window = config.data.seq_len + 1
  kind = config.data.source
  if kind in data_lib.KINDS:  # built-in: "stdlib" (.py sources) or "stdlib_docs" (prose)
    del workdir  # the corpus is cached once per machine, not copied into every workdir
    cache = config.data.get("cache_dir")
    corpus = (data_lib.build_stdlib_corpus(cache, kind=kind) if cache else
              data_lib.cached_stdlib_corpus(kind=kind))
    cache = os.path.dirname(corpus.train_files[0])
    train = data_lib.TokenSource(corpus.train_files, vocab_size, window)
    val = data_lib.TokenSource(corpus.val_files, vocab_size, window)
    info = {"source": kind, "sha256": corpus.sha256, "train_tokens": corpus.num_train_tokens,
            "val_tokens": corpus.num_val_tokens, "dir": cache}
  elif config.data.source == "bin":
    if not config.data.train_glob or not config.data.val_glob:
      raise ValueError("data.source='bin' needs data.train_glob and data.val_glob")
    train_files = data_lib.resolve_glob(config.data.train_glob)
    val_files = data_lib.resolve_glob(config.data.val_glob)
    train = data_lib.TokenSource(train_files, vocab_size, window)
    val = data_lib.TokenSource(val_files, vocab_size, window)
    # Hashing 10B tokens would take minutes; name the files and sizes instead, hash val fully.
    info = {"source": "bin", "train_files": train_files,
            "train_tokens": int(sum(len(s) for s in train.shards)),
            "val_files": val_files, "val_sha256": data_lib.shards_hash(val_files)}
  else:
    raise ValueError(f"Unknown data.source {config.data.source!r}; choose from "
                     f"{', '.join([*data_lib.KINDS, 'bin'])}")
  return train, val, info


@_register("speedrun", "gpt_deep")
def _gpt_workload(config, workdir: str) -> Workload:
  model_values = config.model.to_dict()
  if config.get("precision"):  # bf16 compute, float32 master weights and states
    model_values["dtype"] = memory.model_dtype(config.precision)
  model_cfg = gpt.GPTConfig.from_config(model_values)
  seq_len = int(config.data.seq_len)
  if seq_len > model_cfg.max_seq_len:
    raise ValueError(f"data.seq_len={seq_len} > model.max_seq_len={model_cfg.max_seq_len}")
  train_src, val_src, info = token_sources(config, workdir, model_cfg.vocab_size)
  common = _budget_and_target(config)
  accum = int(config.train.grad_accum_steps)
  micro = common["batch_size"] // accum
  num_eval = int(config.train.eval_batches)

  def train_batch(seed, step, process_index=0, process_count=1):
    return data_lib.BatchIterator(train_src, common["batch_size"], seed,
                                  process_index=process_index,
                                  process_count=process_count).batch_at(step)

  @functools.lru_cache(maxsize=None)
  def global_eval():
    # eval_batches x batch_size rows whatever the accumulation, in micro-batch chunks (the
    # memory a train micro-batch needs), so the validation set never depends on the hardware.
    return [chunk for b in data_lib.eval_batches(val_src, common["batch_size"], num_eval)
            for chunk in np.split(b, accum)]

  def eval_batches(process_index=0, process_count=1):
    rows = local_rows(micro, process_index, process_count)
    return [b[rows] for b in global_eval()]

  loss = functools.partial(gpt.loss_fn, model_cfg)
  workload = Workload(
      name=config.get("workload", "speedrun"),
      init_params=functools.partial(gpt.init_params, model_cfg),
      loss_fn=loss, train_batch=train_batch, eval_batches=eval_batches, eval_fn=loss,
      metric="val_loss", items_per_step=common["batch_size"] * seq_len, info=info,
      logical_axes=gpt.logical_axes,
      # Remat changes memory and time, not the math: not part of what a resume must match.
      fingerprint={"model": {k: v for k, v in dataclasses.asdict(model_cfg).items()
                             if k != "remat"}, "data_source": config.data.source,
                   "seq_len": seq_len},
      **common)
  stages = int((config.get("mesh") or {}).get("stage", 1))
  if stages > 1:  # GPipe: stacked blocks, the loss pipelined over the stage axis
    workload = pipeline.pipelined(workload, model_cfg, stages,
                                  int(config.train.get("microbatches", 1)))
  return workload


# ---------------------------------------------------------------------------------------------
# Small problems over an in-memory data set.

def _in_memory(config, name: str, train: dict, val: dict, init_params, loss_fn, eval_fn,
               metric: str, info: dict) -> Workload:
  """A workload whose examples are rows of `train`: full batch if batch_size equals its size,
  otherwise rows drawn with replacement from rng(seed, step)."""
  common = _budget_and_target(config)
  num_train = len(next(iter(train.values())))
  num_val = len(next(iter(val.values())))

  def train_batch(seed, step, process_index=0, process_count=1):
    if common["batch_size"] == num_train:
      idx = np.arange(num_train)
    else:
      idx = np.random.default_rng([seed, step]).integers(0, num_train, common["batch_size"])
    idx = idx[local_rows(common["batch_size"], process_index, process_count)]
    return {k: v[idx] for k, v in train.items()}

  def eval_batches(process_index=0, process_count=1):
    if num_val % process_count:
      raise ValueError(f"{name}: {num_val} validation rows do not split over {process_count}")
    return [_take(val, local_rows(num_val, process_index, process_count))]

  return Workload(name=name, init_params=init_params, loss_fn=loss_fn, train_batch=train_batch,
                  eval_batches=eval_batches, eval_fn=eval_fn, metric=metric,
                  items_per_step=common["batch_size"], info=info,
                  fingerprint={"workload": name, "model": config.model.to_dict(),
                               "data": config.data.to_dict()}, **common)


@_register("mds")
def _mds_workload(config, workdir: str) -> Workload:
  """Points ~ N(0, I) in R^dim from rng(data.points_seed); metric: L(W) / sum_ij D_ij^2.

  Trained on L(W) / n^2 (the mean over pairs): the same minimizers, with gradients whose size
  does not grow with n, so SGD's learning rates sit in the range they have on the other
  workloads (on the raw sum SGD diverged at every lr from 1e-3 to 1).
  """
  del workdir
  n, dim = int(config.model.num_points), int(config.model.dim)
  points = np.random.default_rng(int(config.data.points_seed)).normal(size=(n, dim))
  dist = small.mds_squared_distances(points)
  rows = {"index": np.arange(n, dtype=np.int32), "dist": dist.astype(np.float32)}
  scale = float(np.sum(dist ** 2))

  def relative_stress(params, batch):
    return small.mds_loss(params, batch) / scale

  return _in_memory(
      config, "mds", rows, rows,
      functools.partial(small.mds_init, num_points=n, dim=dim,
                        scale=float(config.model.init_scale)),
      lambda p, b: small.mds_loss(p, b) / n ** 2, relative_stress, "relative_stress",
      {"source": "generated", "num_points": n, "dim": dim,
       "points_seed": int(config.data.points_seed)})


def breast_cancer(num_examples: int) -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's bundled Wisconsin breast-cancer set: standardized features plus a constant
  1 (the bias as a coordinate of x), labels in {-1, +1}; the first `num_examples` rows."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  d = datasets.load_breast_cancer()
  x = d.data[:num_examples].astype(np.float64)
  x = (x - x.mean(0)) / x.std(0)
  a = np.concatenate([x, np.ones((len(x), 1))], axis=1)
  return a, np.where(d.target[:num_examples] == 1, 1.0, -1.0)


def logistic_minimum(a: np.ndarray, y: np.ndarray, mu: float, iters: int = 50) -> float:
  """f* of the L2-regularized logistic loss by Newton's method in float64 (strongly convex)."""
  x = np.zeros(a.shape[1])
  for _ in range(iters):
    z = y * (a @ x)
    s = 1.0 / (1.0 + np.exp(z))  # sigmoid(-z)
    grad = mu * x - a.T @ (y * s) / len(y)
    hess = mu * np.eye(len(x)) + (a.T * (s * (1 - s))) @ a / len(y)
    x = x - np.linalg.solve(hess, grad)
  z = y * (a @ x)
  return float(mu / 2 * x @ x + np.mean(np.logaddexp(0.0, -z)))


@_register("logreg")
def _logreg_workload(config, workdir: str) -> Workload:
  """Metric: suboptimality f(x) - f* of the full objective (f* by Newton in float64)."""
  del workdir
  mu = float(config.model.mu)
  a, y = breast_cancer(int(config.data.num_examples))
  f_star = logistic_minimum(a, y, mu)
  rows = {"a": a.astype(np.float32), "y": y.astype(np.float32)}
  loss = functools.partial(small.logistic_loss, mu=mu)
  return _in_memory(
      config, "logreg", rows, rows,
      functools.partial(small.logistic_init, dim=a.shape[1]), loss,
      lambda p, b: loss(p, b) - f_star, "suboptimality",
      {"source": "sklearn.datasets.load_breast_cancer", "num_examples": len(y),
       "f_star": f_star})


def digits(num_val: int, split_seed: int):
  """scikit-learn's bundled 8x8 digits, pixels scaled to [0, 1]; a fixed random split."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  d = datasets.load_digits()
  perm = np.random.default_rng(split_seed).permutation(len(d.target))
  x, y = (d.data / 16.0).astype(np.float32), d.target.astype(np.int32)
  val, train = perm[:num_val], perm[num_val:]
  return {"x": x[train], "y": y[train]}, {"x": x[val], "y": y[val]}


@_register("mlp_digits")
def _mlp_workload(config, workdir: str) -> Workload:
  """Metric: validation error rate."""
  del workdir
  train, val = digits(int(config.data.num_val), int(config.data.split_seed))
  sizes = [64, *config.model.hidden, 10]
  return _in_memory(
      config, "mlp_digits", train, val, functools.partial(small.mlp_init, sizes=sizes),
      small.mlp_loss, small.mlp_error, "val_error",
      {"source": "sklearn.datasets.load_digits", "num_train": len(train["y"]),
       "num_val": len(val["y"]), "split_seed": int(config.data.split_seed)})
