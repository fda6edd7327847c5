"""Image transforms in numpy: RandomResizedCrop, flip, eval resize/crop, whole-image resize, normalization.

Training optionally adds timm's RandAugment and random erasing (MAE's
fine-tuning recipe), in timm's order: RandomResizedCrop + flip -> RandAugment
(on the crop rounded to uint8; ``randaugment``) -> normalize -> random erasing
(``random_erasing``). Both are off by default, and then the training transform
is exactly crop + flip + normalize.

Every geometric transform here is "crop a box, then resize it with bicubic
interpolation" (Keys cubic, a = -0.5, antialiased when downscaling by
stretching the kernel, renormalized at the borders: PIL's BICUBIC). Outputs
are float32, clipped to [0, 255], then normalized.

Two implementations of that one resize, which tests keep equal:

* batches of same-sized images (the in-memory digits): bicubic resizing is
  separable, so it is written as resampling matrices ``wy`` [out_h, in_h] and
  ``wx`` [out_w, in_w] applied as ``wy @ image @ wx.T``; the crop box is where
  the weights sit in the matrix and a flip reverses the rows of ``wx``, so a
  whole batch is augmented with two batched matmuls;
* single images of any size (folder, tfds; the ``*_one`` functions): PIL's
  float ("F" mode) resize per channel, which only visits the kernel's taps and
  is much faster than dense matrices for large images.

Randomness is never drawn here from a global state: callers pass uniform draws
(see ``draw_train_randomness``) made by a numpy Generator keyed on the seed and
the position in the stream, so results are reproducible. RandAugment and
random erasing draw from per-example Generators seeded by the example's
``aug_seed`` draw (see ``example_rng``).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from mim_jax.config import ConfigError
from mim_jax.data import random_erasing

NUM_CROP_ATTEMPTS = 10  # as in torchvision's RandomResizedCrop


@dataclasses.dataclass(frozen=True)
class AugmentOptions:
  """The transform settings read from ``config.data``."""

  crop_scale: tuple[float, float] = (0.2, 1.0)
  crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
  flip: bool = True
  eval_crop_pct: float = 0.875
  mean: tuple[float, ...] = (0.485, 0.456, 0.406)
  std: tuple[float, ...] = (0.229, 0.224, 0.225)
  randaugment: str = ""  # timm RandAugment spec, e.g. "rand-m9-mstd0.5-inc1"; "" = off
  random_erase: float = 0.0  # random erasing probability (mode "pixel"); 0 = off
  antialias: bool = True  # downscaling stretches the bicubic kernel (PIL); False: tf only

  @classmethod
  def from_config(cls, data_config) -> AugmentOptions:
    """Reads the fields of a data ConfigDict (missing fields keep the defaults)."""
    kwargs = {}
    for field in dataclasses.fields(cls):
      if field.name in data_config:
        value = data_config[field.name]
        kwargs[field.name] = tuple(value) if isinstance(value, (list, tuple)) else value
    opts = cls(**kwargs)
    opts.validate()
    return opts

  def validate(self) -> None:
    lo, hi = self.crop_scale
    if not 0 < lo <= hi <= 1:
      raise ConfigError(f"data.crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale}")
    lo, hi = self.crop_ratio
    if not 0 < lo <= hi:
      raise ConfigError(f"data.crop_ratio must satisfy 0 < lo <= hi, got {self.crop_ratio}")
    if not 0 < self.eval_crop_pct <= 1:
      raise ConfigError(f"data.eval_crop_pct must be in (0, 1], got {self.eval_crop_pct}")
    if len(self.mean) != len(self.std) and 1 not in (len(self.mean), len(self.std)):
      raise ConfigError(f"data.mean {self.mean} and data.std {self.std} differ in length")
    if not isinstance(self.randaugment, str):
      raise ConfigError(f"data.randaugment must be a string ('' = off), got {self.randaugment!r}")
    if self.randaugment:
      from mim_jax.data import randaugment  # pylint: disable=g-import-not-at-top

      try:
        randaugment.parse_randaugment(self.randaugment)
      except ValueError as e:
        raise ConfigError(f"data.randaugment: {e}") from None
    if (isinstance(self.random_erase, bool) or not isinstance(self.random_erase, (int, float))
            or not 0 <= self.random_erase <= 1):
      raise ConfigError(f"data.random_erase must be a probability in [0, 1], got {self.random_erase!r}")

  def check_channels(self, channels: int) -> None:
    """Raises ValueError unless mean and std have 1 or ``channels`` values."""
    for name in ("mean", "std"):
      values = getattr(self, name)
      if len(values) not in (1, channels):
        raise ConfigError(
            f"data.{name} has {len(values)} values but the dataset has {channels} "
            f"channel(s); give 1 value or {channels}")
    if self.randaugment and channels not in (1, 3):
      raise ConfigError(
          f"data.randaugment works on 1- or 3-channel images; the dataset has {channels}")



# ----------------------------------------------------------------- resampling


def _cubic(x, a: float = -0.5, xp=np):
  """Keys' cubic convolution kernel (support [-2, 2]); ``xp`` is numpy or jax.numpy."""
  x = xp.abs(x)
  near = ((a + 2) * x - (a + 3)) * x * x + 1
  far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return xp.where(x < 1, near, xp.where(x < 2, far, 0.0))


_TABLE_ELEMENTS = 1 << 22  # small images: every window's matrix computed once (<= 16 MB)


def window_weights(start, length, in_size: int, out_size: int) -> np.ndarray:
  """Matrices [n, out_size, in_size] bicubic-resizing windows [start, start + length) to out_size.

  ``start`` and ``length`` are int arrays [n]. Pixels outside a window get
  weight 0, so this crops and resizes in one go. For small images (up to ~40 px) the matrices
  of every window are computed once and looked up: the same values, without the per-batch
  arithmetic (half the in-memory pipeline's time on Fashion-MNIST).
  """
  if in_size * (in_size + 1) * out_size * in_size <= _TABLE_ELEMENTS:
    return _window_table(in_size, out_size)[np.asarray(start), np.asarray(length)]
  return compute_window_weights(start, length, in_size, out_size)


@functools.lru_cache(maxsize=8)
def _window_table(in_size: int, out_size: int) -> np.ndarray:
  """float32 [in_size, in_size + 1, out_size, in_size]: [start, length] is that window's
  matrix (zeros where the window does not fit)."""
  start, length = np.meshgrid(np.arange(in_size), np.arange(in_size + 1), indexing="ij")
  fits = (length >= 1) & (start + length <= in_size)
  table = np.zeros((in_size, in_size + 1, out_size, in_size), np.float32)
  table[fits] = compute_window_weights(start[fits], length[fits], in_size, out_size)
  table.flags.writeable = False
  return table


def compute_window_weights(start, length, in_size: int, out_size: int, xp=np):
  """``window_weights`` computed (numpy: in float64; jax.numpy, ``xp``: in float32)."""
  real = np.float64 if xp is np else xp.float32
  start = xp.asarray(start, real)[:, None, None]
  length = xp.asarray(length, real)[:, None, None]
  scale = length / out_size
  support = xp.maximum(scale, 1.0)  # stretch the kernel when downscaling (antialias)
  centers = start + (xp.arange(out_size)[None, :, None] + 0.5) * scale
  pixels = xp.arange(in_size)[None, None, :]
  weights = _cubic((pixels + 0.5 - centers) / support, xp=xp)
  weights = xp.where((pixels >= start) & (pixels < start + length), weights, 0.0)
  weights = weights / weights.sum(axis=2, keepdims=True)
  return weights.astype(xp.float32)


@functools.lru_cache(maxsize=1024)
def bicubic_weights(in_size: int, out_size: int) -> np.ndarray:
  """Matrix [out_size, in_size] that bicubic-resizes a 1-D signal (antialiased)."""
  if in_size < 1 or out_size < 1:
    raise ValueError(f"cannot resize {in_size} -> {out_size}")
  weights = window_weights([0], [in_size], in_size, out_size)[0]
  weights.flags.writeable = False
  return weights


def apply_weights(images: np.ndarray, wy: np.ndarray, wx: np.ndarray) -> np.ndarray:
  """Resamples images [..., H, W, C] with wy [..., h, H] and wx [..., w, W] -> float32 [..., h, w, C].

  Leading (batch) dimensions broadcast between the three arguments.
  """
  images = np.asarray(images, np.float32)
  h_in, w_in, channels = images.shape[-3:]
  rows = np.matmul(wy, images.reshape(*images.shape[:-3], h_in, w_in * channels))
  rows = rows.reshape(*rows.shape[:-1], w_in, channels)  # [..., h, W, C]
  # [..., h, C, W] @ [..., 1, W, w] -> [..., h, C, w]
  out = np.matmul(np.swapaxes(rows, -1, -2), np.swapaxes(wx, -1, -2)[..., None, :, :])
  return np.clip(np.swapaxes(out, -1, -2), 0.0, 255.0)


def resize_one(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
  """Bicubic resize of one image [H, W, C] to float32 [out_h, out_w, C] with PIL.

  Same result as ``apply_weights`` with ``bicubic_weights`` (up to float
  rounding), but only visits the kernel's taps.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top

  channels = [
      np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c], np.float32))
                 .resize((out_w, out_h), Image.Resampling.BICUBIC))
      for c in range(image.shape[-1])
  ]
  return np.clip(np.stack(channels, axis=-1), 0.0, 255.0)


# ------------------------------------------------------- RandomResizedCrop


def draw_train_randomness(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
  """Draws for n training examples.

  Uniform [0, 1) draws for the crop attempts, crop position and flip, then
  a uint64 ``aug_seed`` per example that seeds its RandAugment and random
  erasing (``example_rng``). The seeds are drawn last, so the other draws
  do not depend on them.
  """
  return {
      "area": rng.random((n, NUM_CROP_ATTEMPTS)),
      "log_ratio": rng.random((n, NUM_CROP_ATTEMPTS)),
      "position": rng.random((n, 2)),
      "flip": rng.random(n),
      "aug_seed": rng.integers(0, 2**64, size=n, dtype=np.uint64),
  }


RANDAUGMENT_STREAM, ERASE_STREAM = 0, 1


def example_rng(aug_seed, stream: int) -> np.random.Generator:
  """The Generator of one example's RandAugment (stream 0) or random erasing (stream 1).

  Separate streams keep which images get erased independent of RandAugment.
  """
  return np.random.default_rng([int(aug_seed), stream])


def random_resized_crop_boxes(draws, heights, widths, scale, ratio, xp=np):
  """torchvision's RandomResizedCrop box sampling, vectorized over examples.

  Tries ``NUM_CROP_ATTEMPTS`` (area fraction, aspect ratio) pairs and keeps the
  first box that fits; if none fits, falls back to the largest centered box
  whose aspect ratio is clamped to ``ratio``.

  Args:
    draws: dict from ``draw_train_randomness`` (n examples), or the same uniform draws made
      with ``jax.random`` (``device_augment``).
    heights, widths: int arrays [n] (or scalars) with the image sizes.
    scale: (min, max) area fraction. ratio: (min, max) width / height.
    xp: numpy (int64 boxes, float64 arithmetic) or jax.numpy (int32, float32: on the devices).

  Returns:
    int arrays top, left, height, width, each [n].
  """
  integer, real = (np.int64, np.float64) if xp is np else (xp.int32, xp.float32)
  n = draws["area"].shape[0]
  heights = xp.broadcast_to(xp.asarray(heights, integer), (n,))
  widths = xp.broadcast_to(xp.asarray(widths, integer), (n,))
  area = (heights * widths).astype(real)[:, None]
  target_area = area * (scale[0] + (scale[1] - scale[0]) * draws["area"])
  log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
  aspect = xp.exp(log_lo + (log_hi - log_lo) * draws["log_ratio"])
  w = xp.round(xp.sqrt(target_area * aspect)).astype(integer)
  h = xp.round(xp.sqrt(target_area / aspect)).astype(integer)
  fits = (w > 0) & (w <= widths[:, None]) & (h > 0) & (h <= heights[:, None])
  first = xp.argmax(fits, axis=1)[:, None]
  found = xp.take_along_axis(fits, first, axis=1)[:, 0]
  crop_h = xp.take_along_axis(h, first, axis=1)[:, 0]
  crop_w = xp.take_along_axis(w, first, axis=1)[:, 0]

  # Fallback: central crop with the aspect ratio clamped into `ratio`.
  in_ratio = widths / heights
  fb_w = xp.where(in_ratio > ratio[1], xp.round(heights * ratio[1]), widths).astype(integer)
  fb_h = xp.where(in_ratio < ratio[0], xp.round(widths / ratio[0]), heights).astype(integer)
  crop_h = xp.where(found, crop_h, xp.maximum(fb_h, 1))
  crop_w = xp.where(found, crop_w, xp.maximum(fb_w, 1))

  top_random = xp.floor(draws["position"][:, 0] * (heights - crop_h + 1)).astype(integer)
  left_random = xp.floor(draws["position"][:, 1] * (widths - crop_w + 1)).astype(integer)
  top = xp.where(found, top_random, (heights - crop_h) // 2)
  left = xp.where(found, left_random, (widths - crop_w) // 2)
  return top, left, crop_h, crop_w


def train_weights(draws, heights, widths, image_size: int, opts: AugmentOptions):
  """Resampling matrices for RandomResizedCrop + optional flip.

  Returns wy [n, image_size, max(H)] and wx [n, image_size, max(W)]; for a
  batch of same-sized images these apply directly to the batch.
  """
  top, left, crop_h, crop_w = random_resized_crop_boxes(
      draws, heights, widths, opts.crop_scale, opts.crop_ratio)
  wy = window_weights(top, crop_h, int(np.max(heights)), image_size)
  wx = window_weights(left, crop_w, int(np.max(widths)), image_size)
  if opts.flip:
    flip = draws["flip"] < 0.5
    wx[flip] = wx[flip, ::-1, :]
  return wy, wx


def train_crop_boxes(draws, heights, widths, opts: AugmentOptions):
  """The crop box and flip of each example's RandomResizedCrop + flip.

  Returns float32 boxes [n, 4] = (y0, x0, y1, x1) as fractions of the source
  image's height and width (divided in float64: a crop that reaches the
  bottom or right edge gives exactly 1.0), and bool ``flipped`` [n].
  """
  top, left, crop_h, crop_w = random_resized_crop_boxes(
      draws, heights, widths, opts.crop_scale, opts.crop_ratio)
  height = np.broadcast_to(np.asarray(heights, np.float64), top.shape)
  width = np.broadcast_to(np.asarray(widths, np.float64), top.shape)
  boxes = np.stack([top / height, left / width, (top + crop_h) / height, (left + crop_w) / width],
                   axis=-1).astype(np.float32)
  flipped = np.asarray(draws["flip"]) < 0.5 if opts.flip else np.zeros(top.shape, bool)
  return boxes, flipped


def train_crop_box_one(draws_one, height: int, width: int, opts: AugmentOptions):
  """``train_crop_boxes`` for one example: float32 box [4] and a bool."""
  boxes, flipped = train_crop_boxes({k: np.asarray(v)[None] for k, v in draws_one.items()},
                                    height, width, opts)
  return boxes[0], bool(flipped[0])


def _randaugment_one(image: np.ndarray, aug_seed, opts: AugmentOptions) -> np.ndarray:
  """RandAugment of one float [0, 255] image [H, W, C] (rounded to uint8 first) -> uint8."""
  from mim_jax.data import randaugment  # pylint: disable=g-import-not-at-top

  pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
  fill = randaugment.fill_from_mean(opts.mean, image.shape[-1])
  return randaugment.randaugment(pixels, opts.randaugment, example_rng(aug_seed, RANDAUGMENT_STREAM),
                                 fill)


def _erase_one(image: np.ndarray, aug_seed, opts: AugmentOptions) -> np.ndarray:
  return random_erasing.random_erase(image, opts.random_erase, example_rng(aug_seed, ERASE_STREAM))


def train_transform(images: np.ndarray, draws, image_size: int, opts: AugmentOptions) -> np.ndarray:
  """RandomResizedCrop + flip (+ RandAugment) + normalize (+ random erasing), uint8 [n, H, W, C].

  The images have the same size. RandAugment and random erasing, when on,
  run per image in a loop (the other steps are batched).
  """
  height, width = images.shape[1:3]
  wy, wx = train_weights(draws, height, width, image_size, opts)
  out = apply_weights(images, wy, wx)
  if opts.randaugment:
    out = np.stack([_randaugment_one(out[i], seed, opts) for i, seed in enumerate(draws["aug_seed"])])
  out = normalize(out, opts.mean, opts.std)
  if opts.random_erase > 0:
    for i, seed in enumerate(draws["aug_seed"]):
      out[i] = _erase_one(out[i], seed, opts)
  return out


def train_transform_one(image: np.ndarray, draws_one, image_size: int, opts: AugmentOptions):
  """``train_transform`` for one uint8 image [H, W, C], given one example's draws.

  Crops, then resizes with ``resize_one`` (fast for large images of any size);
  then the optional RandAugment, normalization, optional random erasing.
  """
  draws = {k: np.asarray(v)[None] for k, v in draws_one.items()}
  height, width = image.shape[:2]
  (top,), (left,), (crop_h,), (crop_w,) = random_resized_crop_boxes(
      draws, height, width, opts.crop_scale, opts.crop_ratio)
  out = resize_one(image[top:top + crop_h, left:left + crop_w], image_size, image_size)
  if opts.flip and draws["flip"][0] < 0.5:
    out = out[:, ::-1]
  if opts.randaugment:
    out = _randaugment_one(out, draws["aug_seed"][0], opts)
  out = normalize(out, opts.mean, opts.std)
  if opts.random_erase > 0:
    out = _erase_one(out, draws["aug_seed"][0], opts)
  return out


# ---------------------------------------------------------------- evaluation


def eval_geometry(height: int, width: int, image_size: int, crop_pct: float):
  """(new_h, new_w, top, left): resize to new_h x new_w, then crop image_size at (top, left).

  The shorter side becomes round(image_size / crop_pct) and the longer one
  keeps the aspect ratio (truncated to an int, as torchvision's Resize does);
  the crop offsets are rounded like torchvision's CenterCrop.
  """
  short = round(image_size / crop_pct)
  if height <= width:
    new_h, new_w = short, max(int(short * width / height), short)
  else:
    new_h, new_w = max(int(short * height / width), short), short
  return new_h, new_w, int(round((new_h - image_size) / 2.0)), int(round((new_w - image_size) / 2.0))


def eval_weights(height: int, width: int, image_size: int, crop_pct: float):
  """Matrices for the eval resize + center crop (the crop keeps rows of the resize matrices)."""
  new_h, new_w, top, left = eval_geometry(height, width, image_size, crop_pct)
  wy = bicubic_weights(height, new_h)[top:top + image_size]
  wx = bicubic_weights(width, new_w)[left:left + image_size]
  return wy, wx


def eval_transform(images: np.ndarray, image_size: int, opts: AugmentOptions) -> np.ndarray:
  """Eval resize + center crop + normalize for uint8 images [..., H, W, C] (same size)."""
  height, width = images.shape[-3:-1]
  wy, wx = eval_weights(height, width, image_size, opts.eval_crop_pct)
  return normalize(apply_weights(images, wy, wx), opts.mean, opts.std)


def eval_transform_one(image: np.ndarray, image_size: int, opts: AugmentOptions) -> np.ndarray:
  """``eval_transform`` for one uint8 image [H, W, C] of any size, with ``resize_one``."""
  new_h, new_w, top, left = eval_geometry(*image.shape[:2], image_size, opts.eval_crop_pct)
  out = resize_one(image, new_h, new_w)[top:top + image_size, left:left + image_size]
  return normalize(out, opts.mean, opts.std)


def whole_transform(images: np.ndarray, image_size: int, opts: AugmentOptions) -> np.ndarray:
  """Resize of whole uint8 images [..., H, W, C] (same size) to image_size x image_size + normalize.

  No crop, and the aspect ratio is not kept (torchvision's ``Resize((S, S))``).
  """
  height, width = images.shape[-3:-1]
  out = apply_weights(images, bicubic_weights(height, image_size), bicubic_weights(width, image_size))
  return normalize(out, opts.mean, opts.std)


def whole_transform_one(image: np.ndarray, image_size: int, opts: AugmentOptions) -> np.ndarray:
  """``whole_transform`` for one uint8 image [H, W, C] of any size, with ``resize_one``."""
  return normalize(resize_one(image, image_size, image_size), opts.mean, opts.std)


# ------------------------------------------------------------- normalization


def normalize(images: np.ndarray, mean, std) -> np.ndarray:
  """float32 ``(x / 255 - mean) / std`` over the last (channel) axis.

  ``mean`` and ``std`` have one value per channel, or a single value that
  broadcasts over all channels.
  """
  channels = images.shape[-1]
  mean = np.asarray(mean, np.float32).reshape(-1)
  std = np.asarray(std, np.float32).reshape(-1)
  for name, values in (("mean", mean), ("std", std)):
    if values.size not in (1, channels):
      raise ConfigError(
          f"data.{name} has {values.size} values but the images have {channels} "
          f"channel(s); give 1 value or {channels}")
  scale = 1.0 / (255.0 * std)
  return (np.asarray(images, np.float32) * scale - mean / std).astype(np.float32)
