"""SGD, Adagrad, RMSProp, Adadelta, the Adam family and Muon against torch.optim (issue 19).

Each case runs one registry entry and its `torch.optim` counterpart step for step on the
harness's problem (tests/parity/harness.py). Where the two follow different conventions, the
case sets the flag that makes them the same algorithm and its `why` names it:
  rmsprop   eps outside the root: ours `eps_in_sqrt=False`.
  adagrad   eps: torch's sits outside the root, ours inside; both 0 here (ours has no outside
            eps), which is the paper's update.
  amsgrad   torch takes the max of the uncorrected v and bias-corrects it afterwards: ours
            `bias_correction=True, correct_after_max=True`.
  nadamw    torch's NAdam warms b1 up (mu_t = b1 (1 - 0.5 * 0.96^(psi t))); ours (optax, Dozat's
            Algorithm 2 with constant momentum) does not: torch `momentum_decay=1e9` makes
            0.96^(psi t) exactly 0, so mu_t = b1; `decoupled_weight_decay=True`.
  muon      torch.optim.Muon's defaults weight_decay=0.1 (ours 0) and, for the shape scale, reads
            a 2-D weight as torch's (fan_out, fan_in) layout, ours as a (fan_in, fan_out) kernel:
            the cases set the decay on both sides and give ours `dimension_numbers` (1, 0).
            momentum_warmup_steps=0 (torch has no warmup). torch runs Newton–Schulz in
            bfloat16 throughout (iterate and products), ours in float32 (`ns_dtype="bfloat16"`
            rounds only the products' inputs and keeps a float32 iterate: no closer, 3.6e-3):
            `muon-torch-bf16` runs torch as shipped, to bfloat16 rounding; the other cases run
            torch's own Muon with its Newton–Schulz computed in float32 (`_Float32NSMuon`).
  optax_muon  optax bias-corrects its Nesterov momentum, beta m / (1 - beta^(t+1)) +
            (1 - beta) g / (1 - beta^t), which is not a multiple of torch's beta m + (1 - beta) g:
            it matches torch only with `nesterov=False` (a scalar correction, removed by the
            normalization before Newton–Schulz).
"""

from __future__ import annotations

import dataclasses
from unittest import mock

import pytest
import torch

from optimizers import routing
from tests.parity import harness

TORCH_LAYOUT = lambda path, leaf: routing.DimensionNumbers(1, 0)  # torch's (fan_out, fan_in)
MATRICES = {"square": (8, 8), "wide": (6, 10), "tall": (10, 6)}


def _torch(cls_name, **kw):
  def make(params):
    return getattr(torch.optim, cls_name)(params, foreach=False, **kw)
  return make


def _float32_newton_schulz(grad, ns_coefficients, ns_steps, eps):
  """torch.optim._muon._zeropower_via_newtonschulz (torch 2.13) without its bfloat16 cast."""
  a, b, c = ns_coefficients
  x = grad.float()
  if grad.size(0) > grad.size(1):
    x = x.T
  x = x / x.norm().clamp(min=eps)
  for _ in range(ns_steps):
    gram = x @ x.T
    x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
  if grad.size(0) > grad.size(1):
    x = x.T
  return x


class _Float32NSMuon(torch.optim.Muon):
  """torch.optim.Muon, its Newton–Schulz in float32: isolates everything else at float32."""

  def step(self, closure=None):
    with mock.patch.object(torch.optim._muon, "_zeropower_via_newtonschulz",
                           _float32_newton_schulz):
      return super().step(closure)


def _muon(float32=False, **kw):
  def make(params):
    return (_Float32NSMuon if float32 else torch.optim.Muon)(params, **kw)
  return make


def case(id, entry, hparams, reference, tolerance, why, **kw):
  return harness.Case(id=id, entry=entry, hparams=hparams, reference=reference, package="torch",
                      tolerance=tolerance, why=why, **kw)


# Why the tolerances: every case below was also run in float64 on both sides (Newton–Schulz
# excepted, which both run in float32), where they agree to 1e-16 (Muon: 2e-7), so what is
# left in float32 is rounding carried through 40 steps of a problem whose gradient depends on
# the parameters. Figures are for seed 0; seeds 1-3 gave at most 1.5x more.
ROUND = "float32 rounding over 40 steps (float64: 1e-16); measured {}, seeds 0-3 at most {}"
ADAM = ROUND + (". Larger than SGD's: the step m_hat / sqrt(v_hat) keeps size lr where m has "
                "cancelled to a few ulps of g near the optimum, so those ulps show at lr scale")
MUON = ROUND + (" (float64 outside Newton–Schulz: 2e-7); Newton–Schulz's quintic amplifies "
                "float32 rounding of the momentum")

CASES = [
    case("sgd", "sgd", dict(learning_rate=0.02), _torch("SGD", lr=0.02), 5e-7,
         ROUND.format("8.4e-8", "8.4e-8")),
    case("sgd-momentum", "sgd", dict(learning_rate=0.02, momentum=0.9),
         _torch("SGD", lr=0.02, momentum=0.9), 5e-7, ROUND.format("5.5e-8", "7.3e-8")),
    case("sgd-nesterov", "sgd", dict(learning_rate=0.02, momentum=0.9, nesterov=True),
         _torch("SGD", lr=0.02, momentum=0.9, nesterov=True), 5e-7,
         ROUND.format("4.6e-8", "7.2e-8")),
    case("sgd-momentum-wd", "sgd", dict(learning_rate=0.02, momentum=0.9, weight_decay=0.1),
         _torch("SGD", lr=0.02, momentum=0.9, weight_decay=0.1), 5e-7,
         ROUND.format("6.8e-8", "6.8e-8") + "; both couple the decay (wd theta added to g)"),
    case("adagrad", "adagrad", dict(learning_rate=0.1),
         _torch("Adagrad", lr=0.1, eps=0.0), 5e-7,
         ROUND.format("5.3e-8", "7.4e-8") + "; torch eps=0 (its 1e-10 sits outside the root, "
         "ours inside; with torch's default 1e-10 the figure is the same 5.3e-8)"),
    case("rmsprop", "rmsprop", dict(learning_rate=0.01, decay=0.99, eps_in_sqrt=False),
         _torch("RMSprop", lr=0.01, alpha=0.99), 5e-7,
         ROUND.format("8.5e-8", "8.5e-8") + "; eps_in_sqrt=False is torch's sqrt(v) + eps "
         "(ours' default eps inside the root: 3.0e-5)"),
    case("rmsprop-centered", "rmsprop",
         dict(learning_rate=0.01, decay=0.99, eps_in_sqrt=False, centered=True),
         _torch("RMSprop", lr=0.01, alpha=0.99, centered=True), 5e-7,
         ROUND.format("5.7e-8", "1.2e-7") + "; eps_in_sqrt=False"),
    case("rmsprop-momentum", "rmsprop",
         dict(learning_rate=0.01, decay=0.99, eps_in_sqrt=False, momentum=0.9),
         _torch("RMSprop", lr=0.01, alpha=0.99, momentum=0.9), 5e-7,
         ROUND.format("8.5e-8", "8.5e-8") + "; eps_in_sqrt=False; lr inside (ours) or outside "
         "(torch) the momentum buffer agree for a constant lr"),
    case("adadelta", "adadelta", dict(learning_rate=1.0, rho=0.9, eps=1e-6),
         _torch("Adadelta", lr=1.0, rho=0.9, eps=1e-6), 1.5e-6,
         ROUND.format("1.9e-7", "3.0e-7") + "; rho=0.9 is torch's default (ours 0.95)"),
    case("adam", "adam", dict(learning_rate=0.05), _torch("Adam", lr=0.05), 2e-5,
         ADAM.format("4.6e-6", "5.6e-6")),
    case("adamw", "adamw", dict(learning_rate=0.05, weight_decay=0.1),
         _torch("AdamW", lr=0.05, weight_decay=0.1), 2e-5,
         ADAM.format("4.2e-6", "4.8e-6") + "; both decay by lr * wd * theta"),
    case("amsgrad", "amsgrad",
         dict(learning_rate=0.05, bias_correction=True, correct_after_max=True),
         _torch("Adam", lr=0.05, amsgrad=True), 2e-5,
         ADAM.format("4.6e-6", "5.6e-6") + "; correct_after_max=True is torch's max of the "
         "uncorrected v, corrected after (bias_correction=False, the paper's: 0.46; True "
         "alone, optax's max of the corrected v: 0.18)"),
    case("nadamw", "nadamw", dict(learning_rate=0.05, weight_decay=0.1),
         _torch("NAdam", lr=0.05, weight_decay=0.1, momentum_decay=1e9,
                decoupled_weight_decay=True), 2e-5,
         ADAM.format("4.1e-6", "4.6e-6") + "; torch momentum_decay=1e9 gives mu_t = b1 "
         "exactly (ours: constant b1, optax's; torch's default psi=4e-3 warms mu_t up as in "
         "Dozat: 0.13), decoupled_weight_decay=True (torch's default couples it: 0.15)"),
    case("muon", "muon",
         dict(learning_rate=0.02, weight_decay=0.1, dimension_numbers=TORCH_LAYOUT),
         _muon(float32=True, lr=0.02, weight_decay=0.1), 2e-5,
         MUON.format("3.7e-6", "4.0e-6") + ". torch's Newton–Schulz run in float32 "
         "(_Float32NSMuon); weight_decay=0.1 on both (torch's default, ours 0: 0.23 alone); "
         "dimension_numbers (1, 0): torch's shape scale reads (fan_out, fan_in) (0.31 alone)",
         shapes=MATRICES),
    case("muon-torch-bf16", "muon",
         dict(learning_rate=0.02, weight_decay=0.1, dimension_numbers=TORCH_LAYOUT),
         _muon(lr=0.02, weight_decay=0.1), 3e-2,
         "torch.optim.Muon as shipped runs Newton–Schulz in bfloat16 (8-bit mantissa, 2^-8 = "
         "3.9e-3 per update), ours in float32; measured 3.8e-3, seeds 0-3 at most 8.7e-3. The "
         "same case with torch's iteration in float32 (`muon`) agrees to 3.7e-6", shapes=MATRICES),
    case("muon-no-nesterov-match-rms", "muon",
         dict(learning_rate=0.02, nesterov=False, scale="match_adamw_rms"),
         _muon(float32=True, lr=0.02, weight_decay=0.0, nesterov=False,
               adjust_lr_fn="match_rms_adamw"), 3e-6,
         MUON.format("6.0e-7", "6.6e-7") + ". torch's Newton–Schulz in float32; "
         "scale='match_adamw_rms' is adjust_lr_fn='match_rms_adamw' (symmetric in the shape, "
         "so no dimension numbers)", shapes=MATRICES),
    case("optax_muon-no-nesterov", "optax_muon",
         dict(learning_rate=0.02, nesterov=False, weight_decay=0.1,
              dimension_numbers=TORCH_LAYOUT),
         _muon(float32=True, lr=0.02, weight_decay=0.1, nesterov=False), 2e-5,
         MUON.format("4.1e-6", "4.1e-6") + ". torch's Newton–Schulz in float32; nesterov=False "
         "(optax's bias correction of m is then a scalar, removed by the normalization)",
         shapes=MATRICES),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_parity(case):
  harness.check(case)


def test_optax_muon_nesterov_is_not_torchs():
  """optax's bias-corrected Nesterov momentum is a different update: the harness sees it.

  With noise 1 (g and m less aligned than at 0.1, where the gap is 1.8e-4) it measures
  1.3e-3 (seeds 0-2 at least 1.2e-3), against 3.4e-6 with nesterov=False.
  """
  matching = next(c for c in CASES if c.id == "optax_muon-no-nesterov")
  nesterov = dataclasses.replace(
      matching, id="optax_muon-nesterov", noise=1.0,
      hparams=dict(matching.hparams, nesterov=True),
      reference=_muon(float32=True, lr=0.02, weight_decay=0.1, nesterov=True))
  assert harness.run_case(nesterov) > 5 * matching.tolerance
