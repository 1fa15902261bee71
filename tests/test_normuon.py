"""NorMuon and Muon's cautious weight decay against an independent float64 NumPy reference."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import optimizers
from optimizers import routing
from tests import optimizer_contract
from tests.test_muon import MUON_PATHS, QUINTIC, SHAPES, _flat, _np_orthogonalize, _run, _tree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- the reference: the authors' `normuon_update` (PyTorch layout: weights are (out, in)) ----

def _np_normuon_direction(u_out_in, v, b2):
  """NorMuon's normalization of an orthogonalized (out, in) update; returns it and the new v."""
  vnorm = np.linalg.norm(u_out_in)
  v = b2 * v + (1 - b2) * np.mean(u_out_in * u_out_in, axis=-1, keepdims=True)
  u = u_out_in / (np.sqrt(v) + 1e-10)
  return u * (vnorm / (np.linalg.norm(u) + 1e-10)), v


def _np_reference(params, grads_seq, hp):
  """len(grads_seq) steps of NorMuon (or Muon, b2=None) + AdamW, from the papers' formulas."""
  theta = _flat(params)
  state = {k: [np.zeros_like(v), np.zeros_like(v)] for k, v in theta.items()}
  for k in MUON_PATHS:  # momentum in the (out, in) layout; one second moment per output neuron
    state[k] = [np.zeros_like(theta[k].T), np.zeros((theta[k].shape[1], 1))]
  beta, lr, wd = hp["momentum"], hp["learning_rate"], hp["weight_decay"]
  for t, grads in enumerate(grads_seq, start=1):
    for k, g in _flat(grads).items():
      if k in MUON_PATHS:
        x, g = theta[k].T, g.T  # (out, in), as the authors' code sees a linear layer
        m = state[k][0] = beta * state[k][0] + (1 - beta) * g
        u = (1 - beta) * g + beta * m if hp["nesterov"] else m
        u = _np_orthogonalize(u, QUINTIC, 1.0, 1e-7)
        if hp["b2"] is not None:
          u, state[k][1] = _np_normuon_direction(u, state[k][1], hp["b2"])
        u = u * max(1.0, x.shape[0] / x.shape[1]) ** 0.5
        mask = (u * x >= 0) if hp["cautious_weight_decay"] else 1.0
        theta[k] = (x - lr * (u + wd * mask * x)).T
      else:
        b1, b2a = hp["adam_b1"], hp["adam_b2"]
        mu = state[k][0] = b1 * state[k][0] + (1 - b1) * g
        nu = state[k][1] = b2a * state[k][1] + (1 - b2a) * g * g
        step = (mu / (1 - b1**t)) / (np.sqrt(nu / (1 - b2a**t)) + hp["adam_eps"])
        theta[k] = theta[k] - hp["adam_learning_rate"] * (
            step + hp["adam_weight_decay"] * theta[k])
  return theta


CASES = {
    "normuon_nesterov": ("normuon", dict(nesterov=True, weight_decay=0.0, b2=0.95)),
    "normuon_heavy_ball_cautious_wd": ("normuon", dict(nesterov=False, weight_decay=0.3,
                                                       b2=0.9, cautious_weight_decay=True)),
    "muon_cautious_wd": ("muon", dict(nesterov=True, weight_decay=0.3, b2=None,
                                      cautious_weight_decay=True)),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_25_steps_match_float64_numpy(case):
  name, cfg = CASES[case]
  hp = dict(learning_rate=0.02, momentum=0.9, adam_learning_rate=1e-2, adam_b1=0.8,
            adam_b2=0.95, adam_eps=1e-8, adam_weight_decay=0.05, cautious_weight_decay=False)
  hp.update(cfg)
  kwargs = {k: v for k, v in hp.items() if not (k == "b2" and name == "muon")}
  # Large parameters against small steps: the cautious mask flips for some entries over time.
  params = _tree(SHAPES, seed=0, scale=0.05)
  grads_seq = [_tree(SHAPES, seed=30 + t) for t in range(25)]
  got, _ = _run(optimizers.create(name, **kwargs), params, grads_seq)
  ref = _np_reference(params, grads_seq, hp)
  got = _flat(got)
  assert set(got) == set(ref)
  for k in ref:
    np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_cautious_decay_only_where_update_and_parameter_agree():
  # One Muon step from theta with momentum 0: u = NS(g); decay applies where u * theta >= 0.
  theta = {"w": _tree({"w": (8, 8)}, seed=1)["w"]}
  grads = {"w": _tree({"w": (8, 8)}, seed=2)["w"]}
  step = {}
  for cautious in (False, True):
    tx = optimizers.create("muon", learning_rate=1.0, momentum=0.0, nesterov=False,
                           weight_decay=0.5, cautious_weight_decay=cautious)
    step[cautious] = np.asarray(jax.jit(tx.update)(grads, tx.init(theta), theta)[0]["w"])
  x = np.asarray(theta["w"])
  u = -step[False] - 0.5 * x
  agree = u * x >= 0
  assert 0 < agree.mean() < 1
  np.testing.assert_allclose(-step[True], u + 0.5 * agree * x, rtol=1e-6, atol=1e-7)


def test_normuon_equalizes_neurons_and_keeps_muon_norm():
  # One step, momentum 0: per output neuron the update's RMS is the same, and its Frobenius
  # norm is Muon's.
  g = {"w": _tree({"w": (16, 8)}, seed=3)["w"] * np.linspace(0.1, 3.0, 8)}
  theta = {"w": np.zeros((16, 8), np.float32)}
  out = {}
  for name in ("muon", "normuon"):
    tx = optimizers.create(name, learning_rate=1.0, momentum=0.0, nesterov=False)
    out[name] = -np.asarray(jax.jit(tx.update)(g, tx.init(theta), theta)[0]["w"], np.float64)
  np.testing.assert_allclose(np.linalg.norm(out["normuon"]), np.linalg.norm(out["muon"]),
                             rtol=1e-5)
  col_rms = np.sqrt(np.mean(out["normuon"] ** 2, axis=0))
  np.testing.assert_allclose(col_rms, col_rms.mean(), rtol=1e-4)
  muon_rms = np.sqrt(np.mean(out["muon"] ** 2, axis=0))
  assert muon_rms.max() / muon_rms.min() > 1.05  # Muon alone does not equalize them


@pytest.mark.slow
def test_contract_scalars_vectors_matrices_3d_jit_dtypes_orbax(tmp_path):
  params = optimizer_contract.contract_tree(0)
  dn = {"stack": routing.DimensionNumbers(1, 2)}
  tx = optimizers.create("normuon", learning_rate=0.02, cautious_weight_decay=True,
                         weight_decay=0.1, dimension_numbers=dn)
  grads = [optimizer_contract.contract_tree(1 + i) for i in range(3)]
  optimizer_contract.check_contract(tx, params, grads, tmp_path)


def run_config_three_steps(config_name, tmp_path):
  """`python -m experiments.train` on a tiny model for 3 steps; returns (returncode, output)."""
  from tests.test_train import TINY  # pylint: disable=g-import-not-at-top
  values = dict(TINY, **{"train.steps": 3, "train.eval_every": 3, "train.checkpoint_every": 3,
                         "data.cache_dir": str(tmp_path / "corpus")})
  cmd = [sys.executable, "-m", "experiments.train", f"--config=configs/{config_name}",
         f"--workdir={tmp_path / 'w'}", *[f"--config.{k}={v}" for k, v in values.items()]]
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.slow
def test_speedrun_normuon_config_trains_three_steps(tmp_path):
  code, out = run_config_three_steps("speedrun_cpu_normuon.py", tmp_path)
  assert code == 0, out[-3000:]
  check_three_finite_steps(tmp_path / "w")


def check_three_finite_steps(workdir):
  from experiments.training import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  records = metrics_lib.read_metrics(str(workdir))
  val = [r["val_loss"] for r in records if "val_loss" in r]
  assert max(r["step"] for r in records) == 3 and len(val) == 2  # steps 0 and 3
  assert np.all(np.isfinite(val)) and val[-1] < val[0]
