"""Encoders by name, for every method and evaluation protocol that needs one.

``config.model.encoder`` picks the family: ``vit`` (plain ViT: MAE, SimMIM, ...),
``hierarchical`` (MixMIM's Swin-style encoder without shifted windows) or, for the evaluation
protocols only, ``pixels``: no encoder, the image itself as the feature (the raw-pixel baseline
that a linear probe or kNN of any encoder is read against). ``build`` returns an
``EncoderSpec``: the Flax module plus what the evaluators and the optimizer need to know about it
(how to pool it, its layer ids for layer-wise lr decay, which parameters exist only in
pre-training or only in fine-tuning).

The parameters of an encoder live under ``params["encoder"]`` in every method, so a fine-tune,
linear-probe or kNN run can take them from any pre-training checkpoint
(``mim_jax.interop.pretrained``).
"""

import dataclasses
import re
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from mim_jax.models import hierarchical
from mim_jax.models.patches import patchify
from mim_jax.models.vit import ATTENTION_IMPLS, BlockOptions, parse_variant
from mim_jax.models.vit_encoder import ViTEncoder


def encoder_config() -> dict:
  """The ``config.model`` keys that describe the encoder (shared by every method)."""
  return dict(
      encoder="vit",        # vit | hierarchical | pixels (evaluation protocols: no encoder)
      variant="B/16",       # vit: SIZE/PATCH (tiny_test, Ti, S, B, L, H); hierarchical: SIZE
      width=0, depth=0, heads=0, mlp_ratio=4.0,    # vit: > 0 overrides the size's value
      # vit block / embedding options (MAE's defaults; SimMIM's ViT-B: none, shared, 0.1, qv, beit)
      pos_embed="sincos",   # sincos (fixed) | learned (trunc-normal parameter) | none
      rel_pos="none",       # none | shared (one table for all blocks) | per_block
      layer_scale=0.0,      # > 0: per-channel branch gains starting at this value
      qkv_bias="qkv",       # qkv | qv (q and v biases only) | none
      init="mae",           # mae (xavier uniform) | beit (trunc-normal 0.02, 1/sqrt(2i) rescale)
      stage_depths=(), stage_heads=(), window_sizes=(), patch_size=0,  # hierarchical overrides
      # vit memory options (mim_jax/models/vit.py Transformer): encoder and MAE decoder
      remat="none",         # none | block (recompute each block backward) | dots (keep matmuls)
      scan_blocks=False,    # nn.scan over the blocks (parameters stacked under 'blocks')
      # attention kernel of the ViT encoder and the decoders: auto (cuDNN's fused kernel on a
      # GPU in bfloat16 / float16 where no bias is added, else xla) | xla | cudnn
      attention="auto",
  )


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
  module: nn.Module
  family: str
  width: int                    # feature width after pooling
  patch_size: int               # 0 when the module takes images (hierarchical)
  num_layers: int               # for layer-wise lr decay
  layer_id: Callable[[tuple], int]
  top_layer_id: int             # layer id of what sits on the encoder (head, fc_norm)
  pools: tuple                  # pooling modes it supports
  pretrain_only: tuple = ()     # regexes: checkpoint parameters a fine-tune model leaves out
  finetune_new: tuple = ()      # regexes: parameters a fine-tune model adds (kept from init)
  copied_from: tuple = ()       # (regex, name): a parameter the fine-tune model adds, copied
                                # from the checkpoint's parameter ``name`` when that exists

  def inputs(self, images):
    """What the module takes: flattened patches (ViT) or the images, in the compute dtype."""
    x = patchify(images, self.patch_size) if self.patch_size else images
    return x.astype(self.module.dtype)

  def init(self, rng, images):
    """The encoder's parameters, for images like ``images`` [B, H, W, C] ({} for pixels)."""
    return self.module.init(rng, self.inputs(images)).get("params", {})

  def apply(self, params, images, deterministic=True, rngs=None):
    """Tokens of whole images: [B, T, width] (ViT: [CLS] first)."""
    return self.module.apply({"params": params}, self.inputs(images),
                             deterministic=deterministic, rngs=rngs)

  def cls_attention(self, params, images):
    """The last block's softmax attention of [CLS] over all tokens of whole images
    [B, heads, 1 + L] (AMT's attention maps; ViT only)."""
    if self.family != "vit":
      raise ValueError(f"[CLS] attention maps need a ViT encoder, not {self.family!r}")
    _, state = self.module.apply({"params": params}, self.inputs(images),
                                 mutable=["intermediates"])
    blocks = state["intermediates"]["transformer"]
    if "blocks" in blocks:  # scanned: [depth, B, heads, T], the last block's at -1
      return blocks["blocks"]["attn"]["cls_attention"][0][-1]
    return blocks[f"block_{self.num_layers - 1}"]["attn"]["cls_attention"][0]

  def pool(self, tokens, pool: str):
    """[B, T, D] -> [B, D]: the [CLS] token (ViT) or the mean of the patch tokens."""
    if pool not in self.pools:
      raise ValueError(f"pool {pool!r} is not available for the {self.family} encoder "
                       f"(choose from {self.pools})")
    if pool == "cls":
      return tokens[:, 0]
    return tokens[:, 1:].mean(axis=1) if self.family == "vit" else tokens.mean(axis=1)


def _vit_layer_id(depth):
  """Layer id of an encoder parameter path: 0 for the embeddings, i + 1 for block i (scanned
  blocks: the ids [1..depth] along their leading axis), depth + 1 above."""
  def layer_id(path):
    if path[0] in ("cls_token", "pos_embed", "patch_embed"):
      return 0
    if path[0] == "transformer" and path[1].startswith("block_"):
      return int(path[1].split("_")[1]) + 1
    if path[0] == "transformer" and path[1] == "blocks":
      return np.arange(1, depth + 1)
    return depth + 1
  return layer_id


class Pixels(nn.Module):
  """No encoder: each image, flattened, is its one token ([B, 1, H * W * C])."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, deterministic: bool = True):
    del deterministic
    return images.reshape(images.shape[0], 1, -1).astype(self.dtype)


def build(m, image_size: int, *, dtype=jnp.float32, drop_path_rate: float = 0.0,
          learnable_pos: bool = False, final_norm: bool = True,
          pixels: bool = False) -> EncoderSpec:
  """The encoder ``m`` (a ``config.model``) describes, at ``image_size``.

  ``learnable_pos`` / ``final_norm`` / ``drop_path_rate`` are the fine-tuning options (ViT:
  position embedding as a parameter, no final LayerNorm under average pooling + fc_norm).
  ``pixels``: the caller takes ``encoder='pixels'`` (the evaluation protocols; no pre-training
  method has anything to train in it).
  """
  family = m.get("encoder", "vit")
  if family == "pixels":
    if not pixels:
      raise ValueError("model.encoder='pixels' (no encoder: the raw-pixel baseline) is for the "
                       "evaluation protocols (linear_probe, knn, finetune), not for pre-training")
    # width: H * W * channels, known once images arrive (nothing here reads it)
    return EncoderSpec(Pixels(dtype=dtype), "pixels", 0, 0, 0, lambda path: 0, 0, ("avg",))
  if m.get("attention", "auto") not in ATTENTION_IMPLS:
    raise ValueError(f"model.attention must be one of {ATTENTION_IMPLS}, got {m.attention!r}")
  if family == "vit":
    size, patch = parse_variant(m.variant)
    if image_size % patch:
      raise ValueError(f"image_size {image_size} is not divisible by the patch size {patch} "
                       f"of variant {m.variant!r}")
    side = image_size // patch
    width, depth = m.width or size.dim, m.depth or size.depth
    options = BlockOptions(qkv_bias=m.qkv_bias, layer_scale=m.layer_scale, init=m.init,
                           attention=m.attention)
    module = ViTEncoder(width, depth, m.heads or size.heads, (side, side), mlp_ratio=m.mlp_ratio,
                        learnable_pos=learnable_pos, final_norm=final_norm,
                        drop_path_rate=drop_path_rate, pos_embed=m.pos_embed,
                        rel_pos=m.rel_pos, options=options, dtype=dtype, remat=m.remat,
                        scan=m.scan_blocks)
    return EncoderSpec(module, "vit", width, patch, depth, _vit_layer_id(depth), depth + 1,
                       ("cls", "avg"),
                       pretrain_only=(r"^transformer/norm/", r"^mask_token$"),
                       finetune_new=(r"^pos_embed$",),
                       # SimMIM fine-tunes with one bias per block, each a copy of the shared one
                       copied_from=((r"^transformer/block_\d+/attn/rel_pos_bias/table$",
                                     "rel_pos_bias/table"),))
  if family == "hierarchical":
    if m.remat != "none" or m.scan_blocks:
      raise ValueError("model.remat and model.scan_blocks apply to the ViT encoder, not to the "
                       "hierarchical one")
    if m.attention == "cudnn":
      raise ValueError("model.attention='cudnn': the hierarchical encoder's windows add a "
                       "masking bias, which needs the xla kernel (use 'auto': its decoder "
                       "still takes the fused kernel)")
    size = hierarchical.parse_hier_variant(m.variant)
    depths = tuple(m.stage_depths) or size.depths
    heads = tuple(m.stage_heads) or size.heads
    windows = tuple(m.window_sizes) or size.window_sizes
    embed = m.width or size.embed_dim
    if not len(depths) == len(heads) == len(windows):
      raise ValueError(f"hierarchical encoder: stage_depths {depths}, stage_heads {heads} and "
                       f"window_sizes {windows} must have one entry per stage")
    module = hierarchical.HierarchicalEncoder(
        embed, depths, heads, windows, image_size, patch_size=m.patch_size or size.patch_size,
        mlp_ratio=m.mlp_ratio, drop_path_rate=drop_path_rate, dtype=dtype)
    # The official MixMIM rule puts the final norm and the head at num_layers (lr scale decay^1).
    num = hierarchical.num_layers(depths)
    return EncoderSpec(module, "hierarchical", embed * 2 ** (len(depths) - 1), 0, num,
                       lambda path: hierarchical.layer_id(path, depths), num, ("avg",),
                       pretrain_only=(r"mask_token",))
  raise ValueError(f"model.encoder must be 'vit', 'hierarchical' or (evaluation protocols) "
                   f"'pixels', got {family!r}")


def matches(name: str, patterns) -> bool:
  return any(re.search(p, name) for p in patterns)

