"""LoRA (Hu et al. 2021, arXiv 2106.09685): low-rank adapters on the GPT's attention and MLP.

A target kernel W (fan_in, fan_out) becomes W + (alpha / r) A B^T with A (fan_in, r) drawn from
N(0, 1/fan_in) and B zero-initialized, so training starts from the base model exactly. B^T is
stored as `b` (r, fan_out): both adapter leaves are 2-D (fan_in, r) and (r, fan_out), so matrix
optimizers (Muon, Shampoo) take them like any kernel. The base parameters stay frozen: the loss
is differentiated with respect to the adapters only, so they get no gradient and no optimizer
state.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

TARGETS = ("attn.q", "attn.k", "attn.v", "attn.proj", "mlp.fc", "mlp.proj")


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
  rank: int = 8
  alpha: float = 16.0
  targets: tuple[str, ...] = TARGETS  # module paths inside each block

  @classmethod
  def from_config(cls, cfg: Any) -> "LoRAConfig":
    """From `config.lora` (targets a comma-separated string or a sequence)."""
    targets = cfg.targets
    if isinstance(targets, str):
      targets = tuple(t.strip() for t in targets.split(",") if t.strip())
    return cls(rank=int(cfg.rank), alpha=float(cfg.alpha), targets=tuple(targets))

  def __post_init__(self):
    unknown = sorted(set(self.targets) - set(TARGETS))
    if unknown:
      raise ValueError(f"lora.targets {unknown} unknown; choose from {TARGETS}")
    if self.rank < 1:
      raise ValueError(f"lora.rank must be at least 1, got {self.rank}")

  @property
  def scale(self) -> float:
    return self.alpha / self.rank


def _kernel(params: dict, block: Any, target: str) -> jax.Array:
  module, name = target.split(".")
  return params["blocks"][block][module][name]["kernel"]


def init_adapters(params: dict, cfg: LoRAConfig, key: jax.Array) -> dict:
  """{"blocks": {i: {"attn.q": {"a", "b"}, ...}}}: A ~ N(0, 1/fan_in), B = 0 (float32)."""
  out = {}
  for i, block in enumerate(sorted(params["blocks"])):
    out[block] = {}
    for j, target in enumerate(cfg.targets):
      fan_in, fan_out = _kernel(params, block, target).shape
      k = jax.random.fold_in(key, i * len(TARGETS) + j)
      out[block][target] = {
          "a": jax.random.normal(k, (fan_in, cfg.rank), jnp.float32) * fan_in ** -0.5,
          "b": jnp.zeros((cfg.rank, fan_out), jnp.float32)}
  return {"blocks": out}


def apply_lora(params: dict, adapters: dict, cfg: LoRAConfig) -> dict:
  """The parameters with W + (alpha/r) a @ b on every target (differentiable in `adapters`)."""
  out = jax.tree.map(lambda x: x, params)  # new containers, the same arrays
  for block, targets in adapters["blocks"].items():
    for target, ab in targets.items():
      module, name = target.split(".")
      leaf = out["blocks"][block][module][name]
      leaf["kernel"] = leaf["kernel"] + (cfg.scale * (ab["a"] @ ab["b"])).astype(
          leaf["kernel"].dtype)
  return out


def merge(params: dict, adapters: dict, cfg: LoRAConfig) -> dict:
  """Base weights with the adapters folded in, for evaluation and export (plain GPT params)."""
  return jax.jit(apply_lora, static_argnums=2)(params, adapters, cfg)


def num_adapter_params(params: dict, cfg: LoRAConfig) -> int:
  """r * (fan_in + fan_out) summed over every target kernel of every block."""
  return sum(cfg.rank * sum(_kernel(params, b, t).shape)
             for b in params["blocks"] for t in cfg.targets)
