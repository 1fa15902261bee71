"""Registry entries against pytorch_optimizer 4.1.0 and lion-pytorch 0.2.5 (issue 19).

Each case runs one registry entry and its reference step for step on the harness's problem
(tests/parity/harness.py). Where the two follow different conventions, the case sets the flag
that makes them the same algorithm and its `why` names it:
  lion       lion_pytorch (lucidrains', the lineage of the authors' code) and pytorch_optimizer:
             no flags.
  lamb       pytorch_optimizer divides lr by 1 - b1^t outside the trust ratio (an early-step
             inflation the paper does not have): theirs `adam_debias=True`. Ours bias-corrects m
             and v (the paper's Algorithm 2), theirs neither (the paper's v3): the trust ratio
             cancels the common factor except through eps, and with weight decay (inside the
             ratio) not at all: with decay, ours `bias_correction=False`.
  lars       theirs skips the trust ratio and decay for tensors with < 2 dims: matrices only.
  adafactor  theirs factors every >= 2-D tensor and takes lr as given only with
             `relative_step=False`: ours `min_dim_size_to_factor=1`; theirs keeps momentum in
             bfloat16 by default: `momentum_dtype=torch.float32`.
  ademamix   theirs couples weight decay by default: `weight_decouple=True`; one
             `t_alpha_beta3` is ours `alpha_warmup_steps = b3_warmup_steps`.
  cautious   pytorch_optimizer rescales the mask by numel / (sum + 1) (the authors' first
             version); ours defaults to the authors' current mask / max(mean, 1e-3): ours
             `normalization="sum_plus_one"`. The decay stays outside the mask on both sides.
  normuon    theirs reads a 2-D weight as torch's (fan_out, fan_in): ours `dimension_numbers`
             (1, 0); their "original" coefficients are our "quintic"; theirs runs Newton-Schulz
             in bfloat16, here patched to float32 (`_Float32NSNorMuon`).
  psgd_kron  ours damps the fitted input, h = m + sqrt(eps) mean|m| V (psgd_jax), theirs fits
             on m: ours `damping=False`. The fit draws a random probe per tensor and rebalances
             at random: theirs is fed our draws (`_SameDrawsKron`), so the comparison is exact.
  shampoo    pytorch_optimizer's Shampoo is the paper's algorithm (L_0 = eps I, plain sums, a
             root every step from step 1, no grafting, every dim of every tensor preconditioned):
             ours `SHAMPOO_AS_PAPER`, on matrices (ours leaves vectors to the grafting
             direction). Its `preconditioning_compute_steps > 1` is not compared: its roots start
             at zero, so it does not move until the first root.
  sam        `harness.check` cannot give the gradient at the perturbed point: `run_sam` drives
             their first_step/second_step by hand; ASAM with ours `eta=0` (theirs has none).
Entries of this scope without a case are in `NONE`, with the reason.
"""

from __future__ import annotations

import functools
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import pytorch_optimizer as po
import lion_pytorch
from pytorch_optimizer.optimizer.muon import base as _muon_base
from pytorch_optimizer.optimizer.muon import normuon as _normuon_mod
from pytorch_optimizer.optimizer.utils.matrix import zero_power_via_newton_schulz_5 as _NS5

import optimizers
from optimizers import psgd_kron
from optimizers import routing
from tests.parity import harness

PO = "pytorch_optimizer"
TORCH_LAYOUT = lambda path, leaf: routing.DimensionNumbers(1, 0)  # torch's (fan_out, fan_in)
MATRICES = {"square": (8, 8), "wide": (6, 10), "tall": (10, 6)}


def _po(cls, **kw):
  return lambda params: cls(params, **kw)


class _Float32NSNorMuon(po.NorMuon):
  """pytorch_optimizer's NorMuon with its Newton–Schulz in float32 (it defaults to bfloat16)."""

  def step(self, closure=None):
    f32 = functools.partial(_NS5, dtype=torch.float32)
    with mock.patch.object(_normuon_mod, "zero_power_via_newton_schulz_5", f32), \
         mock.patch.object(_muon_base, "zero_power_via_newton_schulz_5", f32):
      return super().step(closure)


def _normuon(params, float32=True, **kw):
  """Matrices in a Muon group, vectors in the AdamW group (as ours routes them)."""
  groups = [dict(params=[p for p in params if p.ndim >= 2], use_muon=True),
            dict(params=[p for p in params if p.ndim < 2], use_muon=False, eps=1e-8)]
  groups = [g for g in groups if g["params"]]
  return (_Float32NSNorMuon if float32 else po.NorMuon)(groups, **kw)


class _SameDrawsKron(po.Kron):
  """pytorch_optimizer's Kron fed our probes and rebalancing draws (`psgd_kron.step_randomness`).

  Kron's preconditioner fit is random (a normal probe per tensor, a rebalance with probability
  0.01). Ours draws both from a key in its state; here the same key is advanced once per step and
  the reference's `torch.randn_like` (called once per tensor, in parameter order, on the steps
  that fit) and `np.random.random` (the rebalance) return those draws, so the two runs are one
  deterministic algorithm and are compared step for step.
  """

  def __init__(self, params, *, names, seed=0, **kw):
    super().__init__(params, **kw)
    self._names, self._key = list(names), jax.random.PRNGKey(seed)

  def step(self, closure=None):
    order = sorted(range(len(self._names)), key=lambda i: self._names[i])  # jax.tree order
    shapes = [tuple(self.param_groups[0]["params"][i].shape) or (1,) for i in order]
    self._key, balance, probes = psgd_kron.step_randomness(self._key, shapes)
    by_param = [None] * len(order)
    for i, v in zip(order, probes):
      by_param[i] = torch.from_numpy(np.array(v))
    queue = iter(by_param)
    randn_like = lambda x, dtype=None: next(queue).reshape(x.shape).to(dtype or x.dtype)
    with mock.patch.object(torch, "randn_like", randn_like), \
         mock.patch.object(np.random, "random", lambda: 0.0 if bool(balance) else 1.0):
      return super().step(closure)


def _kron(**kw):
  return lambda params: _SameDrawsKron(params, names=harness.SHAPES, **kw)


def case(id, entry, hparams, reference, tolerance, why, package=PO, **kw):
  return harness.Case(id=id, entry=entry, hparams=hparams, reference=reference, package=package,
                      tolerance=tolerance, why=why, **kw)


# Each reason carries the measured figure (torch 2.13.0 CPU, JAX CPU); tolerances sit 3-10x above.
F32 = "float32 rounding over 40 steps (measured <= 4e-7)"
DECAY_F32 = ("float32 rounding of the decoupled decay: theirs p * (1 - lr wd) before the step, "
             "ours -lr (u + wd p) in one update (measured 1.5e-6)")
LION = "sign updates: identical unless a rounding flips a sign; none did (measured 0)"
LION_WD = ("sign updates after float32 rounding of the decay, theirs p * (1 - lr wd), ours "
           "-lr (sign + wd p) (measured 2e-6)")
LAMB_EPS = ("eps: ours adds it to sqrt(v_hat) (bias-corrected, the paper), theirs to sqrt(v) "
            "(adam_debias=True leaves m and v uncorrected; the trust ratio cancels the "
            "corrections' common factor, not eps); measured 1.7e-5 at eps=1e-6, 1.3e-7 at "
            "eps=1e-12 (lamb-eps0)")
KRON = ("same probes and rebalancing draws on both sides (seed 0 rebalances at step 12); "
        "float32 rounding through the triangular solves and the factor updates (measured "
        "<= 3.6e-7)")
NS_F32 = ("float32 Newton-Schulz on both sides (theirs patched from bfloat16): 5 quintic steps "
          "amplify float32 rounding (measured 3.4e-6)")
SHAMPOO = ("float32 roots, eigh (ours) against SVD (theirs), of factors whose smallest "
           "eigenvalues are the ridge eps = 1e-6: L^{-1/4} multiplies their rounding by up to "
           "eps^{-1/4} = 32 (measured 4.1e-6)")

# pytorch_optimizer's Shampoo is the paper's Algorithm 1 for matrices (L_0 = eps I, plain sums,
# L^{-1/4} G R^{-1/4} from step 1, roots by SVD, no grafting): ours with these flags.
SHAMPOO_AS_PAPER = dict(b1=0.0, b2=1.0, eps=1e-6, relative_eps=False, grafting="none",
                        start_preconditioning_step=1, precondition_every=1, root_method="eigh",
                        block_size=None, max_preconditioner_dim=None, merge_small_dims=False)

CASES = [
    case("lion-lucidrains", "lion", dict(learning_rate=0.01, weight_decay=0.1),
         lambda p: lion_pytorch.Lion(p, lr=0.01, weight_decay=0.1), 1e-5, LION_WD,
         package="lion-pytorch"),
    case("lion", "lion", dict(learning_rate=0.01, weight_decay=0.1),
         _po(po.Lion, lr=0.01, weight_decay=0.1), 1e-5, LION_WD),
    case("lion-b", "lion", dict(learning_rate=0.01, b1=0.95, b2=0.98),
         _po(po.Lion, lr=0.01, betas=(0.95, 0.98)), 1e-6, LION),
    case("lamb", "lamb", dict(learning_rate=0.02, eps=1e-6),
         _po(po.Lamb, lr=0.02, adam_debias=True), 1e-4, LAMB_EPS),
    case("lamb-eps0", "lamb", dict(learning_rate=0.02, eps=1e-12),
         _po(po.Lamb, lr=0.02, eps=1e-12, adam_debias=True), 1e-6, F32),
    case("lamb-wd-uncorrected", "lamb", dict(learning_rate=0.02, weight_decay=0.1,
                                             bias_correction=False),
         _po(po.Lamb, lr=0.02, weight_decay=0.1, weight_decouple=False, adam_debias=True), 1e-6,
         F32),
    case("lars", "lars", dict(learning_rate=1.0, trust_coefficient=0.01, momentum=0.9),
         _po(po.LARS, lr=1.0, trust_coefficient=0.01, momentum=0.9), 1e-6, F32,
         shapes=MATRICES),
    case("lars-nesterov-wd", "lars", dict(learning_rate=1.0, trust_coefficient=0.01, momentum=0.9,
                                      nesterov=True, weight_decay=0.1),
         _po(po.LARS, lr=1.0, trust_coefficient=0.01, momentum=0.9, nesterov=True,
             weight_decay=0.1), 1e-6, F32, shapes=MATRICES),
    case("adafactor", "adafactor", dict(learning_rate=0.02, min_dim_size_to_factor=1),
         _po(po.AdaFactor, lr=0.02, betas=(None, 0.999), relative_step=False), 1e-6, F32),
    case("adafactor-momentum", "adafactor", dict(learning_rate=0.02, min_dim_size_to_factor=1,
                                                 momentum=0.9),
         _po(po.AdaFactor, lr=0.02, betas=(0.9, 0.999), relative_step=False,
             momentum_dtype=torch.float32), 2e-6, F32),
    case("ademamix", "ademamix", dict(learning_rate=0.01, weight_decay=0.1),
         _po(po.AdEMAMix, lr=0.01, weight_decay=0.1, weight_decouple=True), 1e-5, DECAY_F32),
    case("ademamix-warmup", "ademamix", dict(learning_rate=0.01, b3=0.999, alpha=8.0,
                                             alpha_warmup_steps=30, b3_warmup_steps=30),
         _po(po.AdEMAMix, lr=0.01, betas=(0.9, 0.999, 0.999), alpha=8.0, t_alpha_beta3=30),
         2e-6, F32),
    case("cautious-lion", "cautious",
         dict(inner="lion", learning_rate=0.01, weight_decay=0.1, normalization="sum_plus_one"),
         _po(po.Lion, lr=0.01, weight_decay=0.1, cautious=True), 1e-5, LION_WD),
    case("cautious-adafactor", "cautious",
         dict(inner="adafactor", learning_rate=0.02, normalization="sum_plus_one",
              inner_hparams=dict(min_dim_size_to_factor=1, momentum=0.9)),
         _po(po.AdaFactor, lr=0.02, betas=(0.9, 0.999), relative_step=False,
             momentum_dtype=torch.float32, cautious=True), 2e-6, F32),
    case("psgd_kron", "psgd_kron", dict(learning_rate=0.01, damping=False),
         _kron(lr=0.01), 3e-6, KRON),
    case("psgd_kron-half-one-diag-grad", "psgd_kron",
         dict(learning_rate=0.01, damping=False, preconditioner_update_probability=0.5,
              memory_save_mode="one_diag", momentum_into_precond_update=False),
         _kron(lr=0.01, pre_conditioner_update_probability=0.5, memory_save_mode="one_diag",
               momentum_into_precondition_update=False), 3e-6, KRON),
    case("shampoo", "shampoo",
         dict(learning_rate=0.05, **SHAMPOO_AS_PAPER),
         _po(po.Shampoo, lr=0.05, momentum=0.0, preconditioning_compute_steps=1), 3e-5, SHAMPOO,
         shapes=MATRICES),
    case("normuon", "normuon",
         dict(learning_rate=0.02, weight_decay=0.1, ns_coeffs="quintic",
              dimension_numbers=TORCH_LAYOUT, adam_learning_rate=0.01, adam_weight_decay=0.1),
         lambda p: _normuon(p, lr=0.02, weight_decay=0.1, adamw_lr=0.01, adamw_wd=0.1),
         3e-5, NS_F32),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_parity(case):
  harness.check(case)


# SAM needs the gradient at the perturbed point, which `harness.check` (one `step()` per
# gradient) cannot give: these cases drive both sides by hand, on the harness's problem.
SAM_CASES = [
    case("sam-sgd-momentum", "sam",
         dict(inner="sgd", learning_rate=0.05, rho=0.05, inner_hparams=dict(momentum=0.9)),
         lambda p: po.SAM(p, torch.optim.SGD, rho=0.05, lr=0.05, momentum=0.9), 1e-6, F32),
    case("asam-sgd-momentum", "sam",
         dict(inner="sgd", learning_rate=0.05, rho=0.5, adaptive=True, eta=0.0,
              inner_hparams=dict(momentum=0.9)),
         lambda p: po.SAM(p, torch.optim.SGD, rho=0.5, adaptive=True, lr=0.05, momentum=0.9),
         1e-6, F32),
]


def run_sam(c: harness.Case) -> float:
  """Ours through `update(..., grad_fn=...)`; the reference through first_step/second_step."""
  w0, _, _ = harness.problem(c)
  gradient = harness.gradient_fn(c)
  names = list(c.shapes)

  tx = optimizers.create(c.entry, **c.hparams)
  params = {k: jnp.asarray(v) for k, v in w0.items()}
  state = tx.init(params)
  for t in range(1, c.steps + 1):
    grad_at = lambda p, t=t: {k: jnp.asarray(gradient(k, np.asarray(v), t)) for k, v in p.items()}
    updates, state = tx.update(grad_at(params), state, params, grad_fn=grad_at)
    params = optax.apply_updates(params, updates)
  ours = {k: np.asarray(v, np.float64) for k, v in params.items()}

  torch.set_num_threads(1)
  tparams = [torch.nn.Parameter(torch.from_numpy(w0[k].copy())) for k in names]
  opt = c.reference(tparams)
  for t in range(1, c.steps + 1):
    for k, p in zip(names, tparams):
      p.grad = torch.from_numpy(gradient(k, p.detach().numpy(), t))
    opt.first_step()
    for k, p in zip(names, tparams):
      p.grad = torch.from_numpy(gradient(k, p.detach().numpy(), t))
    opt.second_step()
  ref = {k: p.detach().numpy().astype(np.float64) for k, p in zip(names, tparams)}
  w0 = {k: v.astype(np.float64) for k, v in w0.items()}
  for k in ref:
    assert np.linalg.norm(ref[k] - w0[k]) > 1e-3 * max(np.linalg.norm(w0[k]), 1.0), k
  return harness.relative_difference(ours, ref, w0)


@pytest.mark.parametrize("case", SAM_CASES, ids=lambda c: c.id)
def test_sam_parity(case):
  diff = run_sam(case)
  assert diff <= case.tolerance, (
      f"{case.id}: relative parameter difference {diff:.3g} > {case.tolerance:g} against "
      f"{harness.version(case.package)}")


# Entries of this file's scope without a parity case (the coverage test reads this).
NONE = {
    "dion": ("none, because the authors' code (microsoft/dion) is not on the package index; "
             "tests/test_dion.py checks 25 steps against a float64 NumPy version of the "
             "paper's Algorithm 1 instead, and that full rank gives Muon's direction"),
    "adamw_8bit": ("none, because its code table and block size are this implementation's own "
                   "(bitsandbytes' and torchao's quantization maps differ); "
                   "tests/test_quantized.py checks every step against float64 AdamW on the "
                   "dequantized state instead"),
}
