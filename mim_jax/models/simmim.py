"""SimMIM's models (simmim.md): an encoder over all tokens with [MASK] embeddings on the masked
ones, and one linear layer from each output token to the pixels it covers.

``SimMIMModel``: the ViT encoder, one prediction per patch. ``SimMIMHierModel``: the hierarchical
encoder (models/hierarchical.py), one prediction per last-stage token for the stride x stride
pixel block it covers (SimMIM's Swin head).
"""

import flax.linen as nn
import jax.numpy as jnp

from mim_jax.models.hierarchical import HierarchicalEncoder
from mim_jax.models.vit import torch_default_init
from mim_jax.models.vit_encoder import ViTEncoder


class SimMIMModel(nn.Module):
  """``__call__(patches [B, L, p*p*C], mask [B, L], ids_keep [B, K] or None)`` -> predicted
  pixels [B, K or L, p*p*C] of the encoded patches (in ``ids_keep`` order).

  The head is SimMIM's 1x1 convolution + pixel shuffle written as a Dense per token, with
  PyTorch's default initialization (U(+-1/sqrt(width)) for weights and bias) as in the official
  model, where the encoder's init does not reach it. Its outputs use this project's patch layout
  (row, column, channel), which differs from a pixel shuffle's channel order by a fixed
  permutation of the head's output units. Its parameters are named ``decoder`` (the official
  module's name; a checkpoint with a top-level ``head`` is a classifier to
  ``pretrained.restore_into``).
  """
  encoder: ViTEncoder
  patch_dim: int

  @nn.compact
  def __call__(self, patches, mask, ids_keep=None, deterministic: bool = True):
    tokens = self.encoder(patches, ids_keep, deterministic, mask=mask)
    init = torch_default_init(tokens.shape[-1])
    pred = nn.Dense(self.patch_dim, kernel_init=init, bias_init=init, dtype=self.encoder.dtype,
                    name="decoder")(tokens[:, 1:])
    return pred.astype(jnp.float32)


class SimMIMHierModel(nn.Module):
  """``__call__(images [B, H, W, C], token_mask [B, N0])`` -> predicted pixels
  [B, L_last, s*s*C], s = ``encoder.stride``, one row per last-stage token (row-major).

  ``token_mask`` marks the stage-0 tokens (1 = masked) whose embeddings the encoder replaces by
  its ``mask_token``. The head is SimMIM's Swin head (a 1x1 convolution to s*s*C channels and a
  pixel shuffle by s) written as a Dense per token with PyTorch's default init; each row is laid
  out as this project's patches of size s (row, column, channel: ``patches.patchify(images, s)``),
  a fixed permutation of the pixel shuffle's channel order. ``patch_dim`` = s * s * C.
  The head's parameters are named ``decoder`` (the official module's name): a pre-training
  checkpoint with a top-level ``head`` is taken for a classifier by ``pretrained.restore_into``.
  """
  encoder: HierarchicalEncoder
  patch_dim: int

  @nn.compact
  def __call__(self, images, token_mask, deterministic: bool = True):
    tokens = self.encoder(images, deterministic=deterministic, token_mask=token_mask)
    init = torch_default_init(tokens.shape[-1])
    pred = nn.Dense(self.patch_dim, kernel_init=init, bias_init=init, dtype=self.encoder.dtype,
                    name="decoder")(tokens)
    return pred.astype(jnp.float32)
