"""The image transforms of ``transforms``, on the devices: uint8 batches in, normalized float32 out.

``data.on_device`` keeps a dataset on the accelerator (``on_device``); its batches are augmented
here, inside jitted functions: RandomResizedCrop + flip drawn with ``jax.random``, the crop and
bicubic resize as two batched matrix products (the resampling matrices of
``transforms.window_weights``, computed in float32 on the device), normalization. The box
sampling is ``transforms.random_resized_crop_boxes`` itself (written for numpy and jax.numpy),
so the crops follow the same rules as the host pipelines'; only the uniform draws differ (keyed
by seed, step and position in the global batch, not numpy's generators).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mim_jax.data import transforms

_UNIFORMS = 2 * transforms.NUM_CROP_ATTEMPTS + 3  # area, log ratio (10 each), position (2), flip


def train_draws(key, n: int) -> dict:
  """Uniform [0, 1) draws of n examples, as ``transforms.draw_train_randomness`` lays them out
  (without the RandAugment / erasing seeds): example j's from ``fold_in(key, j)``."""
  u = jax.vmap(lambda j: jax.random.uniform(jax.random.fold_in(key, j), (_UNIFORMS,)))(
      jnp.arange(n))
  a = transforms.NUM_CROP_ATTEMPTS
  return {"area": u[:, :a], "log_ratio": u[:, a:2 * a], "position": u[:, 2 * a:2 * a + 2],
          "flip": u[:, 2 * a + 2]}


def resample(images, wy, wx):
  """``transforms.apply_weights`` on the devices: uint8 or float images [n, H, W, C], wy
  [n, h, H] (or [h, H]), wx [n, w, W] (or [w, W]) -> float32 [n, h, w, C] in [0, 255]."""
  images = images.astype(jnp.float32)
  hi = jax.lax.Precision.HIGHEST  # no reduced-precision (TF32) matmuls for pixels
  ey = "nhH" if wy.ndim == 3 else "hH"
  ex = "nwW" if wx.ndim == 3 else "wW"
  rows = jnp.einsum(f"{ey},nHWc->nhWc", wy, images, precision=hi)
  out = jnp.einsum(f"{ex},nhWc->nhwc", wx, rows, precision=hi)
  return jnp.clip(out, 0.0, 255.0)


def normalize(images, channels: int, opts: transforms.AugmentOptions):
  """float32 ``(x / 255 - mean) / std`` with the images' channels broadcast to ``channels``
  (a grey split is kept with one channel on the device: ``on_device``)."""
  images = jnp.broadcast_to(images, images.shape[:-1] + (channels,))
  mean = jnp.asarray(opts.mean, jnp.float32).reshape(-1)
  std = jnp.asarray(opts.std, jnp.float32).reshape(-1)
  return images * (1.0 / (255.0 * std)) - mean / std


def train_batch(images, key, image_size: int, channels: int, opts: transforms.AugmentOptions):
  """RandomResizedCrop + flip + normalize of uint8 images [n, H, W, c] (one size).

  Returns (images float32 [n, image_size, image_size, channels], crop_box float32 [n, 4] as
  (y0, x0, y1, x1) fractions of the source image, flipped bool [n]): what a host pipeline's
  training batch carries (``pipeline``), so AMT aligns its maps with the crop the same way."""
  n, height, width = images.shape[:3]
  draws = train_draws(key, n)
  top, left, crop_h, crop_w = transforms.random_resized_crop_boxes(
      draws, height, width, opts.crop_scale, opts.crop_ratio, xp=jnp)
  wy = transforms.compute_window_weights(top, crop_h, height, image_size, xp=jnp)
  wx = transforms.compute_window_weights(left, crop_w, width, image_size, xp=jnp)
  flipped = (draws["flip"] < 0.5) if opts.flip else jnp.zeros((n,), bool)
  wx = jnp.where(flipped[:, None, None], wx[:, ::-1, :], wx)
  out = normalize(resample(images, wy, wx), channels, opts)
  boxes = jnp.stack([top / height, left / width, (top + crop_h) / height,
                     (left + crop_w) / width], axis=-1).astype(jnp.float32)
  return out, boxes, flipped


def eval_matrices(height: int, width: int, image_size: int, opts: transforms.AugmentOptions,
                  whole_image: bool = False):
  """The fixed (wy, wx) of the evaluation transform (resize + center crop, or the whole image
  resized: ``pipeline.eval_iterator``'s ``whole_image``), as numpy float32 matrices."""
  if whole_image:
    return (transforms.bicubic_weights(height, image_size),
            transforms.bicubic_weights(width, image_size))
  return transforms.eval_weights(height, width, image_size, opts.eval_crop_pct)


def eval_batch(images, wy, wx, channels: int, opts: transforms.AugmentOptions):
  """The evaluation transform of uint8 images [n, H, W, c] with ``eval_matrices``' matrices."""
  return normalize(resample(images, jnp.asarray(np.asarray(wy)), jnp.asarray(np.asarray(wx))),
                   channels, opts)
