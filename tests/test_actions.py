"""Periodic actions and the training clock (experiments/training/actions.py)."""

import time

import pytest

from experiments.training import metrics as metrics_lib
from experiments.training import loop as trainer
from experiments.training import actions
from experiments.training import validate
from tests.test_train import tiny_config


def test_the_clock_pauses_and_pauses_nest():
  clock = actions.TrainingClock(base_s=10.0)
  time.sleep(0.05)
  with clock.paused():
    frozen = clock()
    with clock.paused():
      time.sleep(0.1)
    time.sleep(0.1)
    assert clock() == frozen  # nothing counts while paused
  assert 10.04 < frozen < 10.2
  after = clock()
  assert frozen <= after < frozen + 0.05  # the 0.2 s paused are not counted


def test_cadences():
  run = type("Run", (), {"total_steps": 10})()
  a = actions.PeriodicAction(every=4, on_steps=(3,), at_end=True, on_stop=True)
  assert [s for s in range(1, 11) if a.due(run, s, False)] == [3, 4, 8, 10]
  assert a.due(run, 5, True)
  b = actions.PeriodicAction(every=0, at_end=False)
  assert not any(b.due(run, s, False) for s in range(1, 11))


class _Record(actions.PeriodicAction):
  """A new action: records its steps, the state's step, the fetched loss and the clock."""
  config_key = "train.record_every"
  seen = []

  def __call__(self, run, step):
    before = run.clock()
    time.sleep(0.05)
    _Record.seen.append((step, int(run.view()["step"]), run.last_metrics["train_loss"],
                         before, run.clock()))


@pytest.fixture
def registered():
  actions.register(_Record)
  _Record.seen = []
  yield _Record
  actions.unregister(_Record)


@pytest.mark.slow
def test_a_registered_action_runs_at_its_cadence_with_the_clock_paused(tmp_path, registered):
  cfg = tiny_config(tmp_path, train__steps=8, train__eval_every=0, train__log_every=100,
                    train__checkpoint_every=100)
  cfg.train.record_every = 3  # the new action's config key
  summary = trainer.train_and_evaluate(cfg, str(tmp_path / "w"))
  rows = metrics_lib.read_metrics(str(tmp_path / "w"))
  losses = {r["step"]: r["train_loss"] for r in rows if "train_loss" in r}
  # Steps 3 and 6 by cadence, 8 at the end; it saw that step's state and its fetched metrics.
  assert [(s, st) for s, st, *_ in registered.seen] == [(3, 3), (6, 6), (8, 8)]
  assert [l for _, _, l, *_ in registered.seen] == [losses[3], losses[6], losses[8]]
  # The clock stood still while it ran, and ran on between its calls.
  times = [(b, a) for *_, b, a in registered.seen]
  assert all(b == a for b, a in times)
  assert times[0][1] < times[1][0] < times[2][0] <= summary["train_time_s"]


def test_an_action_that_is_off_is_not_built(tmp_path, registered):
  cfg = tiny_config(tmp_path, train__steps=2)
  assert not any(isinstance(a, _Record) for a in actions.from_config(cfg))
  cfg.train.record_every = 0
  assert not any(isinstance(a, _Record) for a in actions.from_config(cfg))
  cfg.train.record_every = 1
  assert [type(a).__name__ for a in actions.from_config(cfg)] == [
      "LogProgress", "Evaluate", "Checkpoint", "Preemption", "_Record"]


def test_checkpoints_by_wall_clock_come_at_the_first_step_past_the_interval(monkeypatch):
  now = [0.0]
  monkeypatch.setattr(actions.time, "monotonic", lambda: now[0])
  saved = []
  run = type("Run", (), {"total_steps": 100, "stop_at": 100,
                        "save": lambda self, s: saved.append(s)})()
  ckpt = actions.Checkpoint(every=50, every_s=10.0, on_stop=True)
  ckpt.start(run)
  for step in range(1, 101):
    now[0] += 3.0 if step < 60 else 0.5  # 3 s per step, then 0.5 s
    if ckpt.due(run, step, False):
      ckpt(run, step)
  # By time at the first step 10 s or more after the last save, whichever cadence made it
  # (step 50's save by count restarts the count: the next by time is 54, not 52); at 0.5 s a
  # step from step 60 on, 73 (3 + 14 x 0.5 s after 58) and 93; the end at 100.
  assert saved == [4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 50, 54, 58, 73, 93, 100]
  off = actions.Checkpoint(every=50, every_s=0.0)
  off.start(run)
  now[0] += 1e6
  assert [s for s in range(1, 101) if off.due(run, s, False)] == [50, 100]


def test_checkpoint_every_s_is_read_from_the_config_and_checked(tmp_path):
  cfg = tiny_config(tmp_path, train__steps=2, train__checkpoint_every_s=30.0)
  (ckpt,) = [a for a in actions.from_config(cfg) if isinstance(a, actions.Checkpoint)]
  assert ckpt.every_s == 30.0 and ckpt.every == 10
  for bad in (-1.0, float("nan")):
    cfg.train.checkpoint_every_s = bad
    with pytest.raises(validate.ConfigError, match="train.checkpoint_every_s"):
      validate.validate(cfg)
