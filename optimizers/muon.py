"""Muon: momentum orthogonalized by Newton–Schulz, for hidden-layer matrices; AdamW elsewhere.

Registry entries:
  muon        this implementation (Keller Jordan's reference update, batched Newton–Schulz,
              optional Gram iteration for rectangular matrices, safe default routing).
  optax_muon  `optax.contrib.muon` behind the same routing and hyperparameter names, for
              comparisons "given the same tuning and routing".

Per-head orthogonalization (`split_heads=True`, `num_heads=H`): the attention's q, k, v kernels
(D, H hd) are H column blocks (D, hd) and its output projection (H hd, D) is H row blocks
(hd, D); each block is orthogonalized (and shape-scaled) as a matrix of its own, as the NanoGPT
speedrun's later records and Dion do. Which leaves are attention matrices, and on which side
their heads lie, is `head_axes` (default: models/gpt.py's attn/{q,k,v,proj}/kernel paths).

Tensor parallel (a `model` mesh axis, Megatron layouts): the Muon leaves arrive split by heads or
MLP units over `model`; the owner machinery below still gives each device whole matrices (whole
heads with `split_heads`), so the update is the unsharded one.

Sharded (owner-based, `muon` only): Newton–Schulz needs whole matrices. The Muon leaves' matrices
are stacked by shape (`newton_schulz.orthogonalize_many`); on the mesh in context
(`jax.set_mesh`, see optimizers/owner.py) each stack is padded to a multiple of the N devices
and resharded so each device owns B/N whole matrices (an all-to-all from the fsdp layout),
iterated locally, and sent back (the inverse all-to-all). The state (the momentum) stays
params-shaped and sharded like the parameters. Bytes per device per step, with P the Muon
parameter count (padding included) in float32 and fsdp = N: about 2 x 4 P (N - 1) / N^2 (each
device keeps the 1/N of its slice it owns, sends the rest out and back), against 4 P (N - 1) / N
for an all-gather that has every device redo every matrix. On a (data D, fsdp F) mesh the
momentum is replicated over data, so reaching the D F owners is a local slice; on the way back
each device receives the part of its P / F slice that other owners computed, about
4 P (D F - 1) / (D F^2) bytes. Each device does 1/(D F) of the FLOPs.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from optimizers import cautious as cautious_lib
from optimizers import newton_schulz
from optimizers import nonfinite
from optimizers import routing
from optimizers._registry import register

SCALES = ("original", "match_adamw_rms")


def _shape_scale(scale: str, fan_in: int, fan_out: int) -> float:
  if scale == "original":
    return max(1.0, fan_out / fan_in) ** 0.5
  if scale == "match_adamw_rms":
    return 0.2 * max(fan_in, fan_out) ** 0.5
  raise ValueError(f"unknown scale {scale!r}; choose from {SCALES}")


FAN_IN, FAN_OUT = "fan_in", "fan_out"
HeadRule = Callable[[Any, Any], "str | None"]


def gpt_head_axes(path, leaf) -> str | None:
  """models/gpt.py's attention matrices: q, k, v hold heads in fan_out, proj in fan_in."""
  del leaf
  keys = tuple(routing.key_name(k) for k in path)
  if len(keys) >= 3 and keys[-3] == "attn" and keys[-1] == "kernel":
    return {"q": FAN_OUT, "k": FAN_OUT, "v": FAN_OUT, "proj": FAN_IN}.get(keys[-2])
  return None


def split_head_matrices(mats, side: str, num_heads: int):
  """(B, fan_in, fan_out) -> (B H, ...) per-head blocks along `side`, and the inverse map."""
  b, fan_in, fan_out = mats.shape
  if side == FAN_IN:
    per = (b * num_heads, fan_in // num_heads, fan_out)
    return mats.reshape(per), lambda y: y.reshape(b, fan_in, fan_out)
  hd = fan_out // num_heads
  per_head = mats.reshape(b, fan_in, num_heads, hd).transpose(0, 2, 1, 3)
  inverse = lambda y: y.reshape(b, num_heads, fan_in, hd).transpose(0, 2, 1, 3).reshape(
      b, fan_in, fan_out)
  return per_head.reshape(b * num_heads, fan_in, hd), inverse


def scale_by_newton_schulz(
    *, ns_coeffs: str | Sequence[Any] = "quintic", ns_steps: int = 5,
    ns_dtype: Any = "float32", gram_ns: bool = False, scale: str = "original",
    dimension_numbers: routing.DimNumRule | Any | None = None, split_heads: bool = False,
    num_heads: int | None = None, head_axes: HeadRule | None = None,
) -> optax.GradientTransformation:
  """Replaces each matrix update by its Newton–Schulz orthogonalization times a shape scale.

  u <- s(fan_in, fan_out) * NS(u),  with s = sqrt(max(1, fan_out / fan_in)) ("original") or
  0.2 sqrt(max(fan_in, fan_out)) ("match_adamw_rms"). Leaves are viewed as (batch, fan_in,
  fan_out) stacks by their dimension numbers (`routing`); stacks of the same matrix shape go
  through one batched iteration. Written here: optax has no public batched orthogonalization.

  Args:
    ns_coeffs, ns_steps, ns_dtype: see `newton_schulz.orthogonalize`.
    gram_ns: use the Gram iteration for matrices with aspect ratio >= 1.5.
    scale: "original" or "match_adamw_rms".
    dimension_numbers: see `routing.dimension_numbers_rule`.
    split_heads: orthogonalize each attention head's block separately (module docstring);
      the shape scale is the block's.
    num_heads: the attention's head count (needed with `split_heads`).
    head_axes: `(path, leaf) -> "fan_in" | "fan_out" | None`, where a leaf's heads lie
      (None: not an attention matrix); default `gpt_head_axes`.

  Returns:
    A stateless `optax.GradientTransformation`.
  """
  _shape_scale(scale, 1, 1)  # validates `scale` now
  newton_schulz.schedule(ns_coeffs, ns_steps)  # validates the coefficients now
  resolve = routing.dimension_numbers_rule(dimension_numbers)
  if split_heads and not (isinstance(num_heads, int) and num_heads >= 1):
    raise ValueError(f"split_heads=True needs num_heads (the attention's head count), got "
                     f"{num_heads!r}")
  heads_of = head_axes or gpt_head_axes

  def update_fn(updates, state, params=None):
    del params
    leaves, treedef = jax.tree_util.tree_flatten_with_path(updates)
    stacks, inverses, factors = [], [], []
    for path, u in leaves:
      dn = resolve(path, u)
      mats, inverse = routing.to_matrices(u, dn)
      side = heads_of(path, u) if split_heads else None
      if side is not None:
        fan = mats.shape[1 if side == FAN_IN else 2]
        if fan % num_heads:
          raise ValueError(f"split_heads: {routing.path_str(path)} has {side}={fan}, not "
                           f"divisible by num_heads={num_heads}")
        mats, unsplit = split_head_matrices(mats, side, num_heads)
        inverse = (lambda inv, uns: lambda y: inv(uns(y)))(inverse, unsplit)
      stacks.append(mats)
      inverses.append(inverse)
      factors.append(_shape_scale(scale, *mats.shape[1:]))
    outs = newton_schulz.orthogonalize_many(
        stacks, gram_min_aspect=1.5 if gram_ns else None, ns_coeffs=ns_coeffs,
        ns_steps=ns_steps, ns_dtype=ns_dtype)
    new = [(inv(o) * f).astype(u.dtype)
           for (_, u), inv, o, f in zip(leaves, inverses, outs, factors)]
    return jax.tree.unflatten(treedef, new), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def ema_momentum(beta: float, *, nesterov: bool, warmup_steps: int = 0,
                 start: float = 0.85) -> optax.GradientTransformation:
  """m <- b m + (1 - b) g; output (1 - b) g + b m (Nesterov) or m; b from `start` to `beta`.

  b rises linearly from `start` to `beta` over the first `warmup_steps` steps (the NanoGPT
  speedrun's momentum warmup); with `warmup_steps=0` it is `optax.scale(1 - beta)` followed by
  `optax.trace(beta)`, state and all. Written by hand because `optax.trace` takes a constant
  decay only.
  """
  if not warmup_steps:
    return optax.chain(optax.scale(1.0 - beta), optax.trace(decay=beta, nesterov=nesterov))
  schedule = optax.linear_schedule(start, beta, warmup_steps)

  def init_fn(params):
    return (optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32)),
            optax.TraceState(trace=optax.tree.zeros_like(params)))

  def update_fn(updates, state, params=None):
    del params
    count_state, trace_state = state
    b = schedule(count_state.count)
    m = jax.tree.map(lambda t, g: b * t + (1.0 - b) * g, trace_state.trace, updates)
    out = (jax.tree.map(lambda t, g: b * t + (1.0 - b) * g, m, updates) if nesterov else m)
    out = jax.tree.map(lambda o, g: o.astype(g.dtype), out, updates)
    return out, (optax.ScaleByScheduleState(count=optax.safe_increment(count_state.count)),
                 optax.TraceState(trace=m))

  return optax.GradientTransformation(init_fn, update_fn)


@register("muon")
def muon(*, learning_rate: Any, momentum: float = 0.95, nesterov: bool = True,
         momentum_warmup_steps: int = 0, momentum_start: float = 0.85, ns_steps: int = 5,
         ns_coeffs: str | Sequence[Any] = "quintic",
         ns_dtype: str = "float32", gram_ns: bool = False, scale: str = "original",
         weight_decay: float = 0.0, cautious_weight_decay: bool = False,
         adam_learning_rate: Any = 3e-3, adam_b1: float = 0.9,
         adam_b2: float = 0.95, adam_eps: float = 1e-8, adam_weight_decay: float = 0.0,
         labels: routing.LabelRule | Any | None = None,
         dimension_numbers: routing.DimNumRule | Any | None = None,
         split_heads: bool = False, num_heads: int | None = None,
         head_axes: HeadRule | None = None,
         ) -> optax.GradientTransformation:
  """Muon (Jordan et al., 2024) on hidden matrices, AdamW on the rest.

  m <- beta m + (1 - beta) g;  u = (1 - beta) g + beta m (Nesterov) or m;
  theta <- theta - lr * (s * NS(u) + weight_decay * theta)   (Muon leaves)
  AdamW with `adam_*` hyperparameters on embeddings, head, norms, biases, scalars.
  The momentum is `optax.trace` on (1 - beta) g (no bias correction, as in the reference);
  routing is `optax.partition` with `routing.label_fn`. A step whose gradient (NaN, Inf, or
  so large that its squared norm overflows float32), update or new state is not finite is
  skipped whole (zero update, momenta and counts kept) and counted (`nonfinite.guard`).
  Parity: torch.optim.Muon (tests/parity/test_torch_optim.py), with the same weight_decay on
  both sides (torch's default is 0.1) and dimension_numbers (1, 0) for torch's (fan_out,
  fan_in) weights (or scale="match_adamw_rms" = adjust_lr_fn="match_rms_adamw").

  Args:
    learning_rate: Muon learning rate (float or optax schedule).
    momentum: beta.
    nesterov: Nesterov momentum (the reference's default).
    momentum_warmup_steps: beta rises linearly from `momentum_start` to `momentum` over these
      first steps (the NanoGPT speedrun's 0.85 -> 0.95); 0: constant beta.
    momentum_start: beta at step 0 when warming up.
    ns_steps, ns_coeffs, ns_dtype: Newton–Schulz iteration (`newton_schulz.orthogonalize`).
      The reference implementations (Jordan's and torch.optim.Muon) feed the iteration
      bfloat16; `ns_dtype="bfloat16"` does too. The default stays float32: every Muon record
      of the comparisons (records/) was made with it, the CPU has no bfloat16 product for
      every operand layout (WORKSPACE, issue 19), and on an AVX-512-BF16 CPU bfloat16 ran the
      iteration only 1.31x faster (WORKSPACE, "Step speed and MFU").
    gram_ns: Gram Newton–Schulz for rectangular matrices (aspect ratio >= 1.5).
    scale: "original" (sqrt(max(1, fan_out / fan_in))) or "match_adamw_rms" (Moonlight's
      0.2 sqrt(max(fan_in, fan_out))).
    weight_decay: decoupled weight decay on Muon leaves (multiplied by the learning rate).
    cautious_weight_decay: decay only where the update and the parameter agree in sign
      (`cautious.add_cautious_decayed_weights`), as in the NanoGPT speedrun.
    adam_learning_rate, adam_b1, adam_b2, adam_eps, adam_weight_decay: AdamW on the rest.
    labels: routing override (`routing.label_fn`).
    dimension_numbers: matrix view of Muon tensors (`routing.dimension_numbers_rule`).
    split_heads, num_heads, head_axes: per-head orthogonalization of attention matrices
      (`scale_by_newton_schulz`); configs pass `num_heads` as a reference to
      `model.num_heads`.

  Returns:
    An `optax.GradientTransformation`.

  References:
    Jordan et al., "Muon: An optimizer for hidden layers in neural networks", 2024,
    https://kellerjordan.github.io/posts/muon/
    Liu et al., "Muon is Scalable for LLM Training", 2025, arXiv 2502.16982.
    Amsel et al., "The Polar Express", 2025, arXiv 2505.16932.
    Ahn et al., "Dion: Distributed Orthonormalized Updates", 2025, arXiv 2504.05295.
  """
  muon_tx = optax.chain(
      ema_momentum(momentum, nesterov=nesterov, warmup_steps=momentum_warmup_steps,
                   start=momentum_start),
      scale_by_newton_schulz(ns_coeffs=ns_coeffs, ns_steps=ns_steps, ns_dtype=ns_dtype,
                             gram_ns=gram_ns, scale=scale, dimension_numbers=dimension_numbers,
                             split_heads=split_heads, num_heads=num_heads,
                             head_axes=head_axes),
      decayed_weights(weight_decay, cautious=cautious_weight_decay),
      optax.scale_by_learning_rate(learning_rate),
  )
  return _with_routing(muon_tx, labels, dimension_numbers, adam_learning_rate=adam_learning_rate,
                       adam_b1=adam_b1, adam_b2=adam_b2, adam_eps=adam_eps,
                       adam_weight_decay=adam_weight_decay)


def decayed_weights(weight_decay: float, *, cautious: bool) -> optax.GradientTransformation:
  """Decoupled weight decay, plain (`optax.add_decayed_weights`) or cautious."""
  if cautious:
    return cautious_lib.add_cautious_decayed_weights(weight_decay)
  return optax.add_decayed_weights(weight_decay)


def _with_routing(muon_tx, labels, dimension_numbers, *, adam_learning_rate, adam_b1, adam_b2,
                  adam_eps, adam_weight_decay) -> optax.GradientTransformation:
  adam_tx = optax.adamw(adam_learning_rate, b1=adam_b1, b2=adam_b2, eps=adam_eps,
                        weight_decay=adam_weight_decay)
  # One guard around both branches: a bad gradient anywhere skips the whole step.
  return nonfinite.guard(optax.partition({routing.MUON: muon_tx, routing.ADAM: adam_tx},
                                         routing.label_fn(labels, dimension_numbers)))


@register("optax_muon")
def optax_muon(*, learning_rate: Any, momentum: float = 0.95, nesterov: bool = True,
               ns_steps: int = 5, ns_coeffs: str | Sequence[Any] = "quintic",
               scale: str = "original", weight_decay: float = 0.0,
               adam_learning_rate: Any = 3e-3, adam_b1: float = 0.9, adam_b2: float = 0.95,
               adam_eps: float = 1e-8, adam_weight_decay: float = 0.0,
               labels: routing.LabelRule | Any | None = None,
               dimension_numbers: routing.DimNumRule | Any | None = None,
               ) -> optax.GradientTransformation:
  """`optax.contrib.muon` (float32 Newton–Schulz, bias-corrected Nesterov) with our routing.

  m <- beta m + (1 - beta) g;  u = beta m / (1 - beta^(t+1)) + (1 - beta) g / (1 - beta^t)
  (Nesterov) or m / (1 - beta^t);  theta <- theta - lr * (s * NS(u) + weight_decay * theta)
  on Muon leaves; AdamW with the `adam_*` hyperparameters elsewhere, as in `muon`.

  Same hyperparameter names and defaults as `muon`; the Muon branch is optax's own
  `scale_by_muon` with our dimension numbers, the rest is the same AdamW as `muon`'s (optax's
  NAdamW with b2 = 0.999 would confound the comparison).
  Parity: torch.optim.Muon (tests/parity/test_torch_optim.py), with nesterov=False (optax's
  bias-corrected Nesterov momentum is not torch's) and the flags of `muon`.

  Args:
    See `muon`; `ns_coeffs` presets and `scale` as there.

  Returns:
    An `optax.GradientTransformation`.

  References:
    optax.contrib.muon (optax 0.2.8); Jordan et al., 2024.
  """
  sched = newton_schulz.schedule(ns_coeffs, ns_steps)
  if sched.norm_scale != 1.0:
    raise ValueError("optax_muon normalizes by the plain Frobenius norm; use a coefficient set "
                     "without a norm safety factor")
  resolve = routing.dimension_numbers_rule(dimension_numbers)
  dims: Callable[[Any], Any] = lambda tree: jax.tree_util.tree_map_with_path(resolve, tree)
  # One triple takes optax's default (unrolled) path; a schedule takes its scan.
  coeffs = sched.coeffs[0] if len(set(sched.coeffs)) == 1 else sched.coeffs
  muon_tx = optax.chain(
      optax.contrib.scale_by_muon(ns_coeffs=coeffs, ns_steps=ns_steps, beta=momentum,
                                  eps=sched.eps, nesterov=nesterov,
                                  weight_dimension_numbers=dims),
      _optax_shape_scale(scale, resolve),
      optax.add_decayed_weights(weight_decay),
      optax.scale_by_learning_rate(learning_rate),
  )
  return _with_routing(muon_tx, labels, dimension_numbers, adam_learning_rate=adam_learning_rate,
                       adam_b1=adam_b1, adam_b2=adam_b2, adam_eps=adam_eps,
                       adam_weight_decay=adam_weight_decay)


def _optax_shape_scale(scale: str, resolve: routing.DimNumRule) -> optax.GradientTransformation:
  """The shape scale alone (optax keeps its `scale_by_shape` private)."""

  def update_fn(updates, state, params=None):
    del params
    return jax.tree_util.tree_map_with_path(
        lambda p, u: u * _shape_scale(scale, *routing.fans(u.shape, resolve(p, u))),
        updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)
