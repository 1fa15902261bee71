"""A NanoGPT-style decoder-only transformer in Flax NNX.

The architecture follows the modded-nanogpt speedrun (Keller Jordan et al., 2024): rotary
position embeddings (Su et al., 2021, arXiv 2104.09864), RMSNorm (Zhang & Sennrich, 2019),
QK-norm (Henry et al., 2020), ReLU^2 MLP (So et al., 2021, arXiv 2109.08668), zero-initialized
output projections, an untied head and an optional logit soft-cap (Gemma 2).

Training code never sees the Flax module: `init_params` returns a plain nested dict of arrays
and `apply` maps (params, tokens) to logits. Every 2-D kernel is stored as (fan_in, fan_out), so
optimizers that need matrix orientation (Muon, Shampoo) can rely on it.

Tensor parallelism (Megatron-LM, Shoeybi et al. 2019, arXiv 1909.08053): `logical_axes` names
every parameter's dimensions in one place (q/k/v and the MLP's first matrix split their outputs:
column-parallel; the two output projections split their inputs: row-parallel); activations are
constrained by the same names (`_constrain`) when logical-axis rules (`flax.core.spmd`, set by
`experiments.parallel.sharding.context`) map them to an axis of the mesh in context. Without
rules or mesh the model is the plain one, op for op.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from flax import nnx
from flax.core import spmd
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P


@dataclasses.dataclass(frozen=True)
class GPTConfig:
  vocab_size: int = 256
  num_layers: int = 4
  width: int = 128
  num_heads: int = 4
  mlp_ratio: int = 4
  max_seq_len: int = 128
  rope_base: float = 10000.0
  logit_softcap: float | None = None  # None or 0 disables the cap.
  # Activation checkpointing per block: a name in REMAT_POLICIES; True/False (old configs)
  # mean "block"/"none".
  remat: bool | str = False
  dtype: str = "float32"  # compute dtype; parameters stay float32.
  init_std: float | None = None  # None: 1/sqrt(width).

  @classmethod
  def from_config(cls, cfg: Any) -> "GPTConfig":
    fields = {f.name for f in dataclasses.fields(cls)}
    values = dict(cfg)
    unknown = set(values) - fields
    if unknown:
      raise ValueError(
          f"Unknown model config keys {sorted(unknown)}; valid keys: {sorted(fields)}")
    return cls(**values)

  def __post_init__(self):
    if self.width % self.num_heads:
      raise ValueError(f"width={self.width} is not divisible by num_heads={self.num_heads}")
    if (self.width // self.num_heads) % 2:
      raise ValueError("the head dimension must be even for rotary embeddings")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"model.remat={self.remat!r}; choose from {REMAT_POLICIES} "
                       "(or True/False)")

  @property
  def remat_policy(self) -> str:
    """The remat policy's name; the stored value stays as configured (checkpoint fingerprints)."""
    if isinstance(self.remat, bool):
      return "block" if self.remat else "none"
    return self.remat


# What each block keeps for the backward pass (Chen et al. 2016, "Training Deep Nets with
# Sublinear Memory Cost", arXiv 1604.06174): "block" keeps only the block's input and recomputes
# the rest; "dots_saveable" keeps matrix-product outputs and recomputes the cheap elementwise
# ops; "offload_dots" keeps the non-batched products in pinned host memory instead of device
# memory (backends with host memory spaces).
REMAT_POLICIES = ("none", "block", "dots_saveable", "offload_dots")


def _checkpoint_policy(name: str):
  if name == "dots_saveable":
    return jax.checkpoint_policies.dots_saveable
  if name == "offload_dots":
    return jax.checkpoint_policies.offload_dot_with_no_batch_dims("device", "pinned_host")
  return None  # "block": save nothing inside the block


# Name scopes ("norm_rotary", "attention", "loss") let profiles attribute XLA's kernels
# (scripts/bench_mfu.py); they change no computation.

@jax.named_scope("norm_rotary")
def _rms_norm(x, eps=1e-6):
  x32 = x.astype(jnp.float32)
  return (x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)).astype(x.dtype)


@jax.named_scope("norm_rotary")
def _rotary(x_BxTxNxH, base: float):
  """Rotates pairs (x[..., :H/2], x[..., H/2:]) by position-dependent angles."""
  _, t, _, h = x_BxTxNxH.shape
  inv_freq = 1.0 / (base ** (jnp.arange(0, h // 2, dtype=jnp.float32) / (h // 2)))
  angles_TxF = jnp.arange(t, dtype=jnp.float32)[:, None] * inv_freq[None, :]
  cos = jnp.cos(angles_TxF)[None, :, None, :]
  sin = jnp.sin(angles_TxF)[None, :, None, :]
  x1, x2 = jnp.split(x_BxTxNxH.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos + x2 * sin, -x1 * sin + x2 * cos], axis=-1)
  return out.astype(x_BxTxNxH.dtype)


# Logical axes of each parameter, by the last keys of its path (a leading "layers" axis is
# added for stacked blocks).
_LOGICAL = {
    ("embed", "embedding"): ("vocab", "embed"),
    ("lm_head", "kernel"): ("embed", "vocab"),
    ("attn", "q", "kernel"): ("embed", "heads"),
    ("attn", "k", "kernel"): ("embed", "heads"),
    ("attn", "v", "kernel"): ("embed", "heads"),
    ("attn", "proj", "kernel"): ("heads", "embed"),
    ("mlp", "fc", "kernel"): ("embed", "mlp"),
    ("mlp", "proj", "kernel"): ("mlp", "embed"),
    ("scale",): ("embed",),  # RMSNorm scales
}


def logical_axes(params: Any) -> Any:
  """A tuple of logical axis names per parameter (the one place the model declares them).

  vocab, embed, heads (the attention's num_heads x head_dim outputs), mlp (the MLP's hidden
  units), layers (the leading axis of stacked blocks).
  """

  def names(path, x):
    keys = tuple(str(getattr(k, "key", k)) for k in path)
    for n in (3, 2, 1):
      if keys[-n:] in _LOGICAL:
        base = _LOGICAL[keys[-n:]]
        return ("layers",) * (x.ndim - len(base)) + base
    raise ValueError(f"no logical axes for parameter {'/'.join(keys)}")

  return jax.tree_util.tree_map_with_path(names, params)


def _constrain(x, *names: str):
  """`x` laid out by logical axis names under the rules and mesh in context (else as is).

  Active only when heads or mlp map to a mesh axis of size > 1 (tensor parallelism); the batch
  dimension is left to XLA (`P.UNCONSTRAINED`), other unmapped dimensions are whole.
  """
  rules = dict(spmd.get_logical_axis_rules())
  mesh = jax.sharding.get_abstract_mesh()
  if not rules or mesh.empty:
    return x
  sizes = dict(mesh.shape)
  # A rule names a mesh axis or a tuple of them (the first one is the tensor-parallel one).
  axis_of = lambda n: rules[n] if isinstance(rules.get(n), str) else (rules.get(n) or (None,))[0]
  if all(sizes.get(axis_of(n), 1) == 1 for n in ("heads", "mlp")):
    return x
  spec = []
  for name, d in zip(names, x.shape):
    axis = axis_of(name)
    if name == "batch":
      spec.append(P.UNCONSTRAINED)
    elif axis in sizes and sizes[axis] > 1 and d % sizes[axis] == 0:
      spec.append(axis)
    else:
      spec.append(None)
  return jax.lax.with_sharding_constraint(x, P(*spec))


class Attention(nnx.Module):

  def __init__(self, cfg: GPTConfig, *, rngs: nnx.Rngs):
    d, std = cfg.width, cfg.init_std or cfg.width ** -0.5
    init = nnx.initializers.normal(std)
    dtype = jnp.dtype(cfg.dtype)
    self.q = nnx.Linear(d, d, use_bias=False, kernel_init=init, dtype=dtype, rngs=rngs)
    self.k = nnx.Linear(d, d, use_bias=False, kernel_init=init, dtype=dtype, rngs=rngs)
    self.v = nnx.Linear(d, d, use_bias=False, kernel_init=init, dtype=dtype, rngs=rngs)
    self.proj = nnx.Linear(d, d, use_bias=False, kernel_init=nnx.initializers.zeros,
                           dtype=dtype, rngs=rngs)
    self.num_heads = cfg.num_heads
    self.rope_base = cfg.rope_base

  def __call__(self, x_BxTxD):
    b, t, d = x_BxTxD.shape
    shape = (b, t, self.num_heads, d // self.num_heads)
    heads = lambda y: _constrain(y.reshape(shape), "batch", "seq", "heads", "head_dim")
    q = _rotary(_rms_norm(heads(self.q(x_BxTxD))), self.rope_base)
    k = _rotary(_rms_norm(heads(self.k(x_BxTxD))), self.rope_base)
    v = heads(self.v(x_BxTxD))
    with jax.named_scope("attention"):
      y_BxTxNxH = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    y_BxTxNxH = _constrain(y_BxTxNxH, "batch", "seq", "heads", "head_dim")
    return _constrain(self.proj(y_BxTxNxH.reshape(b, t, d)), "batch", "seq", "embed")


class MLP(nnx.Module):

  def __init__(self, cfg: GPTConfig, *, rngs: nnx.Rngs):
    d, std = cfg.width, cfg.init_std or cfg.width ** -0.5
    dtype = jnp.dtype(cfg.dtype)
    self.fc = nnx.Linear(d, cfg.mlp_ratio * d, use_bias=False,
                         kernel_init=nnx.initializers.normal(std), dtype=dtype, rngs=rngs)
    self.proj = nnx.Linear(cfg.mlp_ratio * d, d, use_bias=False,
                           kernel_init=nnx.initializers.zeros, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    h = _constrain(jnp.square(jax.nn.relu(self.fc(x))), "batch", "seq", "mlp")
    return _constrain(self.proj(h), "batch", "seq", "embed")


class Block(nnx.Module):

  def __init__(self, cfg: GPTConfig, *, rngs: nnx.Rngs):
    self.attn_norm = nnx.RMSNorm(cfg.width, rngs=rngs)
    self.attn = Attention(cfg, rngs=rngs)
    self.mlp_norm = nnx.RMSNorm(cfg.width, rngs=rngs)
    self.mlp = MLP(cfg, rngs=rngs)

  def __call__(self, x):
    x = x + self.attn(_scoped_norm(self.attn_norm, x))
    return x + self.mlp(_scoped_norm(self.mlp_norm, x))


def _scoped_norm(norm: nnx.RMSNorm, x):
  with jax.named_scope("norm_rotary"):
    return norm(x)


class GPT(nnx.Module):

  def __init__(self, cfg: GPTConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed = nnx.Embed(cfg.vocab_size, cfg.width,
                           embedding_init=nnx.initializers.normal(1.0), rngs=rngs)
    self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
    self.final_norm = nnx.RMSNorm(cfg.width, rngs=rngs)
    self.lm_head = nnx.Linear(cfg.width, cfg.vocab_size, use_bias=False,
                              kernel_init=nnx.initializers.normal(cfg.width ** -0.5),
                              rngs=rngs)

  def __call__(self, tokens_BxT):
    cfg = self.cfg
    x = self.embed(tokens_BxT).astype(jnp.dtype(cfg.dtype))
    policy = cfg.remat_policy
    for block in self.blocks:
      if policy == "none":
        x = block(x)
      else:
        x = nnx.remat(lambda blk, h: blk(h), policy=_checkpoint_policy(policy))(block, x)
    logits_BxTxV = self.lm_head(_scoped_norm(self.final_norm, x)).astype(jnp.float32)
    logits_BxTxV = _constrain(logits_BxTxV, "batch", "seq", "vocab")
    if cfg.logit_softcap:
      logits_BxTxV = cfg.logit_softcap * jnp.tanh(logits_BxTxV / cfg.logit_softcap)
    return logits_BxTxV


def init_params(cfg: GPTConfig, key: jax.Array) -> dict:
  """Returns the model's parameters as a plain nested dict of arrays."""
  model = GPT(cfg, rngs=nnx.Rngs(params=key))
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def apply(cfg: GPTConfig, params: dict, tokens_BxT: jax.Array) -> jax.Array:
  """Logits (float32) of a (batch, time) array of token ids."""
  graphdef, abstract_state = nnx.split(
      nnx.eval_shape(lambda: GPT(cfg, rngs=nnx.Rngs(params=0))))
  nnx.replace_by_pure_dict(abstract_state, params)
  model = nnx.merge(graphdef, abstract_state)
  return model(tokens_BxT)


def loss_fn(cfg: GPTConfig, params: dict, batch_Bx_T1: jax.Array) -> jax.Array:
  """Mean next-token cross entropy in nats per token; the batch holds T+1 tokens per row."""
  inputs, targets = batch_Bx_T1[:, :-1], batch_Bx_T1[:, 1:]
  return cross_entropy(apply(cfg, params, inputs), targets)


@jax.named_scope("loss")
def cross_entropy(logits_BxTxV: jax.Array, targets_BxT: jax.Array) -> jax.Array:
  logp = jax.nn.log_softmax(logits_BxTxV, axis=-1)
  nll = -jnp.take_along_axis(logp, targets_BxT[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return jnp.mean(nll)


# ---- The model in pieces, for pipeline parallelism (experiments/parallel/pipeline.py): the
# embedding,
# one block, the head; and the blocks' parameters stacked along a leading layer axis.

def _bound(module_fn, params: dict):
  graphdef, abstract_state = nnx.split(nnx.eval_shape(module_fn))
  nnx.replace_by_pure_dict(abstract_state, params)
  return nnx.merge(graphdef, abstract_state)


def embed(cfg: GPTConfig, params: dict, tokens_BxT: jax.Array) -> jax.Array:
  """The residual stream's input: token embeddings in the compute dtype."""
  table = _bound(lambda: nnx.Embed(cfg.vocab_size, cfg.width, rngs=nnx.Rngs(params=0)),
                 params["embed"])
  return table(tokens_BxT).astype(jnp.dtype(cfg.dtype))


def block(cfg: GPTConfig, block_params: dict, x_BxTxD: jax.Array) -> jax.Array:
  """One transformer block (with the config's remat policy) on the residual stream."""

  def run(p, x):
    return _bound(lambda: Block(cfg, rngs=nnx.Rngs(params=0)), p)(x)

  if cfg.remat_policy != "none":
    run = jax.checkpoint(run, policy=_checkpoint_policy(cfg.remat_policy))
  return run(block_params, x_BxTxD)


def head(cfg: GPTConfig, params: dict, x_BxTxD: jax.Array) -> jax.Array:
  """Final norm, output head and soft-cap: float32 logits."""
  norm = _bound(lambda: nnx.RMSNorm(cfg.width, rngs=nnx.Rngs(params=0)), params["final_norm"])
  lm_head = _bound(lambda: nnx.Linear(cfg.width, cfg.vocab_size, use_bias=False,
                                      rngs=nnx.Rngs(params=0)), params["lm_head"])
  logits_BxTxV = _constrain(lm_head(norm(x_BxTxD)).astype(jnp.float32), "batch", "seq", "vocab")
  if cfg.logit_softcap:
    logits_BxTxV = cfg.logit_softcap * jnp.tanh(logits_BxTxV / cfg.logit_softcap)
  return logits_BxTxV


def stack_blocks(params: dict) -> dict:
  """`params` with blocks {0: tree, 1: tree, ...} replaced by one tree of (layers, ...) arrays."""
  blocks = [params["blocks"][i] for i in range(len(params["blocks"]))]
  return dict(params, blocks=jax.tree.map(lambda *xs: jnp.stack(xs), *blocks))


def unstack_blocks(params: dict) -> dict:
  """Inverse of `stack_blocks`."""
  n = jax.tree.leaves(params["blocks"])[0].shape[0]
  return dict(params, blocks={i: jax.tree.map(lambda x: x[i], params["blocks"])
                              for i in range(n)})


def num_params(params: Any) -> int:
  """The number of scalars in `params`, concrete arrays or `jax.ShapeDtypeStruct`s alike
  (`optax.tree.size` warns on abstract leaves: JAX is making `jnp.size` of one an error)."""
  return sum(math.prod(x.shape) for x in jax.tree.leaves(params))
