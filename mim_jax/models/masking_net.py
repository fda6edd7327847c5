"""MLO-MAE's masking network T (mlo_mae.md): per-patch masking probabilities from the encoder's
own patch + position embeddings.

The whole token sequence [B, L, dim] is flattened into one vector per image and passed through a
two-layer MLP: Dense(hidden) -> ReLU -> Dense(L) -> sigmoid. The first layer therefore holds
L * dim * hidden weights (about 100.8 M parameters in all for L = 256, dim = 768, hidden = 512).
Weights and biases use PyTorch's default nn.Linear init, U(-1/sqrt(fan_in), +1/sqrt(fan_in)).
The probabilities decide the deterministic top-k mask (``masking.topk_masking``) and weight the
masked patches' reconstruction errors (``losses.probability_weighted_mse``).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mim_jax.models.vit import torch_default_init


class MaskingNet(nn.Module):
  """[B, L, dim] token embeddings -> float32 probabilities [B, L] in (0, 1).

  ``L`` (the output width) is read from the input's shape. ``dtype`` is the compute dtype of the
  two Dense layers (parameters stay float32); the sigmoid is taken in float32.
  """
  hidden: int = 512
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens):
    b, num_patches, dim = tokens.shape
    x = tokens.reshape(b, num_patches * dim)
    fan_in = num_patches * dim
    x = nn.Dense(self.hidden, kernel_init=torch_default_init(fan_in),
                 bias_init=torch_default_init(fan_in), dtype=self.dtype, name="hidden")(x)
    x = nn.relu(x)
    x = nn.Dense(num_patches, kernel_init=torch_default_init(self.hidden),
                 bias_init=torch_default_init(self.hidden), dtype=self.dtype, name="out")(x)
    return jax.nn.sigmoid(x.astype(jnp.float32))
