"""SimMIM's model: the ViT encoder over all (or all non-thrown) tokens, [MASK] embeddings on the
masked ones, and one linear layer from each token to its patch's pixels (simmim.md)."""

import flax.linen as nn
import jax.numpy as jnp

from mim_jax.models.mae import ViTEncoder
from mim_jax.models.vit import torch_default_init


class SimMIMModel(nn.Module):
  """``__call__(patches [B, L, p*p*C], mask [B, L], ids_keep [B, K] or None)`` -> predicted
  pixels [B, K or L, p*p*C] of the encoded patches (in ``ids_keep`` order).

  The head is SimMIM's 1x1 convolution + pixel shuffle written as a Dense per token, with
  PyTorch's default initialization (U(+-1/sqrt(width)) for weights and bias) as in the official
  model, where the encoder's init does not reach it. Its outputs use this project's patch layout
  (row, column, channel), which differs from a pixel shuffle's channel order by a fixed
  permutation of the head's output units.
  """
  encoder: ViTEncoder
  patch_dim: int

  @nn.compact
  def __call__(self, patches, mask, ids_keep=None, deterministic: bool = True):
    tokens = self.encoder(patches, ids_keep, deterministic, mask=mask)
    init = torch_default_init(tokens.shape[-1])
    pred = nn.Dense(self.patch_dim, kernel_init=init, bias_init=init, dtype=self.encoder.dtype,
                    name="head")(tokens[:, 1:])
    return pred.astype(jnp.float32)
