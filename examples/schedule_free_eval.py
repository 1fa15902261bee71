"""Schedule-Free AdamW: train at one point, evaluate at another with `optimizers.eval_params`.

Schedule-Free (Defazio et al., 2024, arXiv 2405.15682) replaces the learning-rate schedule by
an average: the gradient is taken at y, an interpolation between the iterate z and the running
average x, and the parameters to evaluate (and to keep) are x. `tx.update` moves the
parameters the training loop holds, which are y; `optimizers.eval_params(params, opt_state)`
returns x. For any other optimizer it returns `params` unchanged, so a loop can always call it.

A small MLP (`models/small.py`) classifies noisy synthetic data with minibatches at a constant
learning rate and no schedule; every few steps the validation loss is computed at y and at x.
The average x smooths the minibatch noise, so it is the better point to evaluate.

Run from the repository root (a few seconds on a CPU):

  PYTHONPATH=. python examples/schedule_free_eval.py --steps=400

It exits non-zero unless the validation loss at x has fallen and is below the one at y.
"""

import argparse
import sys

import jax
import jax.numpy as jnp
import optax

import optimizers
from models import small

FEATURES, CLASSES, HIDDEN, BATCH = 20, 4, 64, 32


def make_data(key, n):
  """Labels of a random linear teacher, a fifth of them flipped at random (label noise)."""
  k_teacher, k_x, k_flip, k_rand = jax.random.split(key, 4)
  teacher = jax.random.normal(k_teacher, (FEATURES, CLASSES))
  x = jax.random.normal(k_x, (n, FEATURES))
  y = jnp.argmax(x @ teacher, axis=-1)
  flip = jax.random.uniform(k_flip, (n,)) < 0.2
  y = jnp.where(flip, jax.random.randint(k_rand, (n,), 0, CLASSES), y)
  return {"x": x, "y": y}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=400)
  args = parser.parse_args()

  data = make_data(jax.random.key(0), 4096 + 1024)
  train = jax.tree.map(lambda a: a[:4096], data)
  val = jax.tree.map(lambda a: a[4096:], data)

  params = small.mlp_init(jax.random.key(1), [FEATURES, HIDDEN, HIDDEN, CLASSES])
  tx = optimizers.create("schedule_free_adamw", learning_rate=5e-2, warmup_steps=20)
  state = tx.init(params)

  @jax.jit
  def step(params, state, batch):
    grads = jax.grad(small.mlp_loss)(params, batch)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  @jax.jit
  def evaluate(params, state):
    x = optimizers.eval_params(params, state)  # the averaged point
    return small.mlp_loss(params, val), small.mlp_loss(x, val)

  initial = float(small.mlp_loss(params, val))
  print(f"step    0  val loss {initial:.4f}")
  key = jax.random.key(2)
  for t in range(1, args.steps + 1):
    key, sub = jax.random.split(key)
    idx = jax.random.randint(sub, (BATCH,), 0, 4096)
    params, state = step(params, state, jax.tree.map(lambda a: a[idx], train))
    if t % max(1, args.steps // 8) == 0 or t == args.steps:
      at_y, at_x = map(float, evaluate(params, state))
      print(f"step {t:4d}  val loss at y (params) {at_y:.4f}   at x (eval_params) {at_x:.4f}")

  # Another optimizer's state has no Schedule-Free average: eval_params is the identity.
  adamw = optimizers.create("adamw", learning_rate=1e-3)
  same = optimizers.eval_params(params, adamw.init(params))
  assert all(a is b for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(params)))

  if not (at_x < initial * 0.9 and at_x < at_y):
    print(f"FAILED: val loss at x {at_x:.4f} (initial {initial:.4f}, at y {at_y:.4f})")
    sys.exit(1)
  print(f"OK: eval_params gives the better point (val loss {at_x:.4f} at x, {at_y:.4f} at y)")


if __name__ == "__main__":
  main()
