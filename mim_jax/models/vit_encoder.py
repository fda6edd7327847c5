"""The ViT encoder every ViT method shares (MAE, SimMIM, MI-MAE, MLO-MAE, MixMIM's plain-ViT
variant, and the evaluation protocols): [CLS] + patch tokens, pre-norm blocks, final LayerNorm,
over all patches or only the visible ones."""

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mim_jax.masking import mixing
from mim_jax.models.posembed import sincos_2d
from mim_jax.models.vit import (BlockOptions, PatchEmbed, RelativePositionBias, Transformer,
                                isolation_bias, trunc_normal)

token_init = nn.initializers.normal(stddev=0.02)


def gather_tokens(x, ids):
  """x [B, L, D], ids [B, K] -> [B, K, D]."""
  return jnp.take_along_axis(x, ids[:, :, None], axis=1)


class ViTEncoder(nn.Module):
  """[CLS] + patch tokens, pre-norm blocks, final LayerNorm: MAE's and SimMIM's encoder.

  Called on flattened patches [B, L, p*p*C]. With ``mask`` [B, L] (1 = masked; SimMIM) the
  embeddings of masked patches are replaced by a learned ``mask_token`` before positions are
  added. With ``ids_keep`` [B, K] only those patches are encoded (positions and any relative
  position bias follow them). Returns [B, 1 + K, width].

  Position embedding (``pos_embed``): 'sincos' (MAE: a fixed table, [CLS] row zero), 'learned'
  (a parameter, trunc-normal 0.02: SimMIM + AMT's absolute embedding) or 'none' (SimMIM's ViT-B).
  Fine-tuning options: ``learnable_pos`` makes the sin-cos table a parameter ``pos_embed``
  [1, 1 + L, width] that starts from it; ``final_norm=False`` leaves out the last LayerNorm;
  ``drop_path_rate`` turns on stochastic depth when called with ``deterministic=False``.
  ``rel_pos``: 'none', 'shared' (one BEiT relative position bias for all blocks: SimMIM's
  pre-training) or 'per_block' (SimMIM's fine-tuning). ``options`` holds the other block options.
  With ``mix_mask`` [B, L] (MixMIM on a plain ViT, our variant) the patch embeddings where it is 1
  come from the partner example (``mixing.mix`` with ``groups``) and every attention logit
  between tokens of different images gets ``vit.MASK_LOGIT``; [CLS] belongs to the example's own
  image (mask value 0).
  With ``return_embeddings=True`` (or through ``embed``) it stops after the position embedding
  and returns the per-patch tokens [B, L, width] that the blocks would start from, before any
  ``ids_keep`` selection and before [CLS] is prepended (MLO-MAE's masking network reads them).
  """
  width: int
  depth: int
  heads: int
  grid: tuple  # (rows, cols) of patches
  mlp_ratio: float = 4.0
  learnable_pos: bool = False
  final_norm: bool = True
  drop_path_rate: float = 0.0
  pos_embed: str = "sincos"
  rel_pos: str = "none"
  options: BlockOptions = BlockOptions()
  dtype: Any = jnp.float32
  remat: str = "none"             # Transformer's memory options
  scan: bool = False

  def _position_table(self):
    shape = (1, 1 + self.grid[0] * self.grid[1], self.width)
    if self.pos_embed == "none":
      return None
    if self.pos_embed == "learned":
      return self.param("pos_embed", trunc_normal(0.02), shape)
    if self.pos_embed != "sincos":
      raise ValueError(f"pos_embed must be 'sincos', 'learned' or 'none', got {self.pos_embed!r}")
    table = sincos_2d(self.width, *self.grid, cls_token=True)[None]
    if self.learnable_pos:
      return self.param("pos_embed", lambda key, shape: jnp.asarray(table), shape)
    return jnp.asarray(table)

  @nn.compact
  def __call__(self, patches, ids_keep=None, deterministic: bool = True, mask=None,
               mix_mask=None, groups: int = 1, return_embeddings: bool = False):
    if self.rel_pos not in ("none", "shared", "per_block"):
      raise ValueError(f"rel_pos must be 'none', 'shared' or 'per_block', got {self.rel_pos!r}")
    x = PatchEmbed(self.width, self.options.init, dtype=self.dtype, name="patch_embed")(patches)
    if mask is not None:
      token = self.param("mask_token", trunc_normal(0.02, bound=0.02), (1, 1, self.width))
      m = mask[:, :, None].astype(x.dtype)
      x = x * (1 - m) + token.astype(x.dtype) * m
    if mix_mask is not None:
      if ids_keep is not None:
        raise ValueError("mixing (mix_mask) encodes every token: ids_keep must be None")
      x = mixing.mix(x, mix_mask, groups)
    table = self._position_table()
    pos = None if table is None else jnp.asarray(table, x.dtype)
    if pos is not None:
      x = x + pos[:, 1:]
    if return_embeddings:
      return x
    if ids_keep is not None:
      x = gather_tokens(x, ids_keep)
    cls_init = token_init if self.options.init == "mae" else trunc_normal(0.02)
    cls = self.param("cls_token", cls_init, (1, 1, self.width)).astype(x.dtype)
    if pos is not None:
      cls = cls + pos[:, :1]
    x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.width)), x], axis=1)
    token_ids = None
    if ids_keep is not None and self.rel_pos != "none":  # [CLS] is token 0, patch i is 1 + i
      token_ids = jnp.concatenate([jnp.zeros_like(ids_keep[:, :1]), ids_keep + 1], axis=1)
    bias = None
    if self.rel_pos == "shared":
      bias = RelativePositionBias(self.grid, self.heads, name="rel_pos_bias")(token_ids)
    if mix_mask is not None:  # [CLS] joins the example's own image (group 0)
      groups_of_tokens = jnp.concatenate([jnp.zeros_like(mix_mask[:, :1]), mix_mask], axis=1)
      isolation = isolation_bias(groups_of_tokens)
      bias = isolation if bias is None else bias + isolation
    options = self.options
    if self.rel_pos == "per_block":
      options = dataclasses.replace(options, rel_pos_grid=tuple(self.grid))
    return Transformer(self.depth, self.heads, self.mlp_ratio, self.drop_path_rate,
                       self.final_norm, options, dtype=self.dtype, remat=self.remat,
                       scan=self.scan, name="transformer")(x, deterministic, bias, token_ids)

  def embed(self, patches):
    """Patch embeddings plus position embeddings [B, L, width] of all patches (no [CLS], no
    masking), differentiable w.r.t. the patch embedding (and a learnable table). Call it as
    ``encoder.apply(variables, patches, method=ViTEncoder.embed)``."""
    return self(patches, return_embeddings=True)
