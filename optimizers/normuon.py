"""NorMuon: Muon whose orthogonalized update is normalized per neuron, then rescaled to Muon's norm.

For each Muon matrix (fan_in, fan_out), after momentum and Newton–Schulz (O = s * NS(u), as in
`muon`), NorMuon keeps an EMA of the mean square of every output neuron's weights' updates
(the column of O: the row of the authors' (fan_out, fan_in) PyTorch weight),

  v <- b2 v + (1 - b2) mean_{fan_in}(O^2),     O' = O / (sqrt(v) + eps),
  update = O' * ||O||_F / (||O'||_F + eps),

so every neuron moves at a comparable rate while the update keeps Muon's Frobenius norm (hence
its RMS). No bias correction (the rescale removes the first steps' uniform factor), eps 1e-10 as
in the authors' code. Embeddings, head, norms and scalars go to the same AdamW as `muon`'s.

Only the second-moment vector (one float per output neuron) is added to Muon's state. The
statistics are taken of s * NS(u), the shape-scaled update: s is constant per matrix, so the
normalized direction is the authors' (eps aside, at 1e-10 relative).

Reference:
  Li et al., "NorMuon: Making Muon more efficient and scalable", 2025, arXiv 2510.05491
  (the authors' code: github.com/zichongli5/NorMuon, `normuon_update`).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from optimizers import muon
from optimizers import routing
from optimizers._registry import register

EPS = 1e-10


class ScaleByNeuronNormState(NamedTuple):
  """nu: per Muon leaf, (batch, 1, fan_out) float32 EMA of the neurons' mean squares."""
  nu: Any


def scale_by_neuron_norm(b2: float = 0.95, *, eps: float = EPS,
                         dimension_numbers: routing.DimNumRule | Any | None = None,
                         ) -> optax.GradientTransformation:
  """Normalizes each output neuron by its second-moment EMA, then restores the matrix's norm.

  Args:
    b2: decay of the per-neuron second moment.
    eps: added to sqrt(v) and to the normalized update's norm, as in the authors' code.
    dimension_numbers: matrix view of each leaf (`routing.dimension_numbers_rule`).

  Returns:
    An `optax.GradientTransformation` whose state is a `ScaleByNeuronNormState`.
  """
  resolve = routing.dimension_numbers_rule(dimension_numbers)

  def stats_shape(path, x):
    fan_in, fan_out = routing.fans(x.shape, resolve(path, x))
    return (x.size // (fan_in * fan_out), 1, fan_out)

  def init_fn(params):
    return ScaleByNeuronNormState(nu=jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.zeros(stats_shape(path, x), jnp.float32), params))

  def update_fn(updates, state, params=None):
    del params

    def one(path, u, nu):
      mats, inverse = routing.to_matrices(u.astype(jnp.float32), resolve(path, u))
      nu = b2 * nu + (1.0 - b2) * jnp.mean(jnp.square(mats), axis=-2, keepdims=True)
      normed = mats / (jnp.sqrt(nu) + eps)
      norm = lambda x: jnp.sqrt(jnp.sum(jnp.square(x), axis=(-2, -1), keepdims=True))
      normed = normed * (norm(mats) / (norm(normed) + eps))
      return inverse(normed).astype(u.dtype), nu

    leaves, treedef = jax.tree_util.tree_flatten_with_path(updates)
    outs = [one(path, u, nu) for (path, u), nu in zip(leaves, treedef.flatten_up_to(state.nu))]
    return (jax.tree.unflatten(treedef, [o[0] for o in outs]),
            ScaleByNeuronNormState(nu=jax.tree.unflatten(treedef, [o[1] for o in outs])))

  return optax.GradientTransformation(init_fn, update_fn)


@register("normuon")
def normuon(*, learning_rate: Any, momentum: float = 0.95, b2: float = 0.95,
            nesterov: bool = True, momentum_warmup_steps: int = 0, momentum_start: float = 0.85,
            ns_steps: int = 5, ns_coeffs: str | Sequence[Any] = "quintic",
            ns_dtype: str = "float32", gram_ns: bool = False, scale: str = "original",
            weight_decay: float = 0.0, cautious_weight_decay: bool = False,
            adam_learning_rate: Any = 3e-3, adam_b1: float = 0.9, adam_b2: float = 0.95,
            adam_eps: float = 1e-8, adam_weight_decay: float = 0.0,
            labels: routing.LabelRule | Any | None = None,
            dimension_numbers: routing.DimNumRule | Any | None = None,
            ) -> optax.GradientTransformation:
  """NorMuon (Li et al., 2025) on hidden matrices, AdamW on the rest.

  m <- beta m + (1 - beta) g;  u = (1 - beta) g + beta m (Nesterov) or m;  O = s * NS(u);
  v <- b2 v + (1 - b2) mean_{fan_in}(O^2);  O' = O / (sqrt(v) + eps) * ||O|| / ||O / (...)||;
  theta <- theta - lr * (O' + weight_decay * theta)   (Muon leaves; AdamW elsewhere).

  Args:
    learning_rate, momentum, nesterov, momentum_warmup_steps, momentum_start: as in `muon.muon`.
    ns_steps, ns_coeffs, ns_dtype, gram_ns, scale: as in `muon.muon`.
    weight_decay, cautious_weight_decay: as in `muon.muon`.
    adam_learning_rate, adam_b1, adam_b2, adam_eps, adam_weight_decay: as in `muon.muon`.
    labels, dimension_numbers: as in `muon.muon`.
    b2: decay of the per-neuron second moment (the authors' beta2, 0.95).

  Parity: pytorch_optimizer.NorMuon (tests/parity/test_pytorch_optimizer.py), ours with
  ns_coeffs="quintic" (their "original") and dimension_numbers (1, 0) (torch's (fan_out,
  fan_in) layout); theirs with its Newton-Schulz in float32 (it runs bfloat16).

  Returns:
    An `optax.GradientTransformation`.

  References:
    Li et al., "NorMuon: Making Muon more efficient and scalable", 2025, arXiv 2510.05491.
  """
  normuon_tx = optax.chain(
      muon.ema_momentum(momentum, nesterov=nesterov, warmup_steps=momentum_warmup_steps,
                        start=momentum_start),
      muon.scale_by_newton_schulz(ns_coeffs=ns_coeffs, ns_steps=ns_steps, ns_dtype=ns_dtype,
                                  gram_ns=gram_ns, scale=scale,
                                  dimension_numbers=dimension_numbers),
      scale_by_neuron_norm(b2, dimension_numbers=dimension_numbers),
      muon.decayed_weights(weight_decay, cautious=cautious_weight_decay),
      optax.scale_by_learning_rate(learning_rate),
  )
  return muon._with_routing(  # pylint: disable=protected-access
      normuon_tx, labels, dimension_numbers, adam_learning_rate=adam_learning_rate,
      adam_b1=adam_b1, adam_b2=adam_b2, adam_eps=adam_eps, adam_weight_decay=adam_weight_decay)
