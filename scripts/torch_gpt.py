"""The CPU speedrun's GPT (models/gpt.py) written in PyTorch: the peer a user would otherwise pick.

Used only by `scripts/bench_mfu.py` and its parity test; the library never imports torch. The
architecture is the JAX model's, op for op: RMSNorm with a learned scale (eps 1e-6), rotary on
(first half, second half) pairs after a scale-free QK-norm, causal softmax attention, ReLU^2
MLP, untied head, optional logit soft-cap. Kernels are stored as `nn.Linear` weights, i.e. the
JAX (fan_in, fan_out) kernels transposed; `load_jax_params` copies a JAX parameter dict in.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

_EPS = 1e-6


def _rms_norm(x: torch.Tensor) -> torch.Tensor:
  return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + _EPS)


class RMSNorm(nn.Module):

  def __init__(self, width: int):
    super().__init__()
    self.scale = nn.Parameter(torch.ones(width))

  def forward(self, x):
    return x * (torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + _EPS) * self.scale)


class Attention(nn.Module):

  def __init__(self, width: int, num_heads: int, seq_len: int, rope_base: float):
    super().__init__()
    self.num_heads = num_heads
    self.q = nn.Linear(width, width, bias=False)
    self.k = nn.Linear(width, width, bias=False)
    self.v = nn.Linear(width, width, bias=False)
    self.proj = nn.Linear(width, width, bias=False)
    h = width // num_heads
    inv_freq = 1.0 / (rope_base ** (torch.arange(0, h // 2, dtype=torch.float32) / (h // 2)))
    angles = torch.arange(seq_len, dtype=torch.float32)[:, None] * inv_freq[None, :]
    self.register_buffer("cos", torch.cos(angles), persistent=False)  # (T, H/2)
    self.register_buffer("sin", torch.sin(angles), persistent=False)

  def _rotary(self, x):  # (B, T, N, H)
    t = x.shape[1]
    cos, sin = self.cos[None, :t, None, :], self.sin[None, :t, None, :]
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos + x2 * sin, -x1 * sin + x2 * cos], dim=-1)

  def forward(self, x):
    b, t, d = x.shape
    shape = (b, t, self.num_heads, d // self.num_heads)
    q = self._rotary(_rms_norm(self.q(x).view(shape))).transpose(1, 2)
    k = self._rotary(_rms_norm(self.k(x).view(shape))).transpose(1, 2)
    v = self.v(x).view(shape).transpose(1, 2)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):

  def __init__(self, cfg: Any):
    super().__init__()
    self.attn_norm = RMSNorm(cfg.width)
    self.attn = Attention(cfg.width, cfg.num_heads, cfg.max_seq_len, cfg.rope_base)
    self.mlp_norm = RMSNorm(cfg.width)
    self.fc = nn.Linear(cfg.width, cfg.mlp_ratio * cfg.width, bias=False)
    self.mlp_proj = nn.Linear(cfg.mlp_ratio * cfg.width, cfg.width, bias=False)

  def forward(self, x):
    x = x + self.attn(self.attn_norm(x))
    return x + self.mlp_proj(F.relu(self.fc(self.mlp_norm(x))).square())


class GPT(nn.Module):
  """`models.gpt.GPT` for a `models.gpt.GPTConfig` (float32 only)."""

  def __init__(self, cfg: Any):
    super().__init__()
    self.softcap = cfg.logit_softcap
    self.embed = nn.Embedding(cfg.vocab_size, cfg.width)
    self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.num_layers)])
    self.final_norm = RMSNorm(cfg.width)
    self.lm_head = nn.Linear(cfg.width, cfg.vocab_size, bias=False)

  def forward(self, tokens_BxT):
    x = self.embed(tokens_BxT)
    for block in self.blocks:
      x = block(x)
    logits = self.lm_head(self.final_norm(x))
    if self.softcap:
      logits = self.softcap * torch.tanh(logits / self.softcap)
    return logits

  def loss(self, batch_Bx_T1):
    """Mean next-token cross entropy of a (batch, T + 1) token array (models.gpt.loss_fn)."""
    logits = self(batch_Bx_T1[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                           batch_Bx_T1[:, 1:].reshape(-1))


def load_jax_params(model: GPT, params: dict) -> GPT:
  """Copies a `models.gpt.init_params` dict into `model` (kernels transposed)."""
  t = lambda a: torch.from_numpy(np.array(a, dtype=np.float32))
  with torch.no_grad():
    model.embed.weight.copy_(t(params["embed"]["embedding"]))
    model.final_norm.scale.copy_(t(params["final_norm"]["scale"]))
    model.lm_head.weight.copy_(t(params["lm_head"]["kernel"]).T)
    for i, blk in enumerate(model.blocks):
      p = params["blocks"][i]
      blk.attn_norm.scale.copy_(t(p["attn_norm"]["scale"]))
      blk.mlp_norm.scale.copy_(t(p["mlp_norm"]["scale"]))
      for name in ("q", "k", "v", "proj"):
        getattr(blk.attn, name).weight.copy_(t(p["attn"][name]["kernel"]).T)
      blk.fc.weight.copy_(t(p["mlp"]["fc"]["kernel"]).T)
      blk.mlp_proj.weight.copy_(t(p["mlp"]["proj"]["kernel"]).T)
  return model
