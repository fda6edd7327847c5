"""Random erasing (timm's RandomErasing as MAE fine-tuning uses it), on normalized images.

With probability ``prob`` one box of the image is replaced: up to 10 attempts
draw an area fraction U(0.02, 1/3) and a log aspect ratio U(log 0.3, log 1/0.3);
``h = round(sqrt(area * aspect))``, ``w = round(sqrt(area / aspect))``, and the
first attempt with ``h < H`` and ``w < W`` is used (none fitting: no erasing).
The box's top and left are uniform integers in [0, H - h] and [0, W - w].
Mode ``pixel`` (MAE's) fills the box with per-pixel, per-channel N(0, 1) values,
``rand`` with one N(0, 1) value per channel, ``const`` with zeros; the images
are already normalized, so these are in units of the dataset std.

All randomness comes from the numpy Generator passed in.
"""

from __future__ import annotations

import math

import numpy as np

MODES = ("pixel", "rand", "const")


def erase_box(height: int, width: int, rng: np.random.Generator, *, min_area: float = 0.02,
              max_area: float = 1 / 3, min_aspect: float = 0.3, max_aspect: float | None = None,
              attempts: int = 10):
  """(top, left, h, w) of a random box for an image of height x width, or None if none fitted."""
  max_aspect = max_aspect or 1 / min_aspect
  log_lo, log_hi = math.log(min_aspect), math.log(max_aspect)
  area = height * width
  for _ in range(attempts):
    target = rng.uniform(min_area, max_area) * area
    aspect = math.exp(rng.uniform(log_lo, log_hi))
    h = int(round(math.sqrt(target * aspect)))
    w = int(round(math.sqrt(target / aspect)))
    if h < height and w < width:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  return None


def random_erase(image: np.ndarray, prob: float, rng: np.random.Generator, *,
                 mode: str = "pixel", **box_kwargs) -> np.ndarray:
  """Random erasing of one normalized float image [H, W, C].

  Returns ``image`` itself when nothing is erased, else an erased copy (the
  input is never modified). ``box_kwargs`` go to ``erase_box``. Draws from
  ``rng``: the coin, then (if erasing) the box, then the fill values.
  """
  if mode not in MODES:
    raise ValueError(f"random erasing mode must be one of {MODES}, got {mode!r}")
  if not 0 <= prob <= 1:
    raise ValueError(f"random erasing probability must be in [0, 1], got {prob}")
  if rng.random() >= prob:
    return image
  height, width, channels = image.shape
  box = erase_box(height, width, rng, **box_kwargs)
  if box is None:
    return image
  top, left, h, w = box
  out = np.array(image, copy=True)
  if mode == "pixel":
    values = rng.standard_normal((h, w, channels), dtype=np.float32)
  elif mode == "rand":
    values = rng.standard_normal((1, 1, channels), dtype=np.float32)
  else:
    values = 0.0
  out[top:top + h, left:left + w] = values
  return out
