"""Compressed gradient averaging for data parallelism, with error feedback.

Each device compresses its own gradient (plus the error it has not yet sent), the devices
exchange the compressed messages, and every device decompresses the same mean. What compression
dropped stays in the device's error-feedback memory and is sent in later steps, so the sum of
applied updates tracks the sum of true mean gradients (Karimireddy et al. 2019).

  "none"      `lax.pmean` of the gradient (all-reduce): 4 bytes per element.
  "powersgd"  Vogels, Karimireddy & Jaggi, "PowerSGD: Practical Low-Rank Gradient Compression
              for Distributed Optimization", NeurIPS 2019 (arXiv 1905.13727), Algorithm 1: one
              power-iteration step on M = g + e (viewed as (prod(shape[:-1]), shape[-1])),
              P = mean(M Q), P <- Gram-Schmidt(P), Q = mean(M^T P), applied P Q^T, Q kept to
              warm-start the next step. Both means are all-reduces: 4 r (n + m) bytes per
              matrix. Vectors and scalars, and matrices too small to gain
              (n m / (r (n + m)) < min_compression_ratio), are sent uncompressed.
              alternating=k > 0: the authors' later scheme (github.com/epfml/powersgd,
              `num_iters_per_step`): k half-steps, each all-reducing one factor against the
              other, orthonormalized (Q = mean(M^T orth(P)), then P = mean(M orth(Q)), ...,
              sides alternating across steps too), each applying P Q^T and removing it from M
              before the next. k = 2 sends Algorithm 1's bytes and applies up to rank 2r.
  "topk"      the k = ceil(fraction * size) largest |g + e| of each leaf, as (value, int32
              index) pairs: 8 k bytes. Messages with different supports cannot be summed in
              place, so they are all-gathered (each device receives N - 1 messages).
              shared_indices=True: cyclic local top-k (Chen et al., "ScaleCom", NeurIPS 2020):
              at step t every device sends its values at device (t mod N)'s top-k indices
              (broadcast), which are all-reduced in place (the same bytes are counted).
  "sign"      EF-signSGD (Karimireddy, Rebjock, Stich & Jaggi, "Error Feedback Fixes SignSGD
              and other Gradient Compression Schemes", ICML 2019, arXiv 1901.09847): one bit
              per element, sign(g + e) (0 counts as +), scaled by mean |g + e|; all-gathered:
              ceil(size / 8) + 4 bytes per leaf. Here the learning rate is applied after
              compression (by the optimizer), not inside it as in the paper's SGD.

`uncompressed` (a regex on parameter paths, e.g. "embed|lm_head") sends the matching leaves
whole. `bytes_sent_per_device` counts the payload each device contributes per step; the
`compression_ratio` is the float32 all-reduce payload of the full gradient divided by it.

Every function here runs inside a `jax.shard_map` over the data axis: its gradients are one
device's. The error-feedback state is per device: globally it has a leading axis of size N,
sharded over the data axis (`init_state`), and `data_parallel_grads` wires it all up.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any, Callable, NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from optimizers import routing

FLOAT32_BYTES = 4


class Compressor(NamedTuple):
  """init(params) -> one device's state; compress_and_mean(grads, state, axis_name) ->
  (mean_grads, new_state, stats); bytes_sent(params) -> bytes per device per step."""
  init: Callable[[Any], Any]
  compress_and_mean: Callable[[Any, Any, str], tuple[Any, Any, dict]]
  bytes_sent: Callable[[Any], int]


class _Codec(NamedTuple):
  """One leaf's compression: state of the leaf, the exchange (-> mean, new state, and for
  sparsifiers the mask of coordinates left unsent, else None), the bytes it sends."""
  init: Callable[[jax.Array], Any]
  mean: Callable[[jax.Array, Any, str], tuple[jax.Array, Any, jax.Array | None]]
  nbytes: Callable[[tuple[int, ...]], int]


def _full_bytes(shape) -> int:
  return FLOAT32_BYTES * math.prod(shape)


def _none() -> _Codec:
  return _Codec(lambda p: (), lambda g, s, axis: (lax.pmean(g, axis), s, None), _full_bytes)


def gram_schmidt(p_NxR: jax.Array, eps: float = 1e-8, passes: int = 2) -> jax.Array:
  """Orthonormal columns spanning those of `p` (modified Gram-Schmidt, as in PowerSGD).

  Two passes ("twice is enough", Giraud et al. 2005): one float32 pass loses orthogonality in
  proportion to cond(p), which for full-rank P = M Q reached 1e-5 here; two keep it at rounding.
  """
  r = p_NxR.shape[1]
  later = jnp.arange(r)

  def body(i, p):
    col = lax.dynamic_index_in_dim(p, i, axis=1, keepdims=False)
    col = col / (jnp.linalg.norm(col) + eps)  # eps: an all-zero gradient gives zeros, not NaN
    p = lax.dynamic_update_index_in_dim(p, col, i, axis=1)
    coeff = jnp.where(later > i, col @ p, 0.0)
    return p - jnp.outer(col, coeff)

  for _ in range(passes):
    p_NxR = lax.fori_loop(0, r, body, p_NxR)
  return p_NxR


def _matrix_shape(shape) -> tuple[int, int]:
  return math.prod(shape[:-1]), shape[-1]


def _powersgd(rank: int = 4, min_compression_ratio: float = 1.0, seed: int = 0,
              alternating: int = 0) -> _Codec:
  if alternating < 0:
    raise ValueError(f"powersgd: alternating={alternating} must be >= 0")

  def compressed(shape) -> int:
    """The rank used for a leaf of this shape; 0 = sent uncompressed."""
    if len(shape) < 2:
      return 0
    n, m = _matrix_shape(shape)
    r = min(rank, n, m)
    return r if n * m >= min_compression_ratio * r * (n + m) else 0

  def init(p):
    r = compressed(p.shape)
    if not r:
      return ()
    # The same seed on every device: the all-reduce of M_i Q needs one shared Q.
    key = jax.random.fold_in(jax.random.key(seed), math.prod(p.shape))
    n, m = _matrix_shape(p.shape)
    key_p, key_q = jax.random.split(key)
    state = {"q": jax.random.normal(key_q, (m, r), jnp.float32),
             "error": jnp.zeros(p.shape, jnp.float32)}
    if alternating:
      state["p"] = jax.random.normal(key_p, (n, r), jnp.float32)
      state["turn"] = jnp.zeros((), jnp.int32)
    return state

  def half_step(m_NxM, p, q, right, axis):
    """One all-reduce: right: Q = mean(M^T orth(P)); else P = mean(M orth(Q))."""
    if right:
      p = gram_schmidt(p)
      q = lax.pmean(m_NxM.T @ p, axis)
    else:
      q = gram_schmidt(q)
      p = lax.pmean(m_NxM @ q, axis)
    return p, q, p @ q.T

  def mean(g, s, axis):
    if not s:
      return lax.pmean(g, axis), s, None
    m_NxM = (g.astype(jnp.float32) + s["error"]).reshape(_matrix_shape(g.shape))
    varying = lambda x: lax.pcast(x, axis, to="varying")
    if not alternating:
      p = gram_schmidt(lax.pmean(m_NxM @ s["q"], axis))
      q = lax.pmean(m_NxM.T @ p, axis)
      approx = p @ q.T
      # Q is the same on every device, but it is state each device holds ("varying").
      new_state = {"q": varying(q), "error": m_NxM - approx}
    else:
      # The factors are the same on every device; pmax (of r-column factors, cheap) makes them
      # invariant for shard_map, so the approximation is too.
      p, q = lax.pmax(s["p"], axis), lax.pmax(s["q"], axis)
      turn = lax.pmax(s["turn"], axis)
      approx = jnp.zeros(m_NxM.shape, m_NxM.dtype)
      for it in range(alternating):
        p, q, part = lax.cond((turn * alternating + it) % 2 == 0,
                              functools.partial(half_step, right=True, axis=axis),
                              functools.partial(half_step, right=False, axis=axis),
                              m_NxM - approx, p, q)
        approx = approx + part
      new_state = {"p": varying(p), "q": varying(q), "turn": s["turn"] + 1,
                   "error": m_NxM - approx}
    new_state["error"] = new_state["error"].reshape(g.shape)
    return approx.reshape(g.shape).astype(g.dtype), new_state, None

  def nbytes(shape):
    r = compressed(shape)
    if not r:
      return _full_bytes(shape)
    if not alternating:
      return FLOAT32_BYTES * r * sum(_matrix_shape(shape))
    # Half-steps alternate Q (m rows) and P (n rows); the average over a step pair for odd k.
    return FLOAT32_BYTES * r * alternating * sum(_matrix_shape(shape)) // 2

  return _Codec(init, mean, nbytes)


def _error_feedback_init(p):
  return {"error": jnp.zeros(p.shape, jnp.float32)}


def _topk(fraction: float = 0.01, shared_indices: bool = False) -> _Codec:
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"topk: fraction={fraction} must be in (0, 1]")

  def k_of(size: int) -> int:
    return min(max(math.ceil(fraction * size), 1), size)

  def init(p):
    state = _error_feedback_init(p)
    if shared_indices:
      state["turn"] = jnp.zeros((), jnp.int32)  # whose top-k the devices share this step
    return state

  def mean(g, s, axis):
    m = (g.astype(jnp.float32) + s["error"]).reshape(-1)
    _, idx = lax.top_k(jnp.abs(m), k_of(m.size))
    new_state = {}
    if shared_indices:
      # Cyclic local top-k: the leader's indices are broadcast (a psum with zeros elsewhere),
      # every device sends its values there, and the values are all-reduced in place.
      leader = s["turn"] % lax.psum(1, axis)
      idx = lax.psum(jnp.where(lax.axis_index(axis) == leader, idx, 0), axis)
      mean_g = jnp.zeros(m.shape, m.dtype).at[idx].set(lax.pmean(m[idx], axis))
      new_state["turn"] = s["turn"] + 1
    else:
      values = m[idx]
      # "invarying": every device holds the same gathered messages, hence the same mean.
      all_values, all_idx = (lax.all_gather(values, axis, to="invarying"),
                              lax.all_gather(idx, axis, to="invarying"))
      total = jnp.zeros(m.shape, m.dtype).at[all_idx.reshape(-1)].add(all_values.reshape(-1))
      mean_g = total / all_values.shape[0]
    unsent = jnp.ones(m.shape, bool).at[idx].set(False).reshape(g.shape)
    new_state["error"] = jnp.where(unsent, m.reshape(g.shape), 0.0)
    return mean_g.reshape(g.shape).astype(g.dtype), new_state, unsent

  # value + int32 index; shared indices: the leader's k indices broadcast, k values all-reduced.
  nbytes = lambda shape: (FLOAT32_BYTES + 4) * k_of(math.prod(shape))
  return _Codec(init, mean, nbytes)


def _sign() -> _Codec:
  def mean(g, s, axis):
    m = (g.astype(jnp.float32) + s["error"]).reshape(-1)
    scale = jnp.mean(jnp.abs(m))
    bits = jnp.packbits(m >= 0)
    all_bits = lax.all_gather(bits, axis, to="invarying")
    all_scales = lax.all_gather(scale, axis, to="invarying")
    signs = 2.0 * jnp.unpackbits(all_bits, axis=-1, count=m.size).astype(jnp.float32) - 1.0
    mean_g = jnp.mean(all_scales[:, None] * signs, axis=0)
    sent = scale * (2.0 * (m >= 0) - 1.0)
    return (mean_g.reshape(g.shape).astype(g.dtype), {"error": (m - sent).reshape(g.shape)},
            None)

  nbytes = lambda shape: math.ceil(math.prod(shape) / 8) + FLOAT32_BYTES
  return _Codec(_error_feedback_init, mean, nbytes)


_KINDS = {"none": _none, "powersgd": _powersgd, "topk": _topk, "sign": _sign}
_PRECONDITIONERS = ("none", "adam")


def make_compressor(kind: str, *, warmup_steps: int = 0, momentum: float = 0.0,
                    momentum_masking: bool = True, precondition: str = "none",
                    variance_refresh_every: int = 0, precondition_after: bool = False,
                    b2: float = 0.95, eps: float = 1e-8, uncompressed: str = "",
                    **options) -> Compressor:
  """The compressor `kind` ("none", "powersgd", "topk", "sign") with its options.

  powersgd: rank=4, min_compression_ratio=1.0, seed=0. topk: fraction=0.01. sign, none: none.
  With the defaults each device compresses its raw gradient (the papers' reference, for SGD
  with momentum applied after the exchange). The recipe options, applied per device in order:

    precondition="adam": g <- g / (sqrt(v_hat) + eps), v an EMA (b2) of the squared mean
      gradient, bias-corrected, updated during the warm-up only and frozen after it, each entry
      clipped to Adam's own bound 1 / sqrt(1 - b2) (1-bit Adam,
      Tang et al. 2021, arXiv 2102.02888: Adam's variance settles early, and a frozen
      preconditioner makes Adam momentum SGD on a fixed metric, which compression tolerates).
      variance_refresh_every=R > 0 updates v again every R steps after the warm-up, from one
      full all-reduce of the gradient (0/1 Adam, Lu et al. 2022, arXiv 2202.06009, updates its
      frozen variance at sparse steps; here at a fixed interval), counted in the bytes sent.
      precondition_after=True divides the exchanged mean instead (v is shared, so between
      refreshes this is linear and error feedback still sums to the preconditioned mean):
      raw gradients keep the low-rank structure PowerSGD needs, which Adam's per-coordinate
      normalization flattens.
    momentum=mu > 0: momentum correction (Lin et al., "Deep Gradient Compression", ICLR 2018,
      arXiv 1712.01887): each device compresses its local velocity u <- mu u + g (error feedback
      accumulates u); with top-k and momentum_masking, u is zeroed where it was sent. The
      optimizer must then add no momentum of its own (SGD without momentum, lr scaled by 1 - mu
      to match Adam's normalized EMA).
    warmup_steps: the first steps use the plain all-reduce (uncompressed; error feedback stays
      zero), as 1-bit Adam's warm-up stage and DGC's warm-up.
  """
  if kind not in _KINDS:
    raise ValueError(f"Unknown compression {kind!r}; choose from {sorted(_KINDS)}")
  if precondition not in _PRECONDITIONERS:
    raise ValueError(f"Unknown precondition {precondition!r}; choose from {_PRECONDITIONERS}")
  if precondition == "adam" and warmup_steps < 1:
    raise ValueError("precondition='adam' estimates the variance during the uncompressed "
                     "warm-up: set warmup_steps >= 1")
  codec, plain = _KINDS[kind](**options), _none()

  def codecs(tree) -> list[_Codec]:
    """Each leaf's codec: the plain all-reduce where its path matches `uncompressed`."""
    paths = [routing.path_str(path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    return [plain if uncompressed and re.search(uncompressed, path) else codec for path in paths]

  def bytes_sent(params) -> int:
    return sum(c.nbytes(tuple(p.shape)) for c, p in zip(codecs(params), jax.tree.leaves(params)))

  def init(params):
    leaves = jax.tree.leaves(params)
    zeros = lambda: tuple(jnp.zeros(p.shape, jnp.float32) for p in leaves)
    adam = precondition == "adam"
    return {"codec": tuple(c.init(p) for c, p in zip(codecs(params), leaves)),
            "step": jnp.zeros((), jnp.int32),
            "velocity": zeros() if momentum else (),
            "nu": zeros() if adam else (),
            "nu_count": jnp.zeros((), jnp.int32) if adam else ()}

  def preconditioned(gs, nu, count):
    """g / (sqrt(v_hat) + eps), v_hat bias-corrected for the `count` updates v has had."""
    if precondition == "none":
      return gs
    correction = 1.0 - b2 ** count.astype(jnp.float32)
    # Adam's v_t >= (1 - b2) g_t^2 bounds |g_t| / sqrt(v_t) by 1 / sqrt(1 - b2); a frozen v
    # loses that bound where the warm-up saw little gradient (rare tokens' embedding rows),
    # which otherwise get g / eps.
    bound = 1.0 / math.sqrt(1.0 - b2)
    return [jnp.clip(g / (jnp.sqrt(n / correction) + eps), -bound, bound)
            for g, n in zip(gs, nu)]

  def accumulate(xs, velocity):
    """DGC's local velocity; without momentum the input itself."""
    if not momentum:
      return xs, velocity
    velocity = tuple(momentum * u + x for u, x in zip(velocity, xs))
    return list(velocity), velocity

  def exchange_all(xs, state, axis):
    xs, velocity = accumulate(xs, state["velocity"])
    # A real implementation all-reduces g once and keeps the mean velocity too (velocities are
    # linear in g until masking starts); here the mean is taken of what each device holds.
    return [lax.pmean(x, axis) for x in xs], dict(state, velocity=velocity)

  def compressed(xs, state, axis, leaf_codecs):
    xs, velocity = accumulate(xs, state["velocity"])
    out = [c.mean(x, s, axis) for x, s, c in zip(xs, state["codec"], leaf_codecs)]
    if momentum and momentum_masking:
      velocity = tuple(u if o[2] is None else jnp.where(o[2], u, 0.0)
                       for u, o in zip(velocity, out))
    return [o[0] for o in out], dict(state, codec=tuple(o[1] for o in out), velocity=velocity)

  def update_variance(gs, nu, count, axis):
    return tuple(b2 * n + (1.0 - b2) * lax.pmean(g, axis) ** 2 for n, g in zip(nu, gs)), count + 1

  def compress_and_mean(grads, state, axis_name):
    leaves, treedef = jax.tree.flatten(grads)
    gs = [g.astype(jnp.float32) for g in leaves]
    # Every device holds the same step; pmax makes that known to shard_map (an invariant
    # predicate, so both branches of a cond keep the means replicated).
    step = lax.pmax(state["step"], axis_name)
    warm = step < warmup_steps
    refresh = warm
    if variance_refresh_every:
      refresh = warm | ((step - warmup_steps + 1) % variance_refresh_every == 0)
    state = dict(state)
    if precondition == "adam":
      state["nu"], state["nu_count"] = lax.cond(
          refresh, functools.partial(update_variance, axis=axis_name),
          lambda gs, nu, count: (nu, count), gs, state["nu"], state["nu_count"])
    xs = gs if precondition_after else preconditioned(gs, state["nu"], state["nu_count"])
    send = functools.partial(compressed, axis=axis_name, leaf_codecs=codecs(grads))
    if warmup_steps:
      means, new_state = lax.cond(warm, functools.partial(exchange_all, axis=axis_name), send,
                                  xs, state)
    else:
      means, new_state = send(xs, state)
    if precondition_after:
      # v is the same on every device, but it is per-device state: pmax (a no-op on the values)
      # tells shard_map the result is replicated; a real implementation keeps v replicated.
      means = [lax.pmax(m, axis_name)
               for m in preconditioned(means, state["nu"], state["nu_count"])]
    new_state["step"] = state["step"] + 1
    mean_grads = jax.tree.unflatten(treedef, [m.astype(g.dtype) for m, g in zip(means, leaves)])
    full = sum(_full_bytes(g.shape) for g in leaves)
    # A variance refresh after the warm-up all-reduces the full gradient besides the message.
    extra = jnp.where(refresh, full, 0) if precondition == "adam" else 0
    sent = jnp.where(warm, full, bytes_sent(grads) + extra).astype(jnp.float32)
    stats = {"bytes_sent_per_device": sent, "compression_ratio": full / sent}
    return mean_grads, new_state, stats

  return Compressor(init, compress_and_mean, bytes_sent)


def default_config() -> ml_collections.ConfigDict:
  """The `config.compression` section (kind "none": plain all-reduce). The recipe fields
  (warmup_steps, momentum, precondition) are described in `make_compressor`."""
  c = ml_collections.ConfigDict()
  c.kind = "none"  # "none", "powersgd", "topk" or "sign"
  c.rank = 4  # powersgd
  c.min_compression_ratio = 1.0  # powersgd: smaller matrices are sent uncompressed
  c.alternating = 0  # powersgd: > 0: that many alternating half-steps (epfml/powersgd)
  c.fraction = 0.01  # topk: share of each leaf's elements sent
  c.shared_indices = False  # topk: every device sends at one device's top-k (cyclic; CLT-k)
  c.uncompressed = ""  # regex on parameter paths ("embed|lm_head"): those leaves sent whole
  # Recipes (defaults: the raw gradient compressed from step 1, the papers' reference).
  c.warmup_steps = 0  # plain all-reduce for the first steps (1-bit Adam, DGC)
  c.momentum = 0.0  # > 0: DGC momentum correction; then an optimizer without momentum
  c.momentum_masking = True  # DGC: top-k zeroes the velocity it sent
  c.precondition = "none"  # "adam": divide by sqrt(v) frozen after warmup (1-bit Adam)
  c.variance_refresh_every = 0  # precondition="adam": > 0 updates v every so many steps
  c.precondition_after = False  # precondition the exchanged mean, not each device's gradient
  c.b2 = 0.95  # precondition="adam": the variance EMA
  c.eps = 1e-8
  return c


def is_active(c: ml_collections.ConfigDict | None) -> bool:
  """Whether `config.compression` asks for anything beyond the plain all-reduce."""
  return c is not None and (c.get("kind", "none") != "none" or c.get("momentum", 0.0) > 0
                            or c.get("precondition", "none") != "none")


def from_config(c: ml_collections.ConfigDict) -> Compressor:
  options = {"powersgd": {"rank": int(c.rank),
                          "min_compression_ratio": float(c.min_compression_ratio),
                          "alternating": int(c.get("alternating", 0))},
             "topk": {"fraction": float(c.fraction),
                      "shared_indices": bool(c.get("shared_indices", False))}}.get(c.kind, {})
  recipe = {k: c.get(k, d) for k, d in (("warmup_steps", 0), ("momentum", 0.0),
                                         ("momentum_masking", True), ("precondition", "none"),
                                         ("variance_refresh_every", 0),
                                         ("precondition_after", False),
                                         ("b2", 0.95), ("eps", 1e-8),
                                         ("uncompressed", ""))}
  return make_compressor(c.kind, **recipe, **options)


def init_state(compressor: Compressor, params, mesh, axis_name: str):
  """Every device's state, stacked on a leading axis sharded over `axis_name`."""
  n = mesh.shape[axis_name]
  sharding = NamedSharding(mesh, P(axis_name))
  one = compressor.init(params)
  return jax.tree.map(
      lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (n, *x.shape)), sharding), one)


def data_parallel_grads(compressor: Compressor, loss_and_grads: Callable, mesh, axis_name: str,
                        batch_axis: int = 0) -> Callable:
  """(params, batch, state) -> (loss, mean_grads, new_state, stats) with compressed averaging.

  `loss_and_grads(params, local_batch) -> (loss, grads)` runs on each device's rows (the batch
  is split over `axis_name` along `batch_axis`); the loss is averaged exactly, the gradients
  through `compressor`. Data parallelism only: params and results are replicated on `mesh`.
  Works on meshes with Auto or Explicit axes (inputs are resharded to the specs first).
  """
  specs = (P(), P(*([None] * batch_axis), axis_name), P(axis_name))

  def per_device(params, batch, state):
    # Varying copies: differentiating the replicated (invariant) params inside shard_map would
    # return gradients already summed over the axis, before any compression.
    loss, grads = loss_and_grads(lax.pcast(params, axis_name, to="varying"), batch)
    local = jax.tree.map(lambda x: x[0], state)
    mean_grads, local, stats = compressor.compress_and_mean(grads, local, axis_name)
    return (lax.pmean(loss, axis_name), mean_grads, jax.tree.map(lambda x: x[None], local),
            stats)

  mapped = jax.shard_map(per_device, mesh=mesh, in_specs=specs,
                         out_specs=(P(), P(), P(axis_name), P()))

  explicit = dict(zip(mesh.axis_names, mesh.axis_types))[axis_name] == AxisType.Explicit
  place = jax.reshard if explicit else lax.with_sharding_constraint

  def fn(params, batch, state):
    return mapped(*place((params, batch, state), tuple(NamedSharding(mesh, s) for s in specs)))

  return fn
