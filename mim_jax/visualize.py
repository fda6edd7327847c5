"""PNG grids of original | masked | reconstruction images."""

import os

import numpy as np
from PIL import Image

COLUMNS = ("original", "masked", "reconstruction")


def to_uint8(images, mean, std):
  """Undoes the input normalization: [N, H, W, C] float -> uint8 RGB [N, H, W, 3]."""
  x = np.asarray(images, np.float32) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
  x = np.clip(np.round(x * 255), 0, 255).astype(np.uint8)
  return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


def grid(columns: dict, mean, std, min_side: int = 64, pad: int = 2) -> np.ndarray:
  """One row per example, one column per entry of COLUMNS; small images are upscaled."""
  panels = [to_uint8(columns[name], mean, std) for name in COLUMNS]
  n, h, w, _ = panels[0].shape
  scale = max(1, -(-min_side // h))
  h, w = h * scale, w * scale
  out = np.full((n * (h + pad) + pad, len(panels) * (w + pad) + pad, 3), 255, np.uint8)
  for c, panel in enumerate(panels):
    big = panel.repeat(scale, axis=1).repeat(scale, axis=2)
    for r in range(n):
      y, x = pad + r * (h + pad), pad + c * (w + pad)
      out[y:y + h, x:x + w] = big[r]
  return out


def save_png(image: np.ndarray, path: str) -> None:
  tmp = path + ".tmp.png"
  Image.fromarray(image).save(tmp)
  os.replace(tmp, path)
