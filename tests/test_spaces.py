"""Search spaces by one rule (experiments/harness/spaces.py), edge reports and extensions, and
the trainer's second learning rate (`embed_learning_rate`) that gives AdamW Muon's groups."""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import speedrun_cpu
from experiments import compare
from experiments.harness import records as records_lib
from experiments.harness import runs as runs_lib
from experiments.harness import spaces
from experiments.training import train_state
from models import gpt
from optimizers import routing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Adam's step size (Adam grafting, Adam-normalized steps): AdamW's learning-rate scale.
ADAM_SCALED = ("adamw_8bit", "cautious", "shampoo", "soap", "schedule_free_adamw", "ademamix")


def test_every_adam_scaled_optimizer_gets_adamw_dimensions_and_none_gets_more():
  adamw = spaces.SPACES["adamw"]
  assert set(adamw.roles()) == set(spaces.ROLES)  # the baseline gets every dimension
  for opt in ADAM_SCALED:
    assert set(spaces.SPACES[opt].roles()) == set(adamw.roles()), opt
  for opt, space in spaces.SPACES.items():
    assert len(space.dims) <= len(adamw.dims), opt
    assert set(space.roles()) <= set(adamw.roles()), opt
    # Same role, same range (learning rates aside, which follow each reference).
    for role in ("b1", "b2", "warmup"):
      if role in space.roles():
        mine, base = space.dim(space.roles()[role]), adamw.dim(adamw.roles()[role])
        assert (mine.low, mine.high, mine.log) == (base.low, base.high, base.log), opt
  # Muon's two groups, as AdamW's: embeddings / head / vectors get the second rate.
  assert spaces.SPACES["muon"].roles()["group_learning_rate"] == "adam_learning_rate"
  assert adamw.roles()["group_learning_rate"] == "embed_learning_rate"


def test_learning_rate_ranges_span_two_decades_around_the_reference_and_hold_the_old_bests():
  for opt, ref in spaces.REFERENCES.items():
    space = spaces.SPACES[opt]
    for key, center in ref.learning_rates.items():
      d = space.dim(key)
      assert d.log and math.log10(d.high / d.low) >= 2 - 1e-9, (opt, key)
      assert math.sqrt(d.low * d.high) == pytest.approx(center), (opt, key)
      for best in ref.old_best.get(key, ()):
        assert d.low <= best <= d.high, (opt, key, best)
  lo, hi = spaces.SPACES["adamw"].ranges()["learning_rate"]
  assert lo <= 1e-3 and hi >= 1e-1  # issue 39: AdamW's optimum was cut off at 1e-2
  # Widened a decade at a time (half each side) until it contains the old best.
  assert spaces.lr_range(1.0, (150.0,)) == pytest.approx((10 ** -2.5, 10 ** 2.5))


def test_search_spaces_dict_is_derived_and_the_legacy_table_kept():
  assert records_lib.SEARCH_SPACES == {o: s.ranges() for o, s in spaces.SPACES.items()}
  assert spaces.LEGACY_RANGES["adamw"]["learning_rate"] == (1e-2, 1e-1)
  assert set(records_lib.BASE_CONFIGS) == set(spaces.SPACES)


def test_draws_are_reproducible_per_study_and_linear_dims_uniform_in_range():
  space = spaces.SPACES["adamw"]
  a = spaces.draw(space, 8, study=3)
  assert a == spaces.draw(space, 8, study=3) and a != spaces.draw(space, 8, study=4)
  warm = [t["warmup_fraction"] for t in a]
  lo, hi = spaces.WARMUP
  assert all(lo <= w <= hi for w in warm)
  # Scrambled Sobol, linear scale: one of 8 points in each eighth of [lo, hi].
  assert sorted(np.floor((np.array(warm) - lo) / (hi - lo) * 8).astype(int)) == list(range(8))
  for t in a:
    assert 1 - spaces.ONE_MINUS_B2[1] <= t["b2"] <= 1 - spaces.ONE_MINUS_B2[0]
  (muon,) = spaces.draw(spaces.SPACES["muon"], 1, study=0)
  assert muon["adam_weight_decay"] == muon["weight_decay"]  # tied to one dimension


def test_space_ids_are_stable_and_records_carry_them(tmp_path):
  sid = spaces.space_id_of("adamw")
  assert sid == spaces.space_id(spaces.build("adamw", spaces.REFERENCES["adamw"]))
  assert sid != spaces.space_id_of("adamw_8bit") and sid.startswith("adamw-")
  specs = records_lib.plan("logreg", ["adamw", "sgd"], 2, [0])
  assert {sp.space for sp in specs} == {sid, spaces.space_id_of("sgd")}
  result = {"target": 1.0, "metric": "val_loss", "step_budget": 10, "steps_to_target": None,
            "time_to_target_s": None, "final_metric": 2.0, "curve": []}
  record = records_lib.make_record(specs[0], result, {"git_sha": "x"})
  assert record["space"] == sid and spaces.space_of(record)[1] == spaces.SPACES["adamw"]
  assert spaces.space_of({"optimizer": "adamw"})[0] == spaces.LEGACY  # older records


def test_warmup_fraction_reaches_the_schedule_or_the_optimizer():
  hp = {"learning_rate": 0.01, "embed_learning_rate": 0.002, "warmup_fraction": 0.1}
  cfg = runs_lib.run_config(records_lib.RunSpec("mds", "adamw", hp, 0, 0, 0))
  assert cfg.schedule.warmup_steps == round(0.1 * cfg.train.steps)
  assert cfg.optimizer.embed_learning_rate == 0.002 and "warmup_fraction" not in cfg.optimizer
  sf = runs_lib.run_config(records_lib.RunSpec("mds", "schedule_free_adamw",
                                          {"warmup_fraction": 0.2}, 0, 0, 0))
  assert sf.optimizer.warmup_steps == round(0.2 * sf.train.steps)
  assert sf.schedule.warmup_steps == 0
  # A schedule's warmup is traced in a vectorized program; Schedule-Free's (a Python branch in
  # the optimizer) is one value per program.
  for opt, sizes in (("adamw", [3]), ("schedule_free_adamw", [1, 2])):
    specs = [records_lib.RunSpec("mds", opt, {"warmup_fraction": w}, 0, t, 0)
             for t, w in enumerate((0.1, 0.1, 0.05))]
    assert sorted(len(g) for g in compare._groups(specs, 25)) == sizes, opt


@pytest.mark.parametrize("name", ["warmup_cosine", "wsd", "constant"])
def test_a_traced_warmup_gives_the_schedule_of_a_static_one(name):
  cfg = speedrun_cpu.get_config()
  cfg.train.steps, cfg.schedule.name, cfg.schedule.final_lr_fraction = 100, name, 0.1
  traced = jax.jit(lambda c, w: train_state.make_schedule(cfg, jnp.float32(0.03), w)(c))
  counts = np.arange(130)
  for w in (0, 1, 13, 100, 120):
    cfg.schedule.warmup_steps = w
    static = train_state.make_schedule(cfg, 0.03)
    np.testing.assert_allclose([float(traced(c, jnp.float32(w))) for c in counts],
                               [float(static(c)) for c in counts], rtol=1e-5, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# Edges and extensions.

def _record(workload, optimizer, study, trial, hparams, time_s=None, budget_metrics=None,
            space=None):
  r = {"workload": workload, "optimizer": optimizer, "study": study, "trial": trial,
       "seed": 1000 * study + trial, "hparams": hparams, "time_to_target_s": time_s,
       "steps_to_target": None if time_s is None else 10 * time_s, "final_metric": 1.0,
       "target": 1.0, "metric": "val_loss", "step_budget": 100, "curve": []}
  if budget_metrics is not None:
    r["budget_metrics"] = budget_metrics
  if space is not None:
    r["space"] = space
  return r


def _edge_records():
  """AdamW (current space) on w: 4 studies of 3 trials; the fastest trial's learning rate is
  1.1e-3 (the bottom 10% of [1e-3, 1e-1]) in studies 0-2 and 1e-2 in study 3; b2 0.95 and the
  warmup 0.1 always (the middle)."""
  sid = spaces.space_id_of("adamw")
  out = []
  for study in range(4):
    best_lr = 1.1e-3 if study < 3 else 1e-2
    for trial, (lr, t) in enumerate(((best_lr, 5.0), (1e-2, 9.0), (3e-2, None))):
      out.append(_record("w", "adamw", study, trial, {"learning_rate": lr, "b2": 0.95,
                                                       "warmup_fraction": 0.1}, t, space=sid))
  return out


def test_edges_finds_a_learning_rate_at_the_bottom_in_three_studies():
  (found,) = spaces.edges(_edge_records())
  assert (found.workload, found.optimizer, found.budget, found.hparam, found.side,
          found.count, found.studies) == ("w", "adamw", None, "learning_rate", "low", 3, 4)
  assert found.line() == f"w adamw - learning_rate low 3/4 space={spaces.space_id_of('adamw')}"
  assert spaces.edges(_edge_records(), min_studies=4) == []


def test_edges_per_budget_and_linear_dims_and_legacy_records():
  # Budget records: at budget 50 the short warmup (0.01, bottom 10% of [0, 0.2]) wins in 3
  # studies; at budget 100 the long one (0.19, top 10%).
  sid = spaces.space_id_of("adamw")
  recs = []
  for study in range(3):
    for trial, w in enumerate((0.01, 0.1, 0.19)):
      bm = [{"budget": 50, "val_loss": 1.0 + abs(w - 0.01)},
            {"budget": 100, "val_loss": 1.0 + abs(w - 0.19)}]
      recs.append(_record("w", "adamw", study, trial, {"learning_rate": 0.01,
                                                        "warmup_fraction": w}, 1.0, bm, sid))
  found = {(f.budget, f.hparam, f.side, f.count) for f in spaces.edges(recs)}
  assert found == {(50, "warmup_fraction", "low", 3), (100, "warmup_fraction", "high", 3)}
  # Legacy records (no `space`) against the old table: b2 = 0.9 is 1 - b2 = 0.1, its top.
  legacy = [_record("w", "adamw", s, 0, {"learning_rate": 0.03, "b2": 0.9}, 1.0)
            for s in range(3)]
  (f,) = spaces.edges(legacy)
  assert (f.hparam, f.side, f.space) == ("one_minus_b2", "high", spaces.LEGACY)


def test_extend_moves_the_bound_one_decade_deterministically_and_records_it():
  space = spaces.SPACES["adamw"]
  findings = spaces.edges(_edge_records())
  wider = spaces.extend(space, findings)
  assert wider.ranges()["learning_rate"] == pytest.approx((1e-4, 1e-1))
  assert wider.history == (("learning_rate", "low", 1e-3, pytest.approx(1e-4)),)
  assert spaces.space_id(wider) != spaces.space_id(space)
  assert spaces.space_id(wider) == spaces.space_id(spaces.extend(space, findings))
  # Linear: by the range's width, within the limits; another optimizer's finding is ignored.
  warm = spaces.extend(space, [("warmup_fraction", "high")])
  assert warm.ranges()["warmup_fraction"] == pytest.approx((0.0, 0.4))
  assert spaces.extend(warm, [("warmup_fraction", "high")]).ranges()["warmup_fraction"] == \
      pytest.approx((0.0, 0.5))
  other = spaces.Finding("w", "sgd", None, "learning_rate", "low", 3, 3, "x")
  assert spaces.extend(space, [other]) == space
  with pytest.warns(UserWarning, match="limit"):
    assert spaces.extend(space, [("warmup_fraction", "low")]) == space  # 0 is the floor


def test_compare_edges_prints_the_findings(tmp_path):
  with open(tmp_path / "w.jsonl", "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in _edge_records())
  out = subprocess.run([sys.executable, "-m", "experiments.compare", "edges", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr
  assert out.stdout.splitlines() == [
      f"w adamw - learning_rate low 3/4 space={spaces.space_id_of('adamw')}",
      "1 edge-bound hyperparameter(s) (best trial in the outer 10% of its range in 3 or more "
      f"studies) over 12 tuning runs of 1 workload x optimizer pair(s) in {tmp_path}"]


def test_publishing_refuses_edge_bound_records_unless_allowed(capsys):
  with pytest.raises(SystemExit) as e:
    compare.check_edges(_edge_records(), allow=False)
  assert e.value.code == 1
  err = capsys.readouterr().err.splitlines()
  assert len(err) == 1 and err[0].startswith("ERROR:") and "adamw - learning_rate low" in err[0]
  compare.check_edges(_edge_records(), allow=True)
  compare.check_edges(_edge_records()[-3:], allow=False)  # one study: nothing at an edge


# ---------------------------------------------------------------------------------------------
# The trainer's second learning rate.

def _tiny():
  cfg = speedrun_cpu.get_config()
  cfg.model.num_layers, cfg.model.width, cfg.model.num_heads = 1, 32, 2
  cfg.schedule.name, cfg.schedule.warmup_steps = "constant", 0
  cfg.schedule.base_batch_size = None
  cfg.optimizer.weight_decay = 0.01
  params = gpt.init_params(gpt.GPTConfig.from_config(cfg.model), jax.random.key(0))
  grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(1), p.shape, p.dtype), params)
  return cfg, params, grads


def _two_steps(cfg, params, grads):
  tx, _ = train_state.make_optimizer(cfg)
  state = tx.init(params)
  u1, state = tx.update(grads, state, params)
  u2, _ = tx.update(jax.tree.map(lambda g: 0.5 * g, grads), state, params)
  return u1, u2


def test_embed_learning_rate_equal_to_learning_rate_is_plain_adamw_bit_for_bit():
  cfg, params, grads = _tiny()
  plain = _two_steps(cfg, params, grads)
  cfg.optimizer.embed_learning_rate = cfg.optimizer.learning_rate
  split = _two_steps(cfg, params, grads)
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(split)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_embed_learning_rate_moves_the_embeddings_head_and_vectors_by_its_own_rate():
  cfg, params, grads = _tiny()
  (plain, _) = _two_steps(cfg, params, grads)
  cfg.optimizer.embed_learning_rate = 4 * cfg.optimizer.learning_rate
  (split, _) = _two_steps(cfg, params, grads)
  labels = jax.tree_util.tree_map_with_path(routing.default_label, params)
  groups = {l for l in jax.tree.leaves(labels)}
  assert groups == {routing.MUON, routing.ADAM}
  for label, a, b in zip(jax.tree.leaves(labels), jax.tree.leaves(plain),
                         jax.tree.leaves(split)):
    # AdamW's update is linear in its learning rate (decay included): x4 on the second group.
    if label == routing.ADAM:
      np.testing.assert_allclose(np.asarray(b), 4 * np.asarray(a), rtol=1e-6)
    else:
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert any("embed" in routing.path_str(p) for p, l in
             jax.tree_util.tree_flatten_with_path(labels)[0] if l == routing.ADAM)


def test_embed_learning_rate_overrides_may_be_traced_and_need_no_config_key():
  cfg, params, grads = _tiny()
  del cfg.optimizer["embed_learning_rate"]  # a block without the key (another optimizer's)
  tx, _ = train_state.make_optimizer(cfg, overrides={"embed_learning_rate": jnp.float32(1e-3)})
  u, _ = tx.update(grads, tx.init(params), params)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(u))


def test_adopted_extensions_are_applied_in_order_and_every_step_stays_readable(monkeypatch):
  monkeypatch.setattr(spaces, "EXTENSIONS", {"adamw": (("learning_rate", "low"),
                                                       ("learning_rate", "low"))})
  current, known = spaces._rule_spaces()  # pylint: disable=protected-access
  assert current["adamw"].ranges()["learning_rate"] == pytest.approx((1e-5, 1e-1))
  assert [h[1:] for h in current["adamw"].history] == [
      ("low", pytest.approx(1e-3), pytest.approx(1e-4)),
      ("low", pytest.approx(1e-4), pytest.approx(1e-5))]
  # The rule's space and each step's: records drawn from any of them are read against it.
  assert len([k for k in known if k.startswith("adamw-")]) == 3
  assert spaces.space_id_of("adamw") in known
