"""Vectorized trials (experiments/harness/vectorized.py) against the trainer, run by run.

Each case trains the same specs twice: K trainer runs (`runs.train_run`, one compiled program
each, hyperparameters folded in as Python floats) and one vectorized program (hyperparameters
as float32 arrays, vmapped). Steps to target and divergence must be identical; evaluated losses
agree to rtol 1e-4: the two differ only in float32 rounding (a drawn value enters as a float32
array instead of a constant folded at trace time, and vmap batches the matmuls), which over a
few hundred steps of these convex / smooth problems stays below 1e-5 relative (measured:
logreg 1e-6, mds 3e-6), so 1e-4 leaves room for other CPUs' summation orders and still fails
on any real difference (a wrong learning rate, a shared seed, a step off by one). Near 1e-6 of
the step-0 value, the floor under every target (scoring.TARGET_FLOOR), a float32 metric summed
from O(1) terms resolves only its last digits: MDS trained to its target (1.07e-6, the floor)
differs there by up to 4.6e-8 absolute, 5% relative, at the last three evaluations. So values
also count as equal within TARGET_FLOOR x the step-0 value, absolute.
"""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments.harness import records as records_lib
from experiments.harness import runs as runs_lib
from experiments.harness import scoring
from experiments.harness import vectorized


def _specs(workload, optimizer, num_trials, study=0):
  return records_lib.plan(workload, [optimizer], num_trials, [study])


def _check_equal(vec, ref):
  assert vec["diverged"] == ref["diverged"]
  assert vec["steps_to_target"] == ref["steps_to_target"]
  assert [c[0] for c in vec["curve"]] == [c[0] for c in ref["curve"]]
  np.testing.assert_allclose([c[2] for c in vec["curve"]], [c[2] for c in ref["curve"]],
                             rtol=1e-4, atol=scoring.TARGET_FLOOR * abs(ref["curve"][0][2]))
  if ref["final_metric"] is None:
    assert vec["final_metric"] is None
  else:
    np.testing.assert_allclose(vec["final_metric"], ref["final_metric"], rtol=1e-4,
                               atol=scoring.TARGET_FLOOR * abs(ref["curve"][0][2]))


@pytest.fixture(name="timing", scope="module")
def _timing():
  # Only the seconds depend on it; the tests below check the step counts and losses.
  return {"compile_s": 1.5, "step_s": 0.01}


def test_logreg_adamw_trials_equal_trainer_runs(tmp_path, timing):
  specs = _specs("logreg", "adamw", 3)
  got = vectorized.train_trials(specs, timing)
  for spec, vec in zip(specs, got):
    ref = runs_lib.train_run(spec, str(tmp_path))
    _check_equal(vec, ref)
    assert vec["vectorized_trials"] == 3
    if vec["steps_to_target"] is not None:
      n = vec["steps_to_target"]
      assert vec["time_to_target_s"] == pytest.approx(1.5 + 0.01 * n)


def test_diverging_trial_stops_alone(tmp_path, timing):
  """A trial whose learning rate blows MDS up is marked diverged, as the trainer marks it, and
  the trial beside it trains on to the same result as its own trainer run."""
  good = _specs("mds", "adamw", 1)[0]
  bad = dataclasses.replace(good, hparams={**good.hparams, "learning_rate": 1e30}, trial=1,
                            seed=records_lib.run_seed(0, 1))
  got = vectorized.train_trials([good, bad], timing)
  refs = [runs_lib.train_run(sp, str(tmp_path)) for sp in (good, bad)]
  assert refs[1]["diverged"] and not refs[0]["diverged"]
  for vec, ref in zip(got, refs):
    _check_equal(vec, ref)
  assert got[1]["time_to_target_s"] is None


def test_trial_axis_sharded_over_devices_equals_one_device(timing):
  assert jax.device_count() >= 4, "conftest sets 8 fake CPU devices"
  specs = _specs("logreg", "adamw", 4, study=1)
  one = vectorized.train_trials(specs, timing)
  four = vectorized.train_trials(specs, timing, devices=jax.devices()[:4])
  for a, b in zip(one, four):
    _check_equal(a, b)
  with pytest.raises(ValueError, match="do not split"):
    vectorized.train_trials(specs[:3], timing, devices=jax.devices()[:2])


def test_group_must_share_workload_optimizer_and_names(timing):
  a = _specs("logreg", "adamw", 1)[0]
  with pytest.raises(ValueError, match="share one workload"):
    vectorized.train_trials([a, _specs("logreg", "sgd", 1)[0]], timing)
  with pytest.raises(ValueError, match="same hyperparameters"):
    vectorized.train_trials([a, dataclasses.replace(a, hparams={"b2": 0.99})], timing)


def test_refuses_what_only_the_trainer_does():
  cfg = runs_lib.run_config(_specs("logreg", "adamw", 1)[0])
  vectorized.check_config(cfg)
  cfg.train.skip_nonfinite_updates = True
  cfg.parallelism = "pmap"
  with pytest.raises(vectorized.NotVectorizable, match="skip_nonfinite_updates.*|pmap"):
    vectorized.check_config(cfg)


def test_timing_record_is_measured_once_and_reused(tmp_path):
  spec = _specs("logreg", "adamw", 1)[0]
  first = vectorized.timing_for(str(tmp_path), spec)
  assert first["compile_s"] > 0 and first["step_s"] > 0
  assert first["optimizer"] == "adamw" and first["steps_timed"] == 20
  again = vectorized.timing_for(str(tmp_path), spec)
  assert again == first
  assert len(vectorized.read_timings(str(tmp_path), "logreg")) == 1
  # Not a run record: the scoring reads only the records directory's top level.
  assert records_lib.read_records(str(tmp_path)) == []
  assert os.path.exists(vectorized.timing_path(str(tmp_path), "logreg"))


def _compare(*args):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, "-m", "experiments.compare", *args], env=env,
                        capture_output=True, text=True, timeout=600, check=False,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_compare_sweep_vectorized_as_a_user_runs_it(tmp_path):
  """`compare sweep --vectorize=always` records what `--vectorize=never` records (the same runs,
  steps to target), with the timing record beside; a rerun trains nothing; a records directory
  whose draws differ from the search space's is refused."""
  vec, ref = str(tmp_path / "vec"), str(tmp_path / "ref")
  common = ["--workloads=logreg", "--optimizers=adamw", "--trials=3", "--studies=1",
            f"--runs_dir={tmp_path / 'runs'}"]
  out = _compare("sweep", vec, *common, "--vectorize=always")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "3 trials vectorized" in out.stdout
  out_ref = _compare("sweep", ref, *common, "--vectorize=never")
  assert out_ref.returncode == 0, out_ref.stderr[-3000:]
  got = sorted(records_lib.read_records(vec), key=lambda r: r["trial"])
  want = sorted(records_lib.read_records(ref), key=lambda r: r["trial"])
  assert [r["trial"] for r in got] == [0, 1, 2]
  assert all(r["vectorized_trials"] == 3 for r in got)
  assert [r["steps_to_target"] for r in got] == [r["steps_to_target"] for r in want]
  assert [r["hparams"] for r in got] == [r["hparams"] for r in want]
  assert len(vectorized.read_timings(vec, "logreg")) == 1
  again = _compare("sweep", vec, *common, "--vectorize=always")
  assert again.returncode == 0 and "3 already recorded" in again.stdout
  assert len(records_lib.read_records(vec)) == 3

  path = os.path.join(vec, "logreg.jsonl")
  rows = [json.loads(line) for line in open(path)]
  rows[1]["hparams"]["learning_rate"] *= 2
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  bad = _compare("sweep", vec, *common)
  assert bad.returncode != 0
  assert "another search space" in bad.stderr


def test_self_tuning_ruleset_sweeps_defaults_into_its_own_directory(tmp_path):
  records = str(tmp_path / "records")
  out = _compare("sweep", records, "--ruleset=self_tuning", "--workloads=logreg",
                 "--optimizers=adamw,sgd", "--studies=2", "--vectorize=always",
                 f"--runs_dir={tmp_path / 'runs'}")
  assert out.returncode == 0, out.stderr[-3000:]
  assert records_lib.read_records(records) == []  # the external ruleset's: none
  got = records_lib.read_records(os.path.join(records, records_lib.SELF_TUNING_DIR))
  assert sorted((r["optimizer"], r["study"], r["seed"]) for r in got) == [
      ("adamw", 0, 0), ("adamw", 1, 1000), ("sgd", 0, 0), ("sgd", 1, 1000)]
  assert all(r["hparams"] == {} and r["vectorized_trials"] == 2 for r in got)
  assert "Self-tuning ruleset: 4 runs" in out.stdout
  # At its defaults each study's run is its trainer run (same config, other seed).
  spec = records_lib.plan_self_tuning("logreg", ["sgd"], [1])[0]
  ref = runs_lib.train_run(spec, str(tmp_path / "ref"))
  vec = next(r for r in got if r["optimizer"] == "sgd" and r["study"] == 1)
  assert vec["steps_to_target"] == ref["steps_to_target"]
  np.testing.assert_allclose([c[2] for c in vec["curve"]], [c[2] for c in ref["curve"]],
                             rtol=1e-4, atol=scoring.TARGET_FLOOR * abs(ref["curve"][0][2]))
