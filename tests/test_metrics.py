"""Steps-to-target measurement used by the sweep and report scripts."""

from experiments.training import metrics


def test_steps_to_target_interpolates_between_evals():
  records = [{"step": 0, "val_loss": 3.0}, {"step": 1, "train_loss": 0.1},
             {"step": 100, "val_loss": 2.0}, {"step": 200, "val_loss": 1.0}]
  assert metrics.steps_to_target(records, 1.5) == 150.0
  assert metrics.steps_to_target(records, 2.0) == 100.0
  assert metrics.steps_to_target(records, 0.5) is None
  # A curve that dips below the target once counts from the first crossing.
  records.append({"step": 300, "val_loss": 1.2})
  assert metrics.steps_to_target(records, 1.0) == 200.0
