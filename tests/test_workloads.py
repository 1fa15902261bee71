"""experiments/problems/workloads.py: every workload's config builds it; batches are a pure
function of
(seed, step) and split over processes and devices; the GPT workload is the trainer's data and
model; the small workloads' metrics mean what they say; the MLP trains."""

import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from experiments import configs_util
from experiments.problems import data as data_lib
from experiments.problems import workloads
from models import gpt
from models import small
import optimizers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ["speedrun", "gpt_deep", "mds", "logreg", "mlp_digits"]
GPT_SMALL = {"model.num_layers": 1, "model.width": 16, "model.num_heads": 2,
             "train.eval_batches": 2}


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("corpus"))


def config(name, corpus_dir, **overrides):
  values = dict(GPT_SMALL, **{"data.cache_dir": corpus_dir}) if "speedrun" in name or \
      "gpt" in name else {}
  values.update({k.replace("__", "."): v for k, v in overrides.items()})
  return configs_util.load(os.path.join(ROOT, "configs", f"workload_{name}.py"), values)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_config_builds_workload_with_target_and_budget(name, corpus_dir, tmp_path):
  cfg = config(name, corpus_dir)
  w = workloads.build(cfg, str(tmp_path))
  assert w.name == cfg.workload == name
  assert w.target == cfg.train.target_val_loss and w.target > 0
  assert w.step_budget == cfg.train.steps > 0
  # Same top-level layout as the speedrun config, so the trainer reads every one alike.
  base = configs_util.load(os.path.join(ROOT, "configs", "speedrun_cpu.py"))
  assert set(base) | {"workload"} == set(cfg)
  assert set(base.train) == set(cfg.train)
  # Batches: a pure function of (seed, step); steps and seeds differ (unless full batch).
  b = w.train_batch(3, 7)
  chex.assert_trees_all_equal(b, w.train_batch(3, 7))
  assert all(x.shape[0] == w.batch_size for x in jax.tree.leaves(b))
  full_batch = name == "mds"
  differs = lambda a, c: any(not np.array_equal(x, y) for x, y in
                             zip(jax.tree.leaves(a), jax.tree.leaves(c)))
  assert differs(b, w.train_batch(3, 8)) != full_batch
  assert differs(b, w.train_batch(4, 7)) != full_batch
  # Two processes' rows, concatenated, are the global batch; eval batches likewise.
  halves = [w.train_batch(3, 7, i, 2) for i in range(2)]
  chex.assert_trees_all_equal(jax.tree.map(lambda *x: np.concatenate(x), *halves), b)
  ev = w.eval_batches()
  ev_halves = [w.eval_batches(i, 2) for i in range(2)]
  for j, e in enumerate(ev):
    chex.assert_trees_all_equal(
        jax.tree.map(lambda *x: np.concatenate(x), ev_halves[0][j], ev_halves[1][j]), e)
  params = w.init_params(jax.random.key(0))
  chex.assert_tree_all_finite((w.loss_fn(params, b), w.eval_fn(params, ev[0])))
  # The stream's state is its position, as data.BatchIterator's.
  stream = w.batches(3, position=7)
  chex.assert_trees_all_equal(next(stream), b)
  assert stream.state() == {"position": 8, "seed": 3}


def test_unknown_workload_lists_known(tmp_path, corpus_dir):
  cfg = config("mds", corpus_dir)
  with cfg.unlocked():
    cfg.workload = "nope"
  with pytest.raises(ValueError, match="mds"):
    workloads.build(cfg, str(tmp_path))


def test_gpt_workload_is_the_trainers_data_and_model(corpus_dir, tmp_path):
  """What trainer.py did before the refactor: BatchIterator rows, gpt.init_params and
  gpt.loss_fn; the validation set of eval_batches x batch_size rows."""
  cfg = config("speedrun", corpus_dir, train__grad_accum_steps=2)
  w = workloads.build(cfg, str(tmp_path))
  model_cfg = gpt.GPTConfig.from_config(cfg.model)
  corpus = data_lib.build_stdlib_corpus(corpus_dir)
  window = cfg.data.seq_len + 1
  train = data_lib.TokenSource(corpus.train_files, 256, window)
  val = data_lib.TokenSource(corpus.val_files, 256, window)
  it = data_lib.BatchIterator(train, cfg.train.batch_size, seed=5, process_index=1,
                              process_count=2)
  it.position = 11
  np.testing.assert_array_equal(w.train_batch(5, 11, 1, 2), next(it))
  # The validation set: eval_batches x batch_size rows, whatever the accumulation, in
  # micro-batch chunks.
  micro = cfg.train.batch_size // 2
  chunks = [c for b in data_lib.eval_batches(val, cfg.train.batch_size, cfg.train.eval_batches)
            for c in np.split(b, 2)]
  assert len(w.eval_batches(1, 2)) == len(chunks) == 2 * cfg.train.eval_batches
  for mine, theirs in zip(w.eval_batches(1, 2), chunks):
    np.testing.assert_array_equal(mine, theirs[micro // 2:])
  key = jax.random.key(0)
  params = w.init_params(key)
  chex.assert_trees_all_equal(params, gpt.init_params(model_cfg, key))
  b = w.train_batch(0, 0)
  assert float(w.loss_fn(params, b)) == float(gpt.loss_fn(model_cfg, params, b))
  assert w.info["sha256"] == corpus.sha256
  assert w.fingerprint == {"model": {k: v for k, v in model_cfg.__dict__.items() if k != "remat"},
                           "data_source": "stdlib",
                           "seq_len": cfg.data.seq_len}
  assert w.items_per_step == cfg.train.batch_size * cfg.data.seq_len


@pytest.mark.slow
def test_mds_metric_is_zero_at_the_points_and_scaled_loss(tmp_path):
  cfg = config("mds", None)
  w = workloads.build(cfg, str(tmp_path))
  n = cfg.model.num_points
  points = np.random.default_rng(cfg.data.points_seed).normal(size=(n, cfg.model.dim))
  (ev,) = w.eval_batches()
  shifted = {"w": jnp.asarray(points + 3.0, jnp.float32)}  # a translation is also a solution
  assert float(w.eval_fn(shifted, ev)) < 1e-9
  p = w.init_params(jax.random.key(0))
  dist = small.mds_squared_distances(points)
  np.testing.assert_allclose(float(w.loss_fn(p, w.train_batch(0, 0))),
                             float(small.mds_loss(p, ev)) / n ** 2, rtol=1e-6)
  np.testing.assert_allclose(float(w.eval_fn(p, ev)),
                             float(small.mds_loss(p, ev)) / np.sum(dist ** 2), rtol=1e-6)


def test_logreg_suboptimality_against_numpy(tmp_path):
  cfg = config("logreg", None)
  w = workloads.build(cfg, str(tmp_path))
  a, y = workloads.breast_cancer(cfg.data.num_examples)
  assert a.shape == (568, 31) and set(np.unique(y)) == {-1.0, 1.0}
  mu = cfg.model.mu
  f = lambda x: mu / 2 * x @ x + np.mean(np.logaddexp(0, -y * (a @ x)))
  f_star = w.info["f_star"]
  # f* is the minimum: the float64 gradient vanishes there (Newton), and f* <= f(0) = log 2.
  x_star = np.zeros(31)
  for _ in range(30):
    s = 1 / (1 + np.exp(y * (a @ x_star)))
    g = mu * x_star - a.T @ (y * s) / len(y)
    x_star -= np.linalg.solve(mu * np.eye(31) + (a.T * (s * (1 - s))) @ a / len(y), g)
  assert f(x_star) == pytest.approx(f_star, abs=1e-12) and f_star < np.log(2)
  (ev,) = w.eval_batches()
  x = np.random.default_rng(0).normal(size=31) * 0.1
  np.testing.assert_allclose(float(w.eval_fn({"x": jnp.asarray(x, jnp.float32)}, ev)),
                             f(x) - f_star, rtol=1e-4)


def test_data_parallel_split_of_a_workload_batch_gives_the_same_gradient(tmp_path):
  cfg = config("mlp_digits", None)
  w = workloads.build(cfg, str(tmp_path))
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))  # the trainer's kind of mesh
  params = w.init_params(jax.random.key(0))
  batch = w.train_batch(0, 0)
  grad = jax.jit(jax.grad(w.loss_fn))
  sharded = jax.device_put(batch, NamedSharding(mesh, P("data")))
  chex.assert_trees_all_close(grad(params, sharded), grad(params, batch), rtol=1e-5, atol=1e-6)


def test_mlp_digits_trains(tmp_path):
  """AdamW from the registry, 150 steps: validation error from chance (~0.9) to under 0.1."""
  cfg = config("mlp_digits", None)
  w = workloads.build(cfg, str(tmp_path))
  tx = optimizers.create("adamw", learning_rate=3e-3, b2=0.95, weight_decay=0.0)
  params = w.init_params(jax.random.key(0))
  state = tx.init(params)

  @jax.jit
  def step(params, state, batch):
    grads = jax.grad(w.loss_fn)(params, batch)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  (ev,) = w.eval_batches()
  before = float(w.eval_fn(params, ev))
  for i in range(150):
    params, state = step(params, state, w.train_batch(0, i))
  after = float(w.eval_fn(params, ev))
  assert before > 0.6 and after < 0.1, (before, after)
