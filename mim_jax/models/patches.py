"""Patchify / unpatchify images: [B, H, W, C] <-> [B, L, p*p*C].

Tokens are in row-major order over the (H/p, W/p) grid; each patch vector is laid out as
(row within patch, column within patch, channel), the order MAE's reconstruction targets use.
"""

import jax.numpy as jnp


def patchify(images, patch_size: int):
  b, h, w, c = images.shape
  p = patch_size
  if h % p or w % p:
    raise ValueError(f"image size {h}x{w} is not divisible by patch size {p}")
  x = images.reshape(b, h // p, p, w // p, p, c)
  x = jnp.transpose(x, (0, 1, 3, 2, 4, 5))
  return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches, patch_size: int, grid_h: int, grid_w: int, channels: int):
  b = patches.shape[0]
  p = patch_size
  x = patches.reshape(b, grid_h, grid_w, p, p, channels)
  x = jnp.transpose(x, (0, 1, 3, 2, 4, 5))
  return x.reshape(b, grid_h * p, grid_w * p, channels)
