"""MixMIM's hierarchical encoder: Swin-style stages without shifted windows (Flax Linen).

Layout at 224 px for MixMIM-B (patch 4): 56^2, 28^2, 14^2, 7^2 tokens with widths C, 2C, 4C, 8C.

- Patch embedding: a 4x4 stride-4 map of each patch (a Dense on flattened patches, same as the
  convolution), LayerNorm, then a fixed 2-D sin-cos position table (a constant, not a parameter).
- Pre-norm blocks: LN -> window multi-head self-attention with a Swin relative position bias ->
  residual, LN -> MLP (GELU, ratio 4) -> residual. Windows never shift; a window larger than its
  stage is clamped to the stage (one global window).
- Patch merging after every stage but the last: 2x2 neighbours concatenated (see ``merge_groups``),
  LayerNorm(4C), Dense(4C -> 2C, no bias). A final LayerNorm closes the encoder.
- Optional MixMIM mask: tokens only attend to tokens with the same mask value (see ``__call__``).

Init as in the official code: xavier-uniform Dense weights with zero biases, LayerNorm 1/0, bias
tables trunc-normal std 0.02, the patch embedding with PyTorch's default convolution init.
LayerNorm eps 1e-5. ``dtype`` is the compute dtype; parameters stay float32; attention logits,
the bias and the mask are float32.

Each block's ``relative_position_bias_table`` [(2w - 1)^2, heads] depends on its window w, and w
on the image size (a window is clamped to its stage). Weights pre-trained with other windows
(SimMIM's Swin recipe: 192 px with windows 6, fine-tuning at 224 with 7) load with every table
resampled bicubically over its (2w - 1) x (2w - 1) offsets (``mim_jax.interop.pretrained``,
``vit.resize_offset_table``); the sin-cos position table is not a parameter and is rebuilt.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mim_jax.masking import mixing
from mim_jax.models.posembed import sincos_2d
from mim_jax.models.vit import (DropPath, Mlp, isolation_bias, torch_default_init, trunc_normal,
                                xavier_uniform)

LN_EPS = 1e-5
# timm's trunc_normal_(std=.02) cuts at +-2 in absolute units, i.e. at +-100 std: in effect a plain
# normal with std 0.02 (jax's bounds are in units of std).
bias_table_init = nn.initializers.truncated_normal(stddev=0.02, lower=-100.0, upper=100.0)


@dataclasses.dataclass(frozen=True)
class HierSize:
  embed_dim: int
  depths: tuple
  heads: tuple
  window_sizes: tuple  # per stage; clamped to the stage resolution
  patch_size: int = 4


# "tiny_test" is for unit tests; at 64 px it has B's window layout at 224 px (16 / 4 / 1 / 1
# windows per stage). "digits" (our choice) fits the 16 px digits demo: 2 px patches and two
# stages (8^2 tokens 64 wide in 8x8 windows, then 4^2 tokens 128 wide, global), so the last
# stage has the 4x4 grid of the ViT demo's 4 px patches. "mnist28" (our choice) is the same
# encoder for 28 px images (Fashion-MNIST, MNIST): 2 px patches, 14^2 tokens 64 wide in four 7x7
# windows, then 7^2 tokens 128 wide in one 7x7 window (global), so the last stage has the 7x7
# grid of a ViT's 4 px patches at 28 px. "cifar32" (our choice) is the league's for 32 px images
# (CIFAR): 1 px patches, 32^2 tokens 96 wide in sixteen 8x8 windows, then 16^2 tokens 192 wide
# in one 16x16 window (global): 12 blocks, the last ten on the 16x16 grid of ViT-Ti/2 (whose
# width it shares), 4.8 M parameters to ViT-Ti/2's 5.3 M.
HIER_SIZES = {
    "tiny_test": HierSize(16, (1, 1, 1, 1), (1, 2, 2, 4), (4, 4, 4, 2)),
    "digits": HierSize(64, (2, 3), (2, 4), (8, 4), patch_size=2),
    "mnist28": HierSize(64, (2, 3), (2, 4), (7, 7), patch_size=2),
    "cifar32": HierSize(96, (2, 10), (3, 6), (8, 16), patch_size=1),
    "B": HierSize(128, (2, 2, 18, 2), (4, 8, 16, 32), (14, 14, 14, 7)),
    "L": HierSize(192, (2, 2, 18, 2), (6, 12, 24, 48), (14, 14, 14, 7)),
    "H": HierSize(352, (2, 2, 18, 2), (11, 22, 44, 88), (14, 14, 14, 7)),
}


def parse_hier_variant(variant: str) -> HierSize:
  """'B' -> HIER_SIZES['B']."""
  try:
    return HIER_SIZES[variant]
  except (KeyError, TypeError):
    raise ValueError(f"unknown hierarchical variant {variant!r}; expected one of "
                     f"{sorted(HIER_SIZES)}") from None


# ----------------------------------------------------------------------------- pure helpers


def window_partition(x, w: int):
  """[B, H, W, C] -> [B * (H/w) * (W/w), w, w, C]; windows batch-major, then row-major.

  Works on NumPy and JAX arrays alike.
  """
  b, h, wd, c = x.shape
  x = x.reshape(b, h // w, w, wd // w, w, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, w, w, c)


def window_reverse(windows, w: int, h: int, wd: int):
  """Inverse of ``window_partition``: [B * (H/w) * (W/w), w, w, C] -> [B, H, W, C]."""
  c = windows.shape[-1]
  x = windows.reshape(-1, h // w, wd // w, w, w, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, h, wd, c)


def relative_position_index(w: int) -> np.ndarray:
  """[w*w, w*w] int index into a (2w-1)^2 bias table, tokens row-major inside the window.

  Entry (i, j) encodes the offset of token i from token j: (dr + w - 1) * (2w - 1) + dc + w - 1.
  """
  rows, cols = np.meshgrid(np.arange(w), np.arange(w), indexing="ij")
  rows, cols = rows.reshape(-1), cols.reshape(-1)
  dr = rows[:, None] - rows[None, :] + w - 1
  dc = cols[:, None] - cols[None, :] + w - 1
  return (dr * (2 * w - 1) + dc).astype(np.int32)


def merge_groups(x):
  """[B, H, W, C] -> [B, H/2, W/2, 4C]: (row, col) offsets (0,0), (1,0), (0,1), (1,1) in order."""
  return jnp.concatenate(
      [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)


def stage_windows(image_size: int, patch_size: int, window_sizes) -> list:
  """(resolution, clamped window) of every stage; ValueError when they do not fit."""
  num_stages = len(window_sizes)
  stride = patch_size * 2 ** (num_stages - 1)
  if image_size % stride:
    raise ValueError(f"image_size {image_size} must be divisible by patch_size * "
                     f"2**(stages - 1) = {stride}")
  out = []
  for i, w in enumerate(window_sizes):
    res = image_size // patch_size // 2 ** i
    w = min(int(w), res)  # a window at least as large as the stage is one global window
    if res % w:
      raise ValueError(f"stage {i}: resolution {res} is not divisible by window size {w}")
    out.append((res, w))
  return out


def num_layers(depths) -> int:
  """Number of blocks; layer ids run 0 .. num_layers (see ``layer_id``)."""
  return int(sum(depths))


def layer_id(path, depths) -> int:
  """Layer id of an encoder parameter for layer-wise lr decay (MixMIM's fine-tuning rule).

  ``path``: the parameter's keys inside the encoder's params, e.g.
  ("stage_2", "block_5", "attn", "qkv", "kernel"). The rule of the official code
  (Sense-X/MixMIM, util/lr_decay.py, get_layer_id_for_mixmim): the patch embedding (with its norm)
  and position tables get 0; block j of stage i gets sum(depths[:i]) + j + 1; the merging layer
  after stage i shares the id of the next stage's first block, sum(depths[:i + 1]) + 1; anything
  else (final norm, a classifier head) gets num_layers(depths) -- the same id as the very last
  block. The lr scale is decay ** (num_layers + 1 - layer_id), so even the head gets decay ** 1.
  """
  depths = tuple(int(d) for d in depths)
  top = path[0]
  if top in ("patch_embed", "patch_norm", "pos_embed", "absolute_pos_embed"):
    return 0
  if top.startswith("stage_"):
    i = int(top[len("stage_"):])
    if not 0 <= i < len(depths):
      raise ValueError(f"{path}: stage {i} does not exist for depths {depths}")
    if path[1] == "merge":
      return sum(depths[:i + 1]) + 1
    if path[1].startswith("block_"):
      j = int(path[1][len("block_"):])
      if not 0 <= j < depths[i]:
        raise ValueError(f"{path}: block {j} does not exist in stage {i} (depth {depths[i]})")
      return sum(depths[:i]) + j + 1
    raise ValueError(f"unexpected parameter path {path}")
  return num_layers(depths)


# ----------------------------------------------------------------------------- modules


class WindowAttention(nn.Module):
  """Multi-head self-attention inside w x w windows with a relative position bias.

  x: [nWB, w*w, C]; mask: optional [nWB, w*w] float per token, logits between tokens with
  different values get ``vit.MASK_LOGIT`` (in float32).
  """
  num_heads: int
  window: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    n, t, c = x.shape
    if c % self.num_heads:
      raise ValueError(f"width {c} is not divisible by {self.num_heads} heads")
    hd = c // self.num_heads
    qkv = nn.Dense(3 * c, kernel_init=xavier_uniform, dtype=self.dtype, name="qkv")(x)
    qkv = qkv.reshape(n, t, 3, self.num_heads, hd)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    q = q * jnp.asarray(hd ** -0.5, q.dtype)
    logits = jnp.einsum("nqhd,nkhd->nhqk", q, k, preferred_element_type=jnp.float32)
    table = self.param("relative_position_bias_table", bias_table_init,
                       ((2 * self.window - 1) ** 2, self.num_heads))
    bias = table[relative_position_index(self.window)]          # [t, t, heads]
    logits = logits + bias.transpose(2, 0, 1)[None].astype(jnp.float32)
    if mask is not None:
      logits = logits + isolation_bias(mask)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("nhqk,nkhd->nqhd", probs, v).reshape(n, t, c)
    return nn.Dense(c, kernel_init=xavier_uniform, dtype=self.dtype, name="proj")(out)


class HierBlock(nn.Module):
  """Pre-norm window-attention block on a [B, H, W, C] grid; mask: optional [B, H, W] float."""
  num_heads: int
  window: int
  mlp_ratio: float = 4.0
  drop_path: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None, deterministic: bool = True):
    b, h, wd, c = x.shape
    w = self.window
    y = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="norm1")(x)
    y = window_partition(y, w).reshape(-1, w * w, c)
    if mask is not None:
      mask = window_partition(mask[..., None], w).reshape(-1, w * w)
    y = WindowAttention(self.num_heads, w, dtype=self.dtype, name="attn")(y, mask)
    y = window_reverse(y.reshape(-1, w, w, c), w, h, wd)
    drop = DropPath(self.drop_path)
    x = x + drop(y, deterministic)
    y = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="norm2")(x)
    y = Mlp(int(c * self.mlp_ratio), dtype=self.dtype, name="mlp")(y)
    return x + drop(y, deterministic)


class PatchMerging(nn.Module):
  """[B, H, W, C] -> [B, H/2, W/2, 2C]: merge_groups, LayerNorm(4C), Dense(2C, no bias)."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    x = merge_groups(x)
    x = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="norm")(x)
    return nn.Dense(2 * c, use_bias=False, kernel_init=xavier_uniform, dtype=self.dtype,
                    name="reduction")(x)


class HierStage(nn.Module):
  """``depth`` blocks (block_0 ..), then PatchMerging ("merge") unless it is the last stage."""
  depth: int
  num_heads: int
  window: int
  mlp_ratio: float = 4.0
  drop_path: tuple = ()  # one rate per block
  merge: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None, deterministic: bool = True):
    for j in range(self.depth):
      rate = self.drop_path[j] if self.drop_path else 0.0
      x = HierBlock(self.num_heads, self.window, self.mlp_ratio, rate, dtype=self.dtype,
                    name=f"block_{j}")(x, mask, deterministic)
    if self.merge:
      x = PatchMerging(dtype=self.dtype, name="merge")(x)
    return x


class HierarchicalEncoder(nn.Module):
  """MixMIM's encoder; see the module docstring. Stages: len(depths)."""
  embed_dim: int
  depths: tuple
  heads: tuple
  window_sizes: tuple  # per stage; clamped to the stage resolution
  image_size: int      # square images
  patch_size: int = 4
  mlp_ratio: float = 4.0
  drop_path_rate: float = 0.0  # linearly increasing over all blocks; needs the 'drop_path' RNG
  dtype: Any = jnp.float32

  @property
  def stride(self) -> int:
    """Pixels per side of a last-stage token: patch_size * 2 ** (stages - 1) (32 for B)."""
    return self.patch_size * 2 ** (len(self.depths) - 1)

  @nn.compact
  def __call__(self, images, mask=None, deterministic: bool = True, mix: bool = False,
               groups: int = 1, token_mask=None):
    """images [B, H, W, C] -> tokens [B, L_last, C_last] after the final LayerNorm.

    mask: optional [B or 1, N0] 0/1 per stage-0 token (N0 = (H/p) * (W/p), row-major). When
    given, every block adds MASK_LOGIT (float32) to the attention logits between tokens i, j with
    m_i != m_j, after the relative position bias and before the softmax. Later stages use the
    mask's top-left value of each 2x2 merging group (all four agree when mask cells are as
    large as a last-stage token).
    mix: MixMIM's mixing (needs ``mask``): after the patch embedding (and its norm) the tokens
    become x * (1 - m) + partner(x) * m, the partner being the batch reversed inside each of
    ``groups`` equal groups (``mixing.partners``); the positions are added after.
    token_mask: optional [B or 1, N0] 0/1 per stage-0 token (1 = masked; SimMIM on this
    encoder). The embeddings of masked tokens (after ``patch_norm``) become a learned
    ``mask_token`` [1, 1, embed_dim] (trunc-normal std 0.02): x * (1 - w) + mask_token * w,
    before any mixing and before the sin-cos positions are added, so nothing downstream sees
    the pixels of a masked token. The parameter exists only in models called with a token_mask.
    """
    if not len(self.depths) == len(self.heads) == len(self.window_sizes):
      raise ValueError(f"depths {self.depths}, heads {self.heads} and window_sizes "
                       f"{self.window_sizes} must have one entry per stage")
    layout = stage_windows(self.image_size, self.patch_size, self.window_sizes)
    b, h, wd, ch = images.shape
    if h != self.image_size or wd != self.image_size:
      raise ValueError(f"expected {self.image_size}x{self.image_size} images, got {h}x{wd}")
    p = self.patch_size
    g = self.image_size // p
    patches = images.reshape(b, g, p, g, p, ch).transpose(0, 1, 3, 2, 4, 5)
    patches = patches.reshape(b, g, g, p * p * ch)   # (row, col, channel) inside each patch
    fan_in = p * p * ch
    x = nn.Dense(self.embed_dim, kernel_init=torch_default_init(fan_in),
                 bias_init=torch_default_init(fan_in), dtype=self.dtype, name="patch_embed")(patches)
    x = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="patch_norm")(x)
    if token_mask is not None:
      token_mask = jnp.asarray(token_mask)
      if token_mask.ndim != 2 or token_mask.shape[1] != g * g or token_mask.shape[0] not in (1, b):
        raise ValueError(f"token_mask must be [{b} or 1, {g * g}], got {token_mask.shape}")
      token = self.param("mask_token", trunc_normal(0.02), (1, 1, self.embed_dim))
      w = token_mask.astype(x.dtype).reshape(-1, g, g, 1)
      x = x * (1 - w) + token.astype(x.dtype)[None] * w

    if mask is not None:
      mask = jnp.asarray(mask)
      if mask.ndim != 2 or mask.shape[1] != g * g or mask.shape[0] not in (1, b):
        raise ValueError(f"mask must be [{b} or 1, {g * g}], got {mask.shape}")
      mask = jnp.broadcast_to(mask.astype(jnp.float32), (b, g * g)).reshape(b, g, g)
    if mix:
      if mask is None:
        raise ValueError("mix=True needs a mask")
      x = mixing.mix(x, mask, groups)

    pos = sincos_2d(self.embed_dim, g, g).reshape(g, g, self.embed_dim)
    x = x + jnp.asarray(pos, x.dtype)[None]

    rates = np.linspace(0.0, self.drop_path_rate, num_layers(self.depths))
    start = 0
    last = len(self.depths) - 1
    for i, (depth, heads, (_, w)) in enumerate(zip(self.depths, self.heads, layout)):
      x = HierStage(depth, heads, w, self.mlp_ratio,
                    tuple(float(r) for r in rates[start:start + depth]), merge=i < last,
                    dtype=self.dtype, name=f"stage_{i}")(x, mask, deterministic)
      start += depth
      if mask is not None and i < last:
        mask = mask[:, 0::2, 0::2]
    x = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="norm")(x)
    return x.reshape(b, -1, x.shape[-1])
