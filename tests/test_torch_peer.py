"""The GPT's PyTorch peer (scripts/torch_gpt.py) computes the JAX model's loss and gradients."""

import jax
import numpy as np
import torch

from models import gpt
from scripts import torch_gpt

CFG = gpt.GPTConfig(vocab_size=64, num_layers=2, width=32, num_heads=4, max_seq_len=16)


def test_same_loss_and_gradients_as_the_jax_model():
  params = gpt.init_params(CFG, jax.random.key(0))
  # The projections start at zero, which would hide the attention and MLP: perturb every leaf.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape)
                                     for x, k in zip(leaves, keys)])
  batch = np.array(jax.random.randint(jax.random.key(2), (3, CFG.max_seq_len + 1), 0, 64))
  loss, grads = jax.jit(jax.value_and_grad(lambda p, b: gpt.loss_fn(CFG, p, b)))(params, batch)

  model = torch_gpt.load_jax_params(torch_gpt.GPT(CFG), params)
  torch_loss = model.loss(torch.from_numpy(batch).long())
  torch_loss.backward()
  np.testing.assert_allclose(torch_loss.item(), float(loss), rtol=1e-5)
  np.testing.assert_allclose(model.blocks[1].fc.weight.grad.numpy().T,
                             grads["blocks"][1]["mlp"]["fc"]["kernel"], rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(model.blocks[0].attn.q.weight.grad.numpy().T,
                             grads["blocks"][0]["attn"]["q"]["kernel"], rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(model.embed.weight.grad.numpy(), grads["embed"]["embedding"],
                             rtol=1e-4, atol=1e-6)
