"""The CPU speedrun configs of lion, schedule-free, AdEMAMix and cautious build and step.

(Each also trains 12 steps in `test_train.test_every_cpu_speedrun_config_trains`.)
"""

import chex
import jax
import jax.numpy as jnp
import pytest

from experiments import configs_util
from experiments.training import train_state

CONFIGS = {"lion": "lion", "schedule_free_adamw": "schedule_free_adamw",
           "schedule_free_sgd": "schedule_free_sgd", "ademamix": "ademamix",
           "cautious": "cautious"}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_builds_and_steps(name):
  cfg = configs_util.load(f"configs/speedrun_cpu_{name}.py", {"train.steps": 300})
  assert cfg.optimizer.name == CONFIGS[name]
  tx, schedule = train_state.make_optimizer(cfg)
  params = {"w": jnp.ones((64, 128)), "b": jnp.zeros((128,))}
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.1), params)
  state = tx.init(params)
  updates, _ = jax.jit(tx.update)(grads, state, params)
  chex.assert_tree_all_finite(updates)
  lr = cfg.optimizer.learning_rate
  if name.startswith("schedule_free"):
    # No schedule on top: the trainer's lr is the peak from step 0 to the end.
    assert float(schedule(0)) == float(schedule(299)) == pytest.approx(lr)
    assert float(jnp.abs(updates["w"]).max()) > 0  # the optimizer's own warmup starts at lr/50
  else:
    assert float(schedule(0)) == 0.0 and float(schedule(cfg.schedule.warmup_steps)) == (
        pytest.approx(lr))
  if name == "ademamix":  # the warmups follow train.steps
    assert cfg.optimizer.alpha_warmup_steps == cfg.optimizer.b3_warmup_steps == 300
