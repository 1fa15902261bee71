"""Registry optimizers in your own optax + Flax NNX training loop.

Shows: `optimizers.create(name, **hparams)` gives a plain `optax.GradientTransformation`, so it
drops into the standard Flax NNX loop (`nnx.Optimizer(model, tx, wrt=nnx.Param)`, one jitted
step) unchanged. A small MLP regresses a fixed random teacher network with AdamW, Lion and
Muon (Muon's routing sends the 2-D kernels to Muon and the biases to AdamW by itself); each
run prints its loss going down.

Run from the repository root (about 10 s on a CPU):

  PYTHONPATH=. python examples/own_training_loop.py --steps=150

It exits non-zero unless every optimizer cuts the training loss at least tenfold.
"""

import argparse
import sys

from flax import nnx
import jax
import jax.numpy as jnp

import optimizers


class MLP(nnx.Module):
  def __init__(self, sizes, rngs: nnx.Rngs):
    self.layers = nnx.List([nnx.Linear(m, n, rngs=rngs) for m, n in zip(sizes[:-1], sizes[1:])])

  def __call__(self, x_BxF):
    for layer in self.layers[:-1]:
      x_BxF = jax.nn.gelu(layer(x_BxF))
    return self.layers[-1](x_BxF)


def data(key, n=256, features=16):
  """Inputs and the targets of a fixed random teacher network."""
  k_x, k_teacher = jax.random.split(key)
  x_BxF = jax.random.normal(k_x, (n, features))
  teacher = MLP([features, 32, 1], nnx.Rngs(k_teacher))
  return x_BxF, teacher(x_BxF)


def train(name, hparams, x_BxF, y_Bx1, steps):
  model = MLP([x_BxF.shape[1], 64, 64, 1], nnx.Rngs(0))
  tx = optimizers.create(name, **hparams)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  def loss_fn(model):
    return jnp.mean((model(x_BxF) - y_Bx1) ** 2)

  @nnx.jit
  def train_step(model, optimizer):
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)  # calls tx.update(grads, state, params)
    return loss

  losses = []
  for step in range(steps):
    losses.append(float(train_step(model, optimizer)))
    if step % max(1, steps // 5) == 0 or step == steps - 1:
      print(f"  {name:8s} step {step:4d}  loss {losses[-1]:.5f}")
  return losses[0], float(loss_fn(model))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=150)
  args = parser.parse_args()

  x_BxF, y_Bx1 = data(jax.random.key(42))
  runs = {
      "adamw": dict(learning_rate=3e-3, weight_decay=0.0),
      "lion": dict(learning_rate=1e-3),
      "muon": dict(learning_rate=0.02, adam_learning_rate=3e-3),
  }
  ok = True
  for name, hparams in runs.items():
    print(f"{name} {hparams}")
    first, last = train(name, hparams, x_BxF, y_Bx1, args.steps)
    ok &= last < first / 10
    print(f"  {name}: loss {first:.4f} -> {last:.5f}")
  if not ok:
    print("FAILED: some optimizer did not cut the loss tenfold")
    sys.exit(1)
  print("OK: every optimizer cut the loss at least tenfold")


if __name__ == "__main__":
  main()
