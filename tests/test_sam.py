"""SAM and ASAM against float64 NumPy on problems whose gradients are written by hand."""

import functools

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import optimizers
from tests.test_adam_family import LR, Adam, SGD

RHO = 0.1
ETA = 0.01


# Softmax regression: loss = mean cross entropy of softmax(x @ W + b). Small inputs keep the
# predictions unconfident: at p ~ 1 the float32 gradient p - 1 keeps only ~1e-7 absolute
# precision, which Adam's scale-free step turns into a relative error of the update.
_rng = np.random.default_rng(3)
X = 0.3 * _rng.normal(size=(32, 5))
Y = _rng.integers(0, 3, size=32)


def logistic_grad_np(p):
  z = X @ p["W"] + p["b"]
  s = np.exp(z - z.max(axis=1, keepdims=True))
  s /= s.sum(axis=1, keepdims=True)
  d = (s - np.eye(3)[Y]) / len(Y)
  return {"W": X.T @ d, "b": d.sum(axis=0)}


def logistic_loss(p, dtype=jnp.float32):
  logp = jax.nn.log_softmax(jnp.asarray(X, dtype) @ p["W"] + p["b"])
  return -jnp.mean(jnp.take_along_axis(logp, jnp.asarray(Y)[:, None], axis=1))


# A separable quartic on a pytree of every rank: L = sum a p^2 / 2 + p^4 / 4.
QUARTIC_SHAPES = {"scalar": (), "vector": (5,), "matrix": (4, 6), "tensor": (2, 3, 4)}
A = {k: np.abs(_rng.normal(size=s)) + 0.1 for k, s in QUARTIC_SHAPES.items()}


def quartic_grad_np(p):
  return {k: A[k] * p[k] + p[k] ** 3 for k in p}


def quartic_loss(p, dtype=jnp.float32):
  return sum(jnp.sum(jnp.asarray(A[k], dtype) * p[k] ** 2 / 2 + p[k] ** 4 / 4) for k in p)


def sam_gradient_np(grad_np, p, adaptive):
  """Foret et al.'s eq. (2) and (3); ASAM's T = |w| + eta."""
  g = grad_np(p)
  t = {k: np.abs(p[k]) + ETA if adaptive else np.ones_like(p[k]) for k in p}
  norm = np.sqrt(sum(np.sum((t[k] * g[k]) ** 2) for k in p))
  return grad_np({k: p[k] + RHO * t[k] ** 2 * g[k] / norm for k in p})


CASES = [
    ("sgd", dict(momentum=0.9), lambda: SGD(0.9)),
    ("adamw", dict(b2=0.99, weight_decay=0.1), lambda: Adam(b2=0.99, weight_decay=0.1)),
]
PROBLEMS = {"logistic": (logistic_grad_np, logistic_loss,
                         {"W": (5, 3), "b": (3,)}),
            "quartic": (quartic_grad_np, quartic_loss, QUARTIC_SHAPES)}


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("inner,inner_hparams,make_ref", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("problem", list(PROBLEMS))
def test_matches_numpy_reference(problem, inner, inner_hparams, make_ref, adaptive):
  # In float64 (x64 mode; the inner optimizers' states follow the parameters' dtype), so the
  # comparison checks the formula, not float32 rounding: run in float32, the trajectory drifts
  # from the float64 one by rounding that Adam's sign-like step and momentum's zero crossings
  # turn into relative errors of 3e-5 on single elements, at a size that depends on how XLA's
  # CPU dot kernels order their sums (jax 0.12.1's round ~5x coarser than 0.10.2's on small
  # products, both within float32's n·u bound), so no float32 tolerance is both tight and
  # portable. In float64 every step agrees to 4e-12 relative, 6e-14 absolute (measured: the
  # same cancellations, at float64's unit roundoff); the bounds below are 250x above that and
  # four orders of magnitude tighter than the float32 test's were.
  grad_np, loss, shapes = PROBLEMS[problem]
  with jax.enable_x64(True):
    tx = optimizers.create("sam", inner=inner, inner_hparams=inner_hparams, learning_rate=LR,
                           rho=RHO, adaptive=adaptive, eta=ETA)
    rng = np.random.default_rng(0)
    p64 = {k: rng.normal(size=s) for k, s in shapes.items()}
    params = jax.tree.map(jnp.float64, p64)
    refs = {k: make_ref() for k in shapes}
    grad_fn = jax.grad(functools.partial(loss, dtype=jnp.float64))

    @jax.jit
    def step(params, state):
      return tx.update(grad_fn(params), state, params, grad_fn=grad_fn)

    state = tx.init(params)
    for t in range(1, 21):
      updates, state = step(params, state)
      assert all(u.dtype == jnp.float64 for u in jax.tree.leaves(updates))
      g = sam_gradient_np(grad_np, p64, adaptive)
      expected = {k: refs[k].step(g[k], p64[k], t) for k in shapes}
      chex.assert_trees_all_close(updates, expected, rtol=1e-9, atol=1e-12)
      params = optax.apply_updates(params, updates)
      p64 = jax.tree.map(np.add, p64, expected)


def test_from_config_dtypes_abstract_init_and_checkpoint(tmp_path):
  # As the trainer builds it: every key of the optimizer block but `name`, a ConfigDict inside.
  cfg = ml_collections.ConfigDict(dict(
      inner="adamw", inner_hparams=dict(b1=0.9, b2=0.95, weight_decay=0.0), rho=0.05))
  tx = optax.with_extra_args_support(optimizers.create(
      "sam", learning_rate=optax.linear_schedule(0.0, 1e-2, 10), **cfg))
  params = {"scalar": jnp.ones((), jnp.bfloat16), "vector": jnp.ones((5,), jnp.float32),
            "matrix": jnp.ones((4, 6), jnp.bfloat16), "tensor": jnp.ones((2, 3, 4))}
  grad_fn = jax.grad(lambda p: sum(jnp.sum(jnp.sin(x.astype(jnp.float32))) for x in
                                   jax.tree.leaves(p)))
  state = tx.init(params)
  abstract = jax.eval_shape(tx.init, jax.tree.map(
      lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params))
  chex.assert_trees_all_equal_shapes_and_dtypes(abstract, state)
  step = jax.jit(lambda p, s: tx.update(grad_fn(p), s, p, grad_fn=grad_fn))
  for _ in range(3):
    updates, state = step(params, state)
    params = optax.apply_updates(params, updates)
  chex.assert_trees_all_equal_shapes_and_dtypes(updates, params)
  chex.assert_tree_all_finite(updates)
  chex.assert_trees_all_equal_shapes_and_dtypes(state, abstract)

  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "state", state)
  checkpointer.wait_until_finished()
  chex.assert_trees_all_equal(checkpointer.restore(tmp_path / "state", abstract), state)


def test_zero_gradient_is_finite_and_grad_fn_is_required():
  tx = optimizers.create("sam", inner="sgd", learning_rate=0.1)
  params = {"w": jnp.zeros((3,))}
  zero_grad = lambda p: jax.tree.map(jnp.zeros_like, p)
  updates, _ = tx.update(zero_grad(params), tx.init(params), params, grad_fn=zero_grad)
  chex.assert_trees_all_equal(updates, zero_grad(params))
  with pytest.raises(ValueError, match="grad_fn"):
    tx.update(zero_grad(params), tx.init(params), params)
  with pytest.raises(ValueError, match="learning_rate"):
    optimizers.create("sam", inner="sgd", inner_hparams={"learning_rate": 1.0},
                      learning_rate=0.1)


def test_adaptive_needs_params():
  tx = optimizers.create("sam", inner="sgd", learning_rate=0.1, adaptive=True)
  params = {"w": jnp.ones((3,))}
  grad_fn = lambda p: p
  with pytest.raises(ValueError, match="needs params"):
    tx.update(params, tx.init(params), None, grad_fn=grad_fn)


def test_trainer_clip_reaches_the_perturbed_gradient():
  # grad_clip_norm in the trainer must clip the gradient SAM's inner optimizer steps with
  # (taken at the perturbed point through grad_fn), not only the first one.
  from experiments.training import train_state  # pylint: disable=g-import-not-at-top
  clip = 1e-3
  tx = train_state.clip_grad_fn(optax.chain(
      optax.clip_by_global_norm(clip),
      optimizers.create("sam", inner="sgd", learning_rate=1.0, rho=RHO)), clip)
  params = {"W": jnp.zeros((5, 3)), "b": jnp.zeros((3,))}
  grad_fn = jax.grad(logistic_loss)
  updates, _ = tx.update(grad_fn(params), tx.init(params), params, grad_fn=grad_fn)
  # Plain SGD with lr 1: the update is minus the (clipped) perturbed gradient.
  np.testing.assert_allclose(float(optax.tree.norm(updates)), clip, rtol=1e-5)
  g = grad_fn(params)
  perturbed = jax.tree.map(lambda p, x: p + RHO * x / optax.tree.norm(g), params, g)
  want = jax.tree.map(lambda x: -clip * x / optax.tree.norm(grad_fn(perturbed)),
                      grad_fn(perturbed))
  chex.assert_trees_all_close(updates, want, rtol=1e-5, atol=1e-9)
