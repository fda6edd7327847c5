"""MAE's model: the ViT encoder (models/vit_encoder.py) over the visible patches and a light
decoder that fills in the rest."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mim_jax.models.posembed import sincos_2d
from mim_jax.models.vit import BlockOptions, Transformer, xavier_uniform
from mim_jax.models.vit_encoder import ViTEncoder, gather_tokens, token_init


class MAEDecoder(nn.Module):
  """Embeds the encoder tokens, puts [MASK] tokens at the masked positions, predicts patches.

  ``ids_restore`` [B, L] un-shuffles ``[encoded..., filled...]`` into image order. With
  ``ids_decode`` [B, K'] only those positions are decoded (AMT drops the thrown ones after their
  position embedding is added) and the predictions [B, K', p*p*C] follow that order; else
  [B, L, p*p*C] in image order. ``learnable_pos``: the sin-cos table is a parameter
  ``pos_embed`` [1, 1 + L, width] that starts from it (MLO-MAE's official models); else fixed.
  """
  width: int
  depth: int
  heads: int
  grid: tuple
  patch_dim: int  # p * p * C
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32
  remat: str = "none"
  scan: bool = False
  attention: str = "auto"         # vit.BlockOptions.attention
  learnable_pos: bool = False

  @nn.compact
  def __call__(self, latent, ids_restore, ids_decode=None):
    x = nn.Dense(self.width, kernel_init=xavier_uniform, dtype=self.dtype, name="embed")(latent)
    b, num_patches = ids_restore.shape
    kept = x.shape[1] - 1
    mask_token = self.param("mask_token", token_init, (1, 1, self.width))
    fill = jnp.broadcast_to(mask_token.astype(x.dtype), (b, num_patches - kept, self.width))
    tokens = gather_tokens(jnp.concatenate([x[:, 1:], fill], axis=1), ids_restore)
    x = jnp.concatenate([x[:, :1], tokens], axis=1)
    table = sincos_2d(self.width, *self.grid, cls_token=True)[None]
    if self.learnable_pos:
      table = self.param("pos_embed", lambda key, shape: jnp.asarray(table), table.shape)
    x = x + jnp.asarray(table, x.dtype)
    if ids_decode is not None:
      x = jnp.concatenate([x[:, :1], gather_tokens(x[:, 1:], ids_decode)], axis=1)
    x = Transformer(self.depth, self.heads, self.mlp_ratio, dtype=self.dtype, remat=self.remat,
                    scan=self.scan, options=BlockOptions(attention=self.attention),
                    name="transformer")(x)
    x = nn.Dense(self.patch_dim, kernel_init=xavier_uniform, dtype=self.dtype, name="pred")(x)
    return x[:, 1:]


class MAE(nn.Module):
  """Encoder + decoder; ``__call__`` predicts every patch from the kept ones."""
  encoder: ViTEncoder
  decoder: MAEDecoder

  def __call__(self, patches, ids_keep, ids_restore, ids_decode=None, return_latent=False):
    latent = self.encoder(patches, ids_keep)
    pred = self.decoder(latent, ids_restore, ids_decode).astype(jnp.float32)
    return (pred, latent) if return_latent else pred

  def encode(self, patches):
    """All tokens of the un-masked image: [B, 1 + L, width] (after the final norm)."""
    return self.encoder(patches)
