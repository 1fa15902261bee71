"""The comparison harness end to end: sweeps through the trainer, run configs, WORKSPACE, plots."""

import math
import os

import numpy as np
import pytest

from configs import workload_logreg
from experiments import compare
from experiments.harness import plots as compare_plots
from experiments.harness import records as records_lib
from experiments.harness import runs as runs_lib
from experiments.harness import workspace
from experiments.training import loop as trainer
from experiments.training import train_state
from tests.test_compare import _rec

INF = math.inf


def test_sweep_through_the_trainer_writes_records_and_rerun_skips(tmp_path):
  records_dir, runs_dir = str(tmp_path / "records"), str(tmp_path / "runs")
  specs = records_lib.plan("logreg", ["adamw", "sgd"], num_trials=1, studies=[0])
  new = records_lib.sweep(specs, records_dir, lambda s: runs_lib.train_run(s, runs_dir))
  records = records_lib.read_records(records_dir)
  assert len(new) == 2 and records == new
  assert sorted(records_lib.record_key(r) for r in records) == sorted(s.key() for s in specs)
  for r in records:
    assert set(r) >= {"workload", "optimizer", "hparams", "seed", "study", "trial", "target",
                      "metric", "step_budget", "steps_to_target", "time_to_target_s",
                      "final_metric", "curve", "git_sha", "versions", "device"}
    assert r["metric"] == "suboptimality" and r["target"] == workload_logreg.TARGET
    assert r["step_budget"] == 400
    steps = [c[0] for c in r["curve"]]
    seconds = [c[1] for c in r["curve"]]
    assert steps[0] == 0 and steps == sorted(steps) and len(steps) >= 3
    assert all(b >= a for a, b in zip(seconds, seconds[1:]))
    assert r["final_metric"] == r["curve"][-1][2]
    if r["steps_to_target"] is not None:  # stopped at the target's evaluation
      assert steps[-1] == r["steps_to_target"] and r["final_metric"] <= r["target"]
      assert r["time_to_target_s"] == seconds[-1] > 0
    else:
      assert steps[-1] == 400 and r["final_metric"] > r["target"]
  assert records_lib.sweep(specs, records_dir, lambda s: pytest.fail("ran again")) == []
  assert len(records_lib.read_records(records_dir)) == 2


def test_run_config_overlays_hparams_on_the_base_and_takes_its_recipe():
  hp = {"learning_rate": 0.05, "b2": 0.9}
  cfg = runs_lib.run_config(records_lib.RunSpec("mds", "adamw", hp, 0, 1, 7))
  assert cfg.optimizer.to_dict() == {"name": "adamw", "learning_rate": 0.05, "b1": 0.9,
                                     "b2": 0.9, "eps": 1e-8, "weight_decay": 0.0,
                                     "embed_learning_rate": None}
  assert (cfg.workload, cfg.train.steps, cfg.seed) == ("mds", 300, 7)
  assert cfg.schedule.name == "warmup_cosine" and cfg.schedule.warmup_steps == 10
  assert cfg.train.grad_clip_norm is None and cfg.train.stop_at_target
  assert cfg.schedule.base_batch_size is None  # learning rates used as drawn
  # A killed sweep (no signal) loses at most this much of its trial in progress.
  assert cfg.train.checkpoint_every_s == runs_lib.CHECKPOINT_EVERY_S == 300.0
  assert cfg.train.checkpoint_every == cfg.train.steps and cfg.train.keep_checkpoints == 1

  sgd = runs_lib.run_config(records_lib.RunSpec("logreg", "sgd", {"learning_rate": 0.5}, 0, 0, 0))
  assert sgd.train.grad_clip_norm == 1.0 and sgd.optimizer.momentum == 0.9
  assert sgd.optimizer.learning_rate == 0.5 and sgd.schedule.name == "warmup_cosine"

  sf = runs_lib.run_config(
      records_lib.RunSpec("logreg", "schedule_free_adamw", {"b1": 0.8}, 0, 0, 0))
  assert (sf.schedule.name, sf.schedule.warmup_steps) == ("constant", 0)
  assert sf.optimizer.b1 == 0.8 and sf.optimizer.warmup_steps == 50

  # AdEMAMix's warmups span the run: the workload's 400 steps, not the speedrun's 800.
  ade = runs_lib.run_config(records_lib.RunSpec("mlp_digits", "ademamix", {"alpha": 3.0}, 0, 0, 0))
  assert ade.optimizer.alpha_warmup_steps == ade.optimizer.b3_warmup_steps == 400
  caut = runs_lib.run_config(
      records_lib.RunSpec("mds", "cautious", {"inner_hparams.b2": 0.97}, 0, 0, 0))
  assert caut.optimizer.inner_hparams.to_dict() == {"b1": 0.9, "b2": 0.97, "eps": 1e-8}
  with pytest.raises(ValueError, match="b3"):
    runs_lib.run_config(records_lib.RunSpec("mds", "adamw", {"b3": 0.9}, 0, 0, 0))


@pytest.mark.parametrize("optimizer", sorted(records_lib.SEARCH_SPACES))
def test_every_search_space_builds_through_the_registry(optimizer):
  (hp,) = records_lib.draw_trials(optimizer, 1, study=0)
  for name, (lo, hi) in records_lib.SEARCH_SPACES[optimizer].items():
    v = hp[name[len("one_minus_"):]] if name.startswith("one_minus_") else hp[name]
    assert lo <= (1 - v if name.startswith("one_minus_") else v) <= hi
  cfg = runs_lib.run_config(records_lib.RunSpec("logreg", optimizer, hp, 0, 0, 0))
  tx, schedule = train_state.make_optimizer(cfg)
  assert cfg.optimizer.name == optimizer and callable(tx.update)
  # Warmup + cosine starts at 0 and peaks at the drawn rate; constant (Schedule-Free) is flat.
  assert float(schedule(cfg.schedule.warmup_steps)) == pytest.approx(hp["learning_rate"])
  # The drawn warmup, as a fraction of the run, reached the schedule (or Schedule-Free's own).
  warmup = (cfg.optimizer.warmup_steps if optimizer == "schedule_free_adamw"
            else cfg.schedule.warmup_steps)
  assert warmup == round(hp["warmup_fraction"] * cfg.train.steps)


def _claims_records():
  """w1: adamw's best steps per study 100/102/98; `fast` 50/51/49 (a real speed-up); `noisy`
  60/140/90 (median 90 < 100, but the studies disagree). w2: everyone fails."""
  r = []
  for o, steps in (("adamw", [100, 102, 98]), ("fast", [50, 51, 49]), ("noisy", [60, 140, 90])):
    for study, s in enumerate(steps):
      r += [_rec("w1", o, study, 0, s / 10, steps=s), _rec("w1", o, study, 1, INF)]
  r += [_rec("w2", o, study, t, INF) for o in ("adamw", "fast", "noisy") for study in range(3)
        for t in range(2)]
  return r


def test_workspace_section_from_hand_made_records_is_idempotent(tmp_path):
  ws = tmp_path / "WORKSPACE.md"
  ws.write_text("# Lab notebook\n\nIntro.\n\n## Old results\n\nKeep me.\n")
  records_dir = tmp_path / "records"
  for rec in _claims_records():
    records_lib.append_record(str(records_dir), rec)
  assert workspace.update(str(ws), str(records_dir))
  first = ws.read_text()
  assert not workspace.update(str(ws), str(records_dir))
  assert ws.read_text() == first
  # Markers inserted before the first heading; everything else kept.
  assert first.startswith("# Lab notebook\n\nIntro.\n\n## Tuned comparison (generated)\n\n"
                          + workspace.BEGIN)
  assert first.endswith(workspace.END + "\n\n## Old results\n\nKeep me.\n")
  body = first.split(workspace.BEGIN)[1].split(workspace.END)[0]
  assert "adamw 2 x 3, fast 2 x 3, noisy 2 x 3 - the same tuning budget per study for every " \
         "optimizer." in body
  # w1 ratios: fast 1, adamw 2, noisy 1.8 by steps (and by time: time = steps / 10).
  assert "| fast | 0.500 | 0.500 |" in body and "| noisy | 0.367 | 0.367 |" in body
  assert "| adamw | 0.333 | 0.333 |" in body
  assert "| w1 | 100 [98, 102] (3) | 50 [49, 51] (3) | 90 [60, 140] (3) |" in body
  assert "| w2 | never [never, never] (3) |" in body
  line = next(l for l in body.splitlines() if l.startswith("- **w1**"))
  # Three studies each: the smallest two-sided rank-test p is 0.1, so at alpha = 0.01 even
  # fast's consistent 0.50x is inconclusive; at alpha = 0.2 it is measurable.
  assert ("inconclusive against adamw: fast 0.50x [0.48, 0.52] (p = 0.1), "
          "noisy 0.90x [0.59, 1.43] (p = 0.7)") in line
  assert ("measurably fewer steps than adamw: fast 0.50x [0.48, 0.52] (p = 0.1); inconclusive"
          in workspace.workload_sentence(_claims_records(), "w1", "adamw", 0.2))
  assert "| w1 | noisy | 0.90x [0.59, 1.43] (p = 0.7) |" in body
  assert "Welch" not in body
  assert "no optimizer reached the target" in body.split("- **w2**")[1]
  one_study = [r for r in _claims_records() if r["study"] == 0]
  # One study a side: no interval (a bootstrap over one study is its point), no test.
  assert ("inconclusive against adamw: fast 0.50x (1 study, no interval)"
          in workspace.workload_sentence(one_study, "w1", "adamw", 0.01))
  # Records change -> the section changes, the rest of the file does not.
  records_lib.append_record(str(records_dir), _rec("w1", "adamw", 3, 0, 20.0, steps=200))
  assert workspace.update(str(ws), str(records_dir))
  assert "100 [98, 102] (3)" not in ws.read_text() and "Keep me." in ws.read_text()


def test_versus_tuned_adamw_and_muon_by_hand():
  # w1 as in _claims_records plus muon at 80/81/79; w2: only fast reaches (at 30, 31, 29).
  r = _claims_records()
  r += [_rec("w1", "muon", st, 0, s / 10, steps=s) for st, s in enumerate([80, 81, 79])]
  r += [_rec("w2", "muon", st, 0, INF) for st in range(3)]
  r = [x for x in r if not (x["workload"] == "w2" and x["optimizer"] == "fast")]
  r += [_rec("w2", "fast", st, 0, s / 10, steps=s) for st, s in enumerate([30, 31, 29])]
  lines = workspace.versus(r, ("adamw", "muon"), 0.2)
  at_muon = next(i for i, l in enumerate(lines) if "**Against tuned muon**" in l)
  rows = {tuple(l.split(" | ")[:2]): l for l in lines[:at_muon] if l.startswith("| w")
          and "workload" not in l}
  # fast: 50 / 100 = 0.50 and 50 / 80 = 0.62, measurable at alpha 0.2 (p = 0.1, the
  # intervals exclude 1); w2: the baselines never, fast always: ratio 0, p = 0.1.
  assert rows["| w1", "fast"].startswith("| w1 | fast | 0.50x [0.48, 0.52] (p = 0.1) |")
  assert rows["| w1", "fast"].endswith("| fewer steps, less time |")
  assert rows["| w2", "fast"].startswith("| w2 | fast | 0x (adamw never) [0.00, 0.00] (p = 0.1)")
  # noisy: median 90, 0.90 of adamw's, 1.12 of muon's, both within noise.
  assert rows["| w1", "noisy"].startswith("| w1 | noisy | 0.90x [0.59, 1.43] (p = 0.7) |")
  # 3 and 3 studies: p = 0.7 against alpha 0.2, which 3 a side could reach (0.1).
  assert rows["| w1", "noisy"].endswith("| inconclusive |")
  assert "| w1 | noisy | 1.12x [0.74, 1.77] (p = 0.7) |" in "\n".join(lines)
  assert "**Against tuned adamw**" in lines[0]
  fast = next(l for l in lines if l.startswith("- **fast**"))
  assert fast.startswith("- **fast**: measurably fewer steps than adamw on w1 0.50x [0.48, 0.52]"
                         " (p = 0.1), w2 0x (adamw never) [0.00, 0.00] (p = 0.1); measurably "
                         "fewer steps than muon on w1 0.62x")
  noisy = next(l for l in lines if l.startswith("- **noisy**"))
  assert noisy == ("- **noisy**: measurably fewer steps than adamw on no workload; measurably "
                   "fewer steps than muon on no workload.")
  assert lines[-1].startswith("With 3 studies per optimizer the smallest possible p is 0.1")
  # At the harness's alpha, 0.01, three studies can measure nothing.
  strict = workspace.versus(r, ("adamw", "muon"), 0.01)
  assert all(l.endswith("| inconclusive (3 and 3 studies: p cannot go below 0.1) |")
             for l in strict if l.startswith("| w") and "workload" not in l)


def test_workspace_without_records_and_with_markers():
  text = f"# A\n\n{workspace.BEGIN}\nold\n{workspace.END}\n\n## B\n"
  out = workspace.replace_section(text, workspace.section([]))
  assert out.startswith(f"# A\n\n{workspace.BEGIN}\nNo comparison recorded yet")
  assert out.endswith(f"{workspace.END}\n\n## B\n") and "old" not in out


def test_held_on_grid_interpolates_and_holds_the_end():
  a = np.array([[0, 0.0, 1.0], [10, 2.0, 0.5]])
  b = np.array([[5, 1.0, 0.8], [20, 4.0, 0.2]])
  grid = np.array([0.0, 5.0, 10.0, 20.0])
  got = compare_plots.held_on_grid([a, b], 0, grid)
  np.testing.assert_allclose(got, [[1.0, 0.75, 0.5, 0.5], [np.nan, 0.8, 0.6, 0.2]])


def test_plots_write_pngs(tmp_path):
  records = []
  for o, rate in (("adamw", 0.9), ("muon", 0.8)):
    for study in range(2):
      rec = _rec("mds", o, study, 0, 30.0, steps=30)
      steps = np.arange(0, 40, 10)
      rec.update(metric="relative_stress", target=1e-4,
                 curve=[[int(s), s / 10, float(rate ** (s + study))] for s in steps])
      records.append(rec)
  paths = compare_plots.plot_all(records, str(tmp_path))
  assert sorted(os.path.basename(p) for p in paths) == ["compare_mds.png",
                                                        "compare_profiles.png"]
  for p in paths:
    with open(p, "rb") as f:
      head = f.read(8)
    assert head == b"\x89PNG\r\n\x1a\n" and os.path.getsize(p) > 10_000


def test_a_run_stopped_by_a_signal_is_not_recorded_and_stops_the_sweep(tmp_path, monkeypatch,
                                                                       capsys):
  # The trainer takes SIGTERM, saves a checkpoint and returns early; before this check the
  # sweep recorded that half run as a result and went on to the next one.
  records_dir, runs_dir = str(tmp_path / "records"), str(tmp_path / "runs")
  real = trainer.train_and_evaluate
  calls = []

  def stopped_second(cfg, workdir):
    calls.append(workdir)
    summary = real(cfg, workdir)
    return dict(summary, stopped_by_signal=15) if len(calls) == 2 else summary

  monkeypatch.setattr(trainer, "train_and_evaluate", stopped_second)
  with pytest.raises(SystemExit) as e:
    compare.run_sweep(records_dir, ["mds"], ["adamw", "sgd"], 1, 1, runs_dir)
  assert e.value.code == 128 + 15 and len(calls) == 2
  assert "stopped by signal 15; rerun the same command to resume it" in capsys.readouterr().out
  (only,) = records_lib.read_records(records_dir)
  assert only["optimizer"] == "adamw"
  monkeypatch.setattr(trainer, "train_and_evaluate", real)
  compare.run_sweep(records_dir, ["mds"], ["adamw", "sgd"], 1, 1, runs_dir)
  assert [r["optimizer"] for r in records_lib.read_records(records_dir)] == ["adamw", "sgd"]


def test_budget_line_names_what_a_stopped_sweep_has_not_run():
  recs = [_rec(w, o, s, t, 10.0) for w in ("w1", "w2") for o in ("a", "b") for s in range(3)
          for t in range(2)]
  recs += [_rec("w1", "c", s, t, 10.0) for s in range(2) for t in range(2)]  # c: no w2 yet
  recs = [r for r in recs if not (r["workload"] == "w2" and r["optimizer"] == "b" and
                                  r["study"] == 2 and r["trial"] == 1)]
  assert workspace.coverage(recs)["b"] == {"w1": (2, 3), "w2": (1, 3)}
  assert workspace.coverage(recs)["c"] == {"w1": (2, 2), "w2": (0, 0)}
  assert workspace.budget(recs) == {"a": (2, 3), "b": (2, 3), "c": (2, 2)}
  line = workspace.budget_sentence(recs)
  assert "a 2 x 3, b 2 x 3, c 2 x 2 - the same tuning budget per study" in line
  assert "(fewer studies: wider intervals, not a handicap)" in line
  assert "**Incomplete**" in line and "b (2 x 3 elsewhere): w2 1 x 3" in line
  assert "c (2 x 2 elsewhere): w2 0 x 0" in line
  complete = [r for r in recs if r["optimizer"] == "a"]
  assert "Incomplete" not in workspace.budget_sentence(complete)
  uneven = complete + [_rec(w, "d", 0, 0, 10.0) for w in ("w1", "w2")]
  assert "NOT the same for every optimizer" in workspace.budget_sentence(uneven)


def test_trainer_runs_go_study_by_study(tmp_path, monkeypatch):
  """A sweep's trainer runs follow the plan's order, every optimizer's trials of study 0
  before any of study 1, so a sweep stopped midway leaves each optimizer the same complete
  studies (issue 39: a multi-day sweep is read while it runs)."""
  order = []

  def fake_train_run(spec, runs_dir):
    order.append((spec.study, spec.optimizer, spec.trial))
    return {"target": 1.0, "metric": "val_loss", "step_budget": 10, "steps_to_target": None,
            "time_to_target_s": None, "final_metric": 2.0, "curve": [[0, 0.0, 3.0]]}

  monkeypatch.setattr(runs_lib, "train_run", fake_train_run)
  phase = compare.plan_phase(str(tmp_path / "records"), str(tmp_path / "runs"), ["mds"],
                             ["adamw", "sgd"], 2, 2)
  compare.run_phases([phase], vectorize="never")
  assert order == [(s, o, t) for s in (0, 1) for o in ("adamw", "sgd") for t in (0, 1)]
