"""SGD, the Adagrad/RMSProp/Adadelta line, the Adam family and the large-batch methods.

Every entry is a chain of optax's own transforms, with defaults chosen so the update is the
formula of the paper it cites; only LARS's trust ratio is written here (optax's `lars` uses a
different denominator, see `lars`). Notation: `g` the gradient, `t` the step (from 1), `lr` the
learning rate (a float or an optax schedule), `theta` the parameters, `||.||` the Frobenius norm
of one leaf (a leaf is the paper's "layer"). Every entry is wrapped in `nonfinite.guard`: a
step whose gradient is not usable (NaN, Inf, or a sum of squares that overflows) is skipped
whole and counted.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optimizers import _hparams
from optimizers import cautious
from optimizers import nonfinite
from optimizers._registry import register

# Exponential averages (and maxima, and momentum with decay < 1) of a gradient whose sum of
# squares is finite stay finite, so these entries skip `nonfinite.guard`'s state check (on
# CPU it triples AdamW's update time); Adagrad's sum of g^2 never decays and keeps it.
_guard = functools.partial(nonfinite.guard, check_state=False)


@register("sgd")
def sgd(*, learning_rate: Any, momentum: float | None = None, nesterov: bool = False,
        weight_decay: float = 0.0) -> optax.GradientTransformation:
  """SGD with optional heavy-ball or Nesterov momentum (Polyak 1964; Sutskever et al. 2013).

  m <- momentum * m + g;  update = -lr * m  (Nesterov: -lr * (g + momentum * m)).
  This is PyTorch's convention (no dampening). `weight_decay` adds `wd * theta` to the gradient
  before momentum (coupled L2, as in `torch.optim.SGD`).
  Parity: torch.optim.SGD (tests/parity/test_torch_optim.py), no flags.

  Args:
    learning_rate: lr (float or optax schedule).
    momentum: the momentum coefficient; None: plain SGD.
    nesterov: Nesterov's form of the momentum.
    weight_decay: coupled L2, `wd * theta` added to the gradient.

  Returns:
    An `optax.GradientTransformation`.

  References:
    Polyak, "Some methods of speeding up the convergence of iteration methods", USSR
    Computational Mathematics and Mathematical Physics, 1964.
    Sutskever, Martens, Dahl & Hinton, "On the importance of initialization and momentum in
    deep learning", ICML 2013.
  """
  return _guard(
      (optax.add_decayed_weights(weight_decay) if _hparams.nonzero(weight_decay)
       else optax.identity()),
      optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov),
  )


@register("adagrad")
def adagrad(*, learning_rate: Any, initial_accumulator_value: float = 0.0,
            eps: float = 0.0) -> optax.GradientTransformation:
  """Adagrad, diagonal version (Duchi, Hazan & Singer, 2011, JMLR 12).

  G <- G + g^2;  update = -lr * g / sqrt(G + eps)  (an entry with G = 0 gets update 0).
  Parity: torch.optim.Adagrad (tests/parity/test_torch_optim.py), with torch's eps=0 (see `eps`).

  Args:
    learning_rate: the paper's eta.
    initial_accumulator_value: starting value of G. The paper starts from 0 (as PyTorch does);
      optax's own default is 0.1.
    eps: added inside the square root (optax's placement). The paper's delta sits outside,
      `g / (delta + sqrt(G))`, as PyTorch's eps (default 1e-10) does; with the default 0 both
      read `diag(G)^(-1/2) g` (a pseudo-inverse for zero entries), the paper's update.

  Returns:
    An `optax.GradientTransformation` (`optax.scale_by_rss` then the learning rate).
  """
  return nonfinite.guard(optax.adagrad(
      learning_rate, initial_accumulator_value=initial_accumulator_value, eps=eps))


@register("rmsprop")
def rmsprop(*, learning_rate: Any, decay: float = 0.9, eps: float = 1e-8,
            centered: bool = False, momentum: float | None = None, nesterov: bool = False,
            eps_in_sqrt: bool = True, initial_scale: float = 0.0) -> optax.GradientTransformation:
  """RMSProp (Hinton, 2012, lecture 6e) and its centered form (Graves, 2013, arXiv 1308.0850).

  v <- decay v + (1-decay) g^2;  update = -lr * g / sqrt(v + eps).
  centered: mu <- decay mu + (1-decay) g and the denominator is sqrt(v - mu^2 + eps).
  momentum: b <- momentum b + lr * g / sqrt(...);  update = -b (as in Graves).

  Differences from PyTorch: PyTorch puts eps outside the root (`sqrt(v) + eps`, here
  `eps_in_sqrt=False`) and keeps lr outside its momentum buffer (b <- momentum b + g/denom,
  update = -lr b); both conventions agree for a constant lr. Hinton's slide has no eps; Graves
  puts it inside the root, as the default here.
  Parity: torch.optim.RMSprop (tests/parity/test_torch_optim.py), with eps_in_sqrt=False.

  Args:
    learning_rate: global step size.
    decay: the averaging constant (Hinton's 0.9; Graves's aleph = 0.95).
    eps: stability constant, inside the root unless `eps_in_sqrt=False`.
    centered: divide by the running standard deviation instead of the RMS (Graves).
    momentum: optional momentum on the normalized step (None: no momentum).
    nesterov: Nesterov form of that momentum.
    eps_in_sqrt: where eps goes (True: inside, the paper's; False: PyTorch's).
    initial_scale: starting value of v (0 as in PyTorch; TF1 used 1).

  Returns:
    An `optax.GradientTransformation` (optax's `scale_by_rms`/`scale_by_stddev`, lr, `trace`).
  """
  return _guard(optax.rmsprop(
      learning_rate, decay=decay, eps=eps, initial_scale=initial_scale, eps_in_sqrt=eps_in_sqrt,
      centered=centered, momentum=momentum, nesterov=nesterov))


@register("adadelta")
def adadelta(*, learning_rate: Any = 1.0, rho: float = 0.95, eps: float = 1e-6,
             weight_decay: float = 0.0) -> optax.GradientTransformation:
  """Adadelta (Zeiler, 2012, arXiv 1212.5701, Algorithm 1).

  E[g^2] <- rho E[g^2] + (1-rho) g^2;  d = -sqrt(E[dx^2] + eps) / sqrt(E[g^2] + eps) * g
  E[dx^2] <- rho E[dx^2] + (1-rho) d^2;  update = lr * d.

  The paper has no learning rate (lr = 1, the default here); as in optax and PyTorch, an lr
  other than 1 scales the step but not the E[dx^2] statistics. rho = 0.95 and eps = 1e-6 are
  the paper's experimental values (PyTorch and optax default to rho = 0.9).
  Parity: torch.optim.Adadelta (tests/parity/test_torch_optim.py), no flags (rho set on both sides).

  Args:
    learning_rate: multiplier of the paper's step (1 reproduces the paper).
    rho: decay of both running averages.
    eps: added inside both square roots, as in the paper.
    weight_decay: coupled L2 (`wd * theta` added to g); not in the paper.

  Returns:
    An `optax.GradientTransformation` (`optax.scale_by_adadelta`, then lr).
  """
  return _guard(
      optax.adadelta(learning_rate, rho=rho, eps=eps, weight_decay=weight_decay))


@register("adam")
def adam(*, learning_rate: Any, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
         eps_root: float = 0.0, nesterov: bool = False) -> optax.GradientTransformation:
  """Adam (Kingma & Ba, 2015, arXiv 1412.6980, Algorithm 1).

  m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;  m_hat = m / (1-b1^t);  v_hat = v / (1-b2^t)
  update = -lr * m_hat / (sqrt(v_hat) + eps).

  eps sits outside the root after bias correction, as in the paper's Algorithm 1 and PyTorch
  (the paper's section 2 "efficient" ordering puts a rescaled eps on the uncorrected v).
  Parity: torch.optim.Adam (tests/parity/test_torch_optim.py), no flags.

  Args:
    learning_rate: alpha.
    b1: first-moment decay.
    b2: second-moment decay.
    eps: added to sqrt(v_hat).
    eps_root: added inside the root (0 in the paper).
    nesterov: NAdam's look-ahead first moment (see `nadamw`).

  Returns:
    An `optax.GradientTransformation` (`optax.scale_by_adam`, then lr).
  """
  return _guard(
      optax.adam(learning_rate, b1=b1, b2=b2, eps=eps, eps_root=eps_root, nesterov=nesterov))


@register("adamw")
def adamw(*, learning_rate: Any, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
          eps_root: float = 0.0, weight_decay: float = 1e-4, nesterov: bool = False,
          cautious_weight_decay: bool = False,
          mu_dtype: str | None = None) -> optax.GradientTransformation:
  """AdamW (Loshchilov & Hutter, 2019, arXiv 1711.05101, Algorithm 2).

  m, v, m_hat, v_hat as in `adam`;  update = -lr * (m_hat / (sqrt(v_hat) + eps) + wd * theta).

  The paper writes theta <- theta - eta_t (alpha * adam_step + lambda * theta) with eta_t a
  schedule multiplier: its lambda is `lr * weight_decay` here (optax's and PyTorch's
  convention, where the decay is multiplied by lr). eps sits outside the square root.
  Parity: torch.optim.AdamW (tests/parity/test_torch_optim.py), no flags.

  Args:
    learning_rate: alpha * eta_t.
    b1, b2, eps, eps_root, nesterov: as in `adam`.
    weight_decay: decoupled decay, multiplied by lr.
    cautious_weight_decay: decay only where the Adam step and theta agree in sign,
      wd * theta * 1(adam_step * theta >= 0) (Chen et al., 2025, arXiv 2510.12402; the NanoGPT
      speedrun), via `cautious.add_cautious_decayed_weights`.
    mu_dtype: dtype of the first moment m (e.g. "bfloat16" to halve its bytes); None keeps
      the parameters' dtype. v stays in the parameters' dtype (optax's choice).

  Returns:
    An `optax.GradientTransformation` (`optax.adamw`, or its three transforms with the
    cautious decay in the middle).
  """
  if cautious_weight_decay:
    return _guard(
        optax.scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root, mu_dtype=mu_dtype,
                            nesterov=nesterov),
        cautious.add_cautious_decayed_weights(weight_decay),
        optax.scale_by_learning_rate(learning_rate),
    )
  return _guard(optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, eps_root=eps_root,
                            mu_dtype=mu_dtype, weight_decay=weight_decay, nesterov=nesterov))


@register("nadamw")
def nadamw(*, learning_rate: Any, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
           weight_decay: float = 1e-4) -> optax.GradientTransformation:
  """NAdamW: Nesterov Adam (Dozat, 2016, ICLR workshop) with AdamW's decoupled decay.

  m, v as in `adam`;  m_bar = b1 m / (1-b1^(t+1)) + (1-b1) g / (1-b1^t)
  update = -lr * (m_bar / (sqrt(v / (1-b2^t)) + eps) + wd * theta).

  This is Dozat's Algorithm 2 with a constant momentum b1, without the extra b2 factor his
  algorithm puts on v_hat (optax drops it too). PyTorch's `NAdam` instead warms the momentum
  up, mu_t = b1 (1 - 0.5 * 0.96^(0.004 t)), and only decouples the decay with
  `decoupled_weight_decay=True`.
  Parity: torch.optim.NAdam (tests/parity/test_torch_optim.py), with torch's momentum_decay=1e9
  (mu_t = b1 exactly) and decoupled_weight_decay=True; Dozat's warmup has no flag here.

  Args:
    learning_rate, b1, b2, eps, weight_decay: as in `adamw`.

  Returns:
    An `optax.GradientTransformation` (`optax.nadamw`).

  References:
    Dozat, "Incorporating Nesterov Momentum into Adam", ICLR 2016 workshop.
    Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019, arXiv 1711.05101.
  """
  return _guard(
      optax.nadamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))


@register("amsgrad")
def amsgrad(*, learning_rate: Any, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
            bias_correction: bool = False,
            correct_after_max: bool = False) -> optax.GradientTransformation:
  """AMSGrad (Reddi, Kale & Kumar, 2018, ICLR, Algorithm 2, constant b1 and lr).

  m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;  v_max <- max(v_max, v)
  update = -lr * m / (sqrt(v_max) + eps).

  The default (`bias_correction=False`) is the paper's update: no bias correction. The eps
  (not in the paper) only guards entries whose gradient has always been 0.
  `bias_correction=True` is optax's convention: m_hat = m / (1-b1^t) and the running max is
  taken over the corrected v / (1-b2^t). PyTorch (`Adam(amsgrad=True)`) differs from both: it
  takes the max of the uncorrected v and divides that max by (1-b2^t) afterwards,
  update = -lr * m_hat / (sqrt(v_max / (1-b2^t)) + eps): `correct_after_max=True`.
  Parity: torch.optim.Adam(amsgrad=True) (tests/parity/test_torch_optim.py), with
  bias_correction=True, correct_after_max=True.

  Args:
    learning_rate: alpha.
    b1: first-moment decay.
    b2: second-moment decay.
    eps: added to sqrt(v_max) (to sqrt(v_max / (1-b2^t)) with `correct_after_max`).
    bias_correction: optax's bias-corrected variant instead of the paper's.
    correct_after_max: with `bias_correction`, PyTorch's order: the max of the uncorrected v,
      corrected afterwards.

  Returns:
    An `optax.GradientTransformation` (`optax.amsgrad`, or `scale_by_amsgrad_corrected_after_max`
    then lr).
  """
  if correct_after_max:
    if not bias_correction:
      raise ValueError("amsgrad: correct_after_max=True needs bias_correction=True")
    return _guard(scale_by_amsgrad_corrected_after_max(b1=b1, b2=b2, eps=eps),
                  optax.scale_by_learning_rate(learning_rate))
  return _guard(optax.amsgrad(
      learning_rate, b1=b1, b2=b2, eps=eps, bias_correction_mu=bias_correction,
      bias_correction_nu=bias_correction))


def scale_by_amsgrad_corrected_after_max(*, b1: float = 0.9, b2: float = 0.999,
                                         eps: float = 1e-8) -> optax.GradientTransformation:
  """AMSGrad with the bias correction applied after the running max (PyTorch's order).

  m, v as in `adam`;  v_max <- max(v_max, v);  u = (m / (1-b1^t)) / (sqrt(v_max / (1-b2^t)) + eps).
  Written here because `optax.scale_by_amsgrad` corrects v before the max (or not at all); the
  state is optax's `ScaleByAmsgradState`.
  """

  def init_fn(params):
    return optax.ScaleByAmsgradState(
        count=jnp.zeros([], jnp.int32), mu=optax.tree.zeros_like(params),
        nu=optax.tree.zeros_like(params), nu_max=optax.tree.zeros_like(params))

  def update_fn(updates, state, params=None):
    del params
    mu = optax.tree.update_moment(updates, state.mu, b1, 1)
    nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
    count = optax.safe_increment(state.count)
    nu_max = jax.tree.map(jnp.maximum, state.nu_max, nu)
    mu_hat = optax.tree.bias_correction(mu, b1, count)
    nu_hat = optax.tree.bias_correction(nu_max, b2, count)
    updates = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu_hat, nu_hat)
    return updates, optax.ScaleByAmsgradState(count=count, mu=mu, nu=nu, nu_max=nu_max)

  return optax.GradientTransformation(init_fn, update_fn)


@register("lamb")
def lamb(*, learning_rate: Any, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6,
         weight_decay: float = 0.0, bias_correction: bool = True
         ) -> optax.GradientTransformation:
  """LAMB (You et al., 2020, arXiv 1904.00962, Algorithm 2 with phi = identity).

  m_hat, v_hat as in `adam`;  r = m_hat / (sqrt(v_hat) + eps) + wd * theta
  update = -lr * (||theta|| / ||r||) * r, per leaf; the ratio is 1 where either norm is 0.

  Bias correction is on, as in the paper's Algorithm 2 (the reference BERT code left it out).
  PyTorch has no LAMB; common ports clip the trust ratio (phi) to [0, 10] and some skip it for
  biases and norms, which the paper does not.

  Args:
    learning_rate: eta.
    b1, b2, eps: as in `adam` (eps outside the root; the paper uses 1e-6).
    weight_decay: lambda, added to the Adam step before the trust ratio.
    bias_correction: False: r = m / (sqrt(v) + eps) + wd * theta, neither moment corrected (the
      paper's v3 and the BERT reference code; pytorch_optimizer's `Lamb`). Without decay the
      trust ratio cancels the corrections' common factor, except through eps; with decay it
      does not.

  Parity: pytorch_optimizer.Lamb (tests/parity/test_pytorch_optimizer.py), theirs with
  adam_debias=True; with weight decay, ours with bias_correction=False.

  Returns:
    An `optax.GradientTransformation` (`optax.lamb`, or the same chain without the correction).
  """
  if bias_correction:
    return _guard(
        optax.lamb(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))
  return _guard(optax.chain(
      scale_by_adam_uncorrected(b1=b1, b2=b2, eps=eps),
      optax.add_decayed_weights(weight_decay), optax.scale_by_trust_ratio(),
      optax.scale_by_learning_rate(learning_rate)))


def scale_by_adam_uncorrected(*, b1: float = 0.9, b2: float = 0.999,
                              eps: float = 1e-6) -> optax.GradientTransformation:
  """u = m / (sqrt(v) + eps) with m, v as in Adam and no bias correction (LAMB v3's step).

  Written here because `optax.scale_by_adam` always corrects; the state is optax's
  `ScaleByAdamState`, so a checkpoint fits either `lamb(bias_correction=...)`.
  """

  def init_fn(params):
    return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32),
                                  mu=optax.tree.zeros_like(params),
                                  nu=optax.tree.zeros_like(params))

  def update_fn(updates, state, params=None):
    del params
    mu = optax.tree.update_moment(updates, state.mu, b1, 1)
    nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
    updates = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu, nu)
    return updates, optax.ScaleByAdamState(count=optax.safe_increment(state.count), mu=mu,
                                           nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


class ScaleByLarsTrustRatioState(NamedTuple):
  count: jax.Array


def scale_by_lars_trust_ratio(*, trust_coefficient: float = 1e-3, weight_decay: float = 0.0,
                              eps: float = 0.0) -> optax.GradientTransformation:
  """LARS's local learning rate times the weight-decayed gradient, per leaf.

  u = eta * ||theta|| / (||g|| + wd * ||theta|| + eps) * (g + wd * theta);  u = g + wd theta
  where ||theta|| or the denominator is 0.

  Written here because `optax.lars` divides by ||g + wd * theta|| (after adding the decay),
  not by the paper's ||g|| + wd * ||theta||; the two agree only for wd = 0.

  Args:
    trust_coefficient: eta, the paper's trust coefficient.
    weight_decay: beta, the paper's weight decay.
    eps: added to the denominator.

  Returns:
    An `optax.GradientTransformation` that needs `params`.

  References:
    You, Gitman & Ginsburg, "Large Batch Training of Convolutional Networks", 2017,
    arXiv 1708.03888, Algorithm 1.
  """

  def init_fn(params):
    del params
    return ScaleByLarsTrustRatioState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("lars: update() needs params for the trust ratio")

    def one(g, p):
      p_norm = jnp.linalg.norm(p.ravel())
      denom = jnp.linalg.norm(g.ravel()) + weight_decay * p_norm + eps
      ratio = jnp.where((p_norm > 0) & (denom > 0),
                        trust_coefficient * p_norm / jnp.where(denom > 0, denom, 1), 1)
      return (ratio * (g + weight_decay * p)).astype(g.dtype)

    updates = jax.tree.map(one, updates, params)
    return updates, ScaleByLarsTrustRatioState(count=optax.safe_increment(state.count))

  return optax.GradientTransformation(init_fn, update_fn)


@register("lars")
def lars(*, learning_rate: Any, momentum: float = 0.9, nesterov: bool = False,
         weight_decay: float = 0.0, trust_coefficient: float = 1e-3,
         eps: float = 0.0) -> optax.GradientTransformation:
  """LARS (You, Gitman & Ginsburg, 2017, arXiv 1708.03888, Algorithm 1).

  local_lr = eta * ||theta|| / (||g|| + wd * ||theta||)  (per leaf; 1 where a norm is 0)
  v <- momentum v + lr * local_lr * (g + wd * theta);  update = -v.

  Momentum is applied after the global and local rates, as in the paper (lr inside the
  buffer); `torch`-style ports that keep lr outside agree for a constant lr. The paper
  excludes nothing; common ports skip the trust ratio and decay for biases and norms.

  Args:
    learning_rate: gamma_t, the global rate (LARS's usual values are O(1), since
      `trust_coefficient` is small).
    momentum: m.
    nesterov: Nesterov form of the momentum.
    weight_decay: beta.
    trust_coefficient: eta.
    eps: added to the trust-ratio denominator.

  Parity: pytorch_optimizer.LARS (tests/parity/test_pytorch_optimizer.py), matrices only
  (theirs skips the trust ratio and decay below 2-D).

  Returns:
    An `optax.GradientTransformation` (`scale_by_lars_trust_ratio`, lr, `optax.trace`).
  """
  return _guard(
      scale_by_lars_trust_ratio(trust_coefficient=trust_coefficient, weight_decay=weight_decay,
                                eps=eps),
      optax.scale_by_learning_rate(learning_rate),
      optax.trace(decay=momentum, nesterov=nesterov),
  )


@register("adafactor")
def adafactor(*, learning_rate: Any, decay_rate: float = 0.8, eps: float = 1e-30,
              clipping_threshold: float | None = 1.0, multiply_by_parameter_scale: bool = True,
              min_dim_size_to_factor: int = 128,
              momentum: float | None = None) -> optax.GradientTransformation:
  """Adafactor (Shazeer & Stern, 2018, arXiv 1804.04235, Algorithms 4 and 5).

  b2_t = 1 - t^(-decay_rate);  for a factored (n, m) matrix, with G2 = g^2 + eps:
  R <- b2_t R + (1-b2_t) rowmean(G2);  C <- b2_t C + (1-b2_t) colmean(G2)
  V = R C^T / mean(R);  other leaves: V <- b2_t V + (1-b2_t) G2.
  U = g / sqrt(V);  U <- U / max(1, RMS(U) / d);  update = -lr * max(1e-3, RMS(theta)) * U.

  `learning_rate` is the paper's relative step size rho_t (the paper's min(1e-2, 1/sqrt(t)) is
  a schedule the trainer may pass). Unlike the paper (which factors every matrix), optax
  factors a leaf only when its two largest dimensions are >= `min_dim_size_to_factor`, and
  for 3-D and higher tensors it factors those two largest dimensions. PyTorch's
  `torch.optim.Adafactor` always uses rho_t = min(lr, 1/sqrt(t)) and applies eps_1 as a floor,
  max(V, eps_1), instead of adding it to g^2.

  Args:
    learning_rate: rho_t.
    decay_rate: c in b2_t = 1 - t^(-c) (0.8 in the paper).
    eps: epsilon_1, added to g^2 (1e-30 in the paper).
    clipping_threshold: d, the update-clipping RMS (1 in the paper; None: no clipping).
    multiply_by_parameter_scale: the relative step (paper's alpha_t = max(eps2, RMS(theta))
      rho_t with eps2 = 1e-3); False makes `learning_rate` an absolute step.
    min_dim_size_to_factor: see above.
    momentum: optional b1 (the paper's default is none).

  Parity: pytorch_optimizer.AdaFactor (tests/parity/test_pytorch_optimizer.py), ours with
  min_dim_size_to_factor=1; theirs relative_step=False, momentum_dtype=float32.

  Returns:
    An `optax.GradientTransformation` (`optax.adafactor`).
  """
  return _guard(optax.adafactor(
      learning_rate, min_dim_size_to_factor=min_dim_size_to_factor, decay_rate=decay_rate,
      multiply_by_parameter_scale=multiply_by_parameter_scale,
      clipping_threshold=clipping_threshold, momentum=momentum, eps=eps))
