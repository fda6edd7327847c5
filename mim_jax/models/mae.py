"""MAE: a ViT encoder over the visible patches and a light decoder that fills in the rest."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mim_jax.models.posembed import sincos_2d
from mim_jax.models.vit import PatchEmbed, Transformer, xavier_uniform

token_init = nn.initializers.normal(stddev=0.02)


def _gather_tokens(x, ids):
  """x [B, L, D], ids [B, K] -> [B, K, D]."""
  return jnp.take_along_axis(x, ids[:, :, None], axis=1)


class ViTEncoder(nn.Module):
  """[CLS] + patch tokens with sin-cos positions, pre-norm blocks, final LayerNorm.

  Called on flattened patches [B, L, p*p*C]; with ``ids_keep`` [B, K] only those patches are
  encoded (positions are added before the gather). Returns [B, 1 + K, width].

  Pre-training uses the fixed sin-cos table (a constant). Fine-tuning options:
  ``learnable_pos`` makes it a parameter ``pos_embed`` [1, 1 + L, width] that starts from the
  sin-cos values (zeros at [CLS]); ``final_norm=False`` leaves out the last LayerNorm;
  ``drop_path_rate`` turns on stochastic depth when called with ``deterministic=False``.
  """
  width: int
  depth: int
  heads: int
  grid: tuple  # (rows, cols) of patches
  mlp_ratio: float = 4.0
  learnable_pos: bool = False
  final_norm: bool = True
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, patches, ids_keep=None, deterministic: bool = True):
    x = PatchEmbed(self.width, dtype=self.dtype, name="patch_embed")(patches)
    table = sincos_2d(self.width, *self.grid, cls_token=True)[None]
    if self.learnable_pos:
      table = self.param("pos_embed", lambda key, shape: jnp.asarray(table), table.shape)
    pos = jnp.asarray(table, x.dtype)
    x = x + pos[:, 1:]
    if ids_keep is not None:
      x = _gather_tokens(x, ids_keep)
    cls = self.param("cls_token", token_init, (1, 1, self.width))
    cls = jnp.broadcast_to(cls.astype(x.dtype) + pos[:, :1], (x.shape[0], 1, self.width))
    x = jnp.concatenate([cls, x], axis=1)
    return Transformer(self.depth, self.heads, self.mlp_ratio, self.drop_path_rate,
                       self.final_norm, dtype=self.dtype, name="transformer")(x, deterministic)


class MAEDecoder(nn.Module):
  """Embeds the encoder tokens, puts [MASK] tokens at the masked positions, predicts patches."""
  width: int
  depth: int
  heads: int
  grid: tuple
  patch_dim: int  # p * p * C
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, latent, ids_restore):
    x = nn.Dense(self.width, kernel_init=xavier_uniform, dtype=self.dtype, name="embed")(latent)
    b, num_patches = ids_restore.shape
    kept = x.shape[1] - 1
    mask_token = self.param("mask_token", token_init, (1, 1, self.width))
    fill = jnp.broadcast_to(mask_token.astype(x.dtype), (b, num_patches - kept, self.width))
    tokens = _gather_tokens(jnp.concatenate([x[:, 1:], fill], axis=1), ids_restore)
    x = jnp.concatenate([x[:, :1], tokens], axis=1)
    x = x + jnp.asarray(sincos_2d(self.width, *self.grid, cls_token=True), x.dtype)[None]
    x = Transformer(self.depth, self.heads, self.mlp_ratio, dtype=self.dtype,
                    name="transformer")(x)
    x = nn.Dense(self.patch_dim, kernel_init=xavier_uniform, dtype=self.dtype, name="pred")(x)
    return x[:, 1:]


class MAE(nn.Module):
  """Encoder + decoder; ``__call__`` predicts every patch from the kept ones."""
  encoder: ViTEncoder
  decoder: MAEDecoder

  def __call__(self, patches, ids_keep, ids_restore):
    latent = self.encoder(patches, ids_keep)
    return self.decoder(latent, ids_restore).astype(jnp.float32)

  def encode(self, patches):
    """All tokens of the un-masked image: [B, 1 + L, width] (after the final norm)."""
    return self.encoder(patches)
