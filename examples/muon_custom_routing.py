"""Muon with a custom routing: which leaves get Muon's orthogonalized update, which get AdamW.

Muon (and `optax_muon`, `normuon`, `dion`) route each parameter by `optimizers/routing.py`: by
default 2-D tensors go to Muon, and tensors with fewer dimensions, or under a key named like
an embedding or head (`embed`, `wte`, `lm_head`, ...), go to AdamW. This model names its
embedding `tok_table` and its head `readout`, so the default rule would orthogonalize them as
hidden matrices; it stacks its hidden layers into one (layers, in, out) kernel, which Muon
refuses until it is told how that tensor is a batch of matrices, and their biases into a
(layers, width) tensor, which the default rule would take for a matrix. The example:

  1. prints the default routing and the error for the stacked kernel;
  2. passes `labels=` (a function `(path, leaf) -> "muon" | "adam"`) and `dimension_numbers=`
     (`optax.contrib.MuonDimensionNumbers(1, 2)`: axis 1 is fan-in, axis 2 fan-out, axis 0 a
     batch of independent matrices);
  3. trains a tiny next-token model with it, checking that the hidden stack's update is
     orthogonalized (every layer's update has singular values near one size) and that the loss
     falls.

Run from the repository root (a few seconds on a CPU):

  PYTHONPATH=. python examples/muon_custom_routing.py --steps=100
"""

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optimizers
from optimizers import routing

VOCAB, WIDTH, LAYERS, SEQ = 32, 64, 3, 64


def init(key):
  k_emb, k_stack, k_out = jax.random.split(key, 3)
  return {
      "tok_table": jax.random.normal(k_emb, (VOCAB, WIDTH)),
      "stack": {"kernel": jax.random.normal(k_stack, (LAYERS, WIDTH, WIDTH)) / np.sqrt(WIDTH),
                "bias": jnp.zeros((LAYERS, WIDTH))},
      "readout": {"kernel": jax.random.normal(k_out, (WIDTH, VOCAB)) / WIDTH},
  }


def loss_fn(params, tokens_T):
  h_TxD = params["tok_table"][tokens_T[:-1]]
  for i in range(LAYERS):
    h_TxD = h_TxD + jnp.tanh(h_TxD @ params["stack"]["kernel"][i] + params["stack"]["bias"][i])
  logits_TxV = h_TxD @ params["readout"]["kernel"]
  return optax.softmax_cross_entropy_with_integer_labels(logits_TxV, tokens_T[1:]).mean()


def labels(path, leaf):
  """AdamW for the embedding, the head and the (stacked) biases; Muon for the hidden stack."""
  name = routing.path_str(path)
  if leaf.ndim < 2 or name.endswith("bias") or name.startswith(("tok_table", "readout")):
    return "adam"
  return "muon"


def dimension_numbers(path, leaf):
  """The stacked (layers, fan_in, fan_out) kernel: a batch of matrices along axis 0."""
  if leaf.ndim == 3:
    return optax.contrib.MuonDimensionNumbers(reduction_axis=1, output_axis=2)
  return None  # 2-D Muon leaves: (fan_in, fan_out), the default


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=100)
  args = parser.parse_args()

  params = init(jax.random.key(0))
  # A sequence with structure to learn: each token is the previous one times 5 plus 1, mod VOCAB.
  seq = [3]
  for _ in range(SEQ - 1):
    seq.append((5 * seq[-1] + 1) % VOCAB)
  tokens_T = jnp.asarray(seq)

  # 1. The default rule, and what Muon says about the stacked kernel.
  default = routing.label_fn()
  try:
    default(params)
    print("default routing accepted the stacked kernel (unexpected)")
    sys.exit(1)
  except ValueError as e:
    print(f"default routing: ValueError: {str(e).splitlines()[0]}")
  # The default rule alone (what each leaf would get, before the dimension-number check).
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    print(f"  default  {routing.path_str(path):16s} {str(leaf.shape):14s} "
          f"{routing.default_label(path, leaf)}")

  # 2. The custom routing.
  routed = routing.label_fn(labels, dimension_numbers)(params)
  for path, label in jax.tree_util.tree_flatten_with_path(routed)[0]:
    print(f"  custom   {routing.path_str(path):16s} {label}")
  assert routed == {"tok_table": "adam", "stack": {"kernel": "muon", "bias": "adam"},
                    "readout": {"kernel": "adam"}}, routed

  tx = optimizers.create("muon", learning_rate=0.02, adam_learning_rate=1e-2, labels=labels,
                         dimension_numbers=dimension_numbers)
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    loss, grads = jax.value_and_grad(loss_fn)(params, tokens_T)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss, updates

  # 3. Train; the first update of each stacked layer is an orthogonalized matrix.
  first_loss = None
  for t in range(args.steps):
    params, state, loss, updates = step(params, state)
    if t == 0:
      first_loss = float(loss)
      for i, u in enumerate(updates["stack"]["kernel"]):
        # Newton-Schulz maps every non-zero singular value of the momentum into about
        # [0.7, 1.2] (times lr): the update's spectrum is flat where the gradient's is not.
        # (This gradient has rank <= 32: the sequence has at most VOCAB distinct tokens.)
        s = np.linalg.svd(np.asarray(u), compute_uv=False)
        s = s[s > 1e-2 * s.max()]
        print(f"  step 0, stack layer {i}: {s.size} non-zero singular values of the update, "
              f"in [{s.min():.4f}, {s.max():.4f}]")
        if not (s.size >= 8 and s.min() / s.max() > 0.5):
          print("FAILED: the stacked kernel's update is not orthogonalized per layer")
          sys.exit(1)
    if t % max(1, args.steps // 5) == 0:
      print(f"step {t:4d}  loss {float(loss):.4f}")
  final = float(loss_fn(params, tokens_T))
  print(f"loss {first_loss:.4f} -> {final:.4f}")
  if not final < first_loss / 4:
    print("FAILED: the loss did not fall fourfold")
    sys.exit(1)
  print("OK: custom routing trained, hidden stack orthogonalized per layer")


if __name__ == "__main__":
  main()
