"""PNG grids: original | masked | reconstruction images, and AMT's attention pictures."""

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
  """One row per example, one column per entry of COLUMNS; small images are upscaled. A
  ``probabilities`` entry [N, h, w] (MLO-MAE's masking network) adds a heatmap column, each map
  stretched to its own range."""
  panels = [to_uint8(columns[name], mean, std) for name in COLUMNS]
  if "probabilities" in columns:
    p = np.asarray(columns["probabilities"], np.float32)
    lo, hi = p.min((1, 2), keepdims=True), p.max((1, 2), keepdims=True)
    panels.append(heatmap((p - lo) / np.maximum(hi - lo, 1e-12), panels[0].shape[1]))
  return panels_grid(panels, min_side, pad)


def panels_grid(panels, min_side: int = 64, pad: int = 2) -> np.ndarray:
  """uint8 panels [N, H, W, 3] side by side, one row per example, on a white background."""
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


def _upsample(values, size: int):
  """[N, h, w] -> [N, size, size] by repetition (size a multiple of h and w)."""
  values = np.asarray(values)
  return values.repeat(size // values.shape[1], axis=1).repeat(size // values.shape[2], axis=2)


def heatmap(maps, size: int) -> np.ndarray:
  """Maps [N, h, w] in [0, 1] as uint8 RGB [N, size, size, 3]: black -> red -> yellow -> white."""
  m = np.clip(_upsample(maps, size).astype(np.float32), 0.0, 1.0)[..., None]
  rgb = np.clip(3.0 * m - np.asarray([0.0, 1.0, 2.0], np.float32), 0.0, 1.0)
  return np.round(rgb * 255).astype(np.uint8)


def unit_states(images, states, unit_grid: tuple) -> np.ndarray:
  """uint8 images [N, H, W, 3] with the units of ``states`` [N, units] (0 visible, 1 masked,
  2 thrown) shown as they are, greyed out, or dark blue."""
  n, size = images.shape[0], images.shape[1]
  s = _upsample(np.asarray(states).reshape(n, *unit_grid), size)[..., None]
  grey = (0.3 * images + 0.7 * 160).astype(np.uint8)
  blue = np.asarray([20, 30, 110], np.uint8)
  return np.where(s == 0, images, np.where(s == 1, grey, blue)).astype(np.uint8)


def save_png(image: np.ndarray, path: str) -> None:
  tmp = path + ".tmp.png"
  Image.fromarray(image).save(tmp)
  os.replace(tmp, path)
