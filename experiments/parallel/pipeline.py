"""GPipe pipeline parallelism over the `stage` mesh axis (Huang et al., 2019).

The GPT's blocks are split into `p` contiguous stages: the blocks' parameters are stacked along
a leading layer axis (`gpt.stack_blocks`) that is sharded over `stage` (logical axis "layers",
experiments/parallel/sharding.py), so stage s holds layers [s L/p, (s + 1) L/p) only. Each
accumulation
step's rows are cut into `m` micro-batches that flow through the stages under `jax.shard_map`
(manual over `stage` only: data and fsdp stay with the compiler): at tick t stage 0 takes
micro-batch t, every stage applies its layers and hands its output to the next stage by
`jax.lax.ppermute`; after m + p - 1 ticks the last stage has every micro-batch's output.
Differentiating this forward gives GPipe's backward (the transposed ppermutes run the stages in
reverse), so the gradients are those of the unpipelined model, up to float32 rounding.

Each stage is busy m of the m + p - 1 ticks each way: the bubble fraction is
(p - 1) / (m + p - 1) (`bubble_fraction`).

Embedding and head: computed outside the pipeline by every device (their parameters are split
over model or fsdp as usual, and replicated over `stage`), on the batch rows split over data and
fsdp. It keeps the stage function a pure stack of identical blocks (one shape to ppermute); the
cost is that the head's and embedding's work is repeated on each stage and the last stage's
output is broadcast over `stage` before the head.

References:
  Huang et al., "GPipe: Efficient Training of Giant Neural Networks using Pipeline
  Parallelism", NeurIPS 2019, arXiv 1811.06965.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from models import gpt
from optimizers import routing

STAGE = "stage"


def bubble_fraction(stages: int, microbatches: int) -> float:
  """The idle share of a GPipe schedule: (p - 1) / (m + p - 1)."""
  return (stages - 1) / (microbatches + stages - 1)


def _stacked(path) -> bool:
  """Under `blocks` with no layer index: a stacked leaf (blocks/attn/q/kernel)."""
  names = [routing.key_name(k) for k in path]
  return len(names) > 1 and names[0] == "blocks" and not names[1].isdigit()


def stacked_dimension_numbers(path, leaf) -> routing.DimensionNumbers | None:
  """Muon's matrix view of stacked block kernels (layers, fan_in, fan_out): one per layer."""
  return routing.DimensionNumbers(1, 2) if _stacked(path) and leaf.ndim == 3 else None


def stacked_batch_axes(path, leaf) -> int:
  """Shampoo / SOAP view of stacked block leaves: the layer axis is a batch (one tensor per
  layer, blocked as in the unstacked model; stacked norm scales are vectors per layer)."""
  return 1 if _stacked(path) else 0


def stacked_labels(path, leaf) -> str:
  """Muon / AdamW routing by each layer's own shape: stacked norm scales (layers, width) are
  vectors per layer and stay with AdamW, as in the unstacked model."""
  if _stacked(path):
    leaf = jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype)
  return routing.default_label(path, leaf)


def _layers(cfg: gpt.GPTConfig, blocks: Any, x: jax.Array) -> jax.Array:
  """Every layer of a stacked `blocks` tree, in order."""
  for i in range(jax.tree.leaves(blocks)[0].shape[0]):
    x = gpt.block(cfg, jax.tree.map(lambda a: a[i], blocks), x)
  return x


def _gpipe(cfg: gpt.GPTConfig, stages: int, microbatches: int, blocks: Any,
           x_BxTxD: jax.Array) -> jax.Array:
  """The blocks applied to `x` through the pipeline (the mesh in context has `stage`)."""
  b, t, d = x_BxTxD.shape
  m, p = microbatches, stages
  # Micro-batch j is rows j, j + m, j + 2m, ...: the leading axis keeps the rows' data/fsdp
  # split (the loss is a mean over rows, so which rows go together does not matter).
  x_RxMxTxD = x_BxTxD.reshape(b // m, m, t, d)

  def stage_fn(local_blocks, x_all):
    s = jax.lax.axis_index(STAGE)
    shift = [(i, i + 1) for i in range(p - 1)]

    def tick(carry, k):
      incoming, outputs = carry
      fresh = jax.lax.dynamic_index_in_dim(x_all, jnp.minimum(k, m - 1), axis=1,
                                           keepdims=False)
      y = _layers(cfg, local_blocks, jnp.where(s == 0, fresh, incoming))
      # The last stage finishes micro-batch k - (p - 1) at tick k.
      done = jnp.clip(k - (p - 1), 0, m - 1)
      keep = (s == p - 1) & (k >= p - 1)
      current = jax.lax.dynamic_index_in_dim(outputs, done, axis=1, keepdims=False)
      outputs = jax.lax.dynamic_update_index_in_dim(outputs, jnp.where(keep, y, current), done,
                                                    axis=1)
      return (jax.lax.ppermute(y, STAGE, shift), outputs), None

    varying = lambda a: jax.lax.pcast(a, STAGE, to="varying")
    zeros = varying(jnp.zeros_like(x_all))
    init = (zeros[:, 0], zeros)
    (_, outputs), _ = jax.lax.scan(tick, init, jnp.arange(m + p - 1))
    return outputs[None]

  spec = jax.tree.map(lambda _: P(STAGE), blocks)
  out = jax.shard_map(stage_fn, in_specs=(spec, P()), out_specs=P(STAGE),
                      axis_names=frozenset({STAGE}))(blocks, x_RxMxTxD)
  return out[p - 1].reshape(b, t, d)


def loss_fn(cfg: gpt.GPTConfig, stages: int, microbatches: int, params: dict,
            batch_Bx_T1: jax.Array) -> jax.Array:
  """`gpt.loss_fn` on stacked parameters, the blocks pipelined over `stages` (1: a plain loop)."""
  inputs, targets = batch_Bx_T1[:, :-1], batch_Bx_T1[:, 1:]
  x = gpt.embed(cfg, params, inputs)
  if stages == 1:
    x = _layers(cfg, params["blocks"], x)
  else:
    x = _gpipe(cfg, stages, microbatches, params["blocks"], x)
  return gpt.cross_entropy(gpt.head(cfg, params, x), targets)


def pipelined(workload: Any, cfg: gpt.GPTConfig, stages: int, microbatches: int) -> Any:
  """A GPT workload with stacked blocks and the pipelined loss (same data, same math)."""
  loss = functools.partial(loss_fn, cfg, stages, microbatches)
  init = lambda key: gpt.stack_blocks(workload.init_params(key))
  return dataclasses.replace(
      workload, init_params=init, loss_fn=loss, eval_fn=loss,
      fingerprint=dict(workload.fingerprint, stacked_blocks=True))
