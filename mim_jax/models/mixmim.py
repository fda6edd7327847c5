"""MixMIM's model (mixmim.md): an encoder over mixed images and the dual-reconstruction decoder.

The decoder sees the encoder's last-stage tokens z [B, N, D] (N = cells of the mask grid: 7x7 at
224 px for the hierarchical encoder, the 14x14 patches for the plain-ViT variant) and the mask m
[B, N] (1 = the cell shows the partner image). It embeds z to its width, makes two copies --
copy 1 keeps z where m = 0 and puts [MASK] where m = 1, copy 2 the opposite -- stacks them along
the batch [2B, N, width], adds a fixed sin-cos table and runs plain ViT blocks (no masked
attention), a LayerNorm and a linear map to the pixels of each cell. ``mixing.unmix`` turns the
two copies into one prediction per image.

Init: xavier-uniform Dense layers with zero biases, [MASK] N(0, 0.02). The blocks are the
project's ViT blocks (LayerNorm eps 1e-6; the official decoder uses 1e-5).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mim_jax.models.posembed import sincos_2d
from mim_jax.models.vit import BlockOptions, Transformer, xavier_uniform
from mim_jax.models.vit_encoder import ViTEncoder, token_init


class MixMIMDecoder(nn.Module):
  """``__call__(latent [B, N, D], mask [B, N])`` -> [2B, N, cell_dim] (copy 1, then copy 2)."""
  width: int
  depth: int
  heads: int
  grid: tuple       # (rows, cols) of the N cells
  cell_dim: int     # pixels per cell: stride * stride * channels
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32
  attention: str = "auto"         # vit.BlockOptions.attention

  @nn.compact
  def __call__(self, latent, mask):
    x = nn.Dense(self.width, kernel_init=xavier_uniform, dtype=self.dtype, name="embed")(latent)
    token = self.param("mask_token", token_init, (1, 1, self.width)).astype(x.dtype)
    m = mask[:, :, None].astype(x.dtype)
    x = jnp.concatenate([x * (1 - m) + token * m, x * m + token * (1 - m)], axis=0)
    x = x + jnp.asarray(sincos_2d(self.width, *self.grid), x.dtype)[None]
    x = Transformer(self.depth, self.heads, self.mlp_ratio, dtype=self.dtype,
                    options=BlockOptions(attention=self.attention), name="transformer")(x)
    return nn.Dense(self.cell_dim, kernel_init=xavier_uniform, dtype=self.dtype, name="pred")(x)


class MixMIMModel(nn.Module):
  """Encoder + decoder. ``__call__(inputs, token_mask, cell_mask, groups)`` -> [2B, N, cell_dim]
  float32 predictions of both decoder copies.

  inputs: images [B, H, W, C] (hierarchical encoder) or patches [B, L, p*p*C] (plain ViT);
  token_mask [B, N0]: the mask on the encoder's first token grid; cell_mask [B, N]: the same mask
  on the last grid. Mixing happens inside the encoder, right after the patch embedding.
  """
  encoder: nn.Module
  decoder: MixMIMDecoder

  def __call__(self, inputs, token_mask, cell_mask, groups: int = 1, deterministic: bool = True):
    if isinstance(self.encoder, ViTEncoder):
      latent = self.encoder(inputs, deterministic=deterministic, mix_mask=token_mask,
                            groups=groups)[:, 1:]
    else:
      latent = self.encoder(inputs, token_mask, deterministic, mix=True, groups=groups)
    return self.decoder(latent, cell_mask).astype(jnp.float32)
