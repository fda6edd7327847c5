"""Fixed 2-D sine-cosine position embeddings (MAE's layout).

Channel layout of a ``dim``-wide embedding on an ``h x w`` grid (tokens in row-major order):
the first ``dim/2`` channels encode the **column** coordinate and the second ``dim/2`` the **row**
coordinate; each half is ``[sin | cos]`` of ``coord * omega_i`` with
``omega_i = 1 / 10000 ** (i / (dim / 4))`` for ``i = 0 .. dim/4 - 1``. Weight converters depend
on this order, so it is tested against a direct formula.
"""

import numpy as np


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
  """[len(positions), dim] table: ``[sin(pos * omega) | cos(pos * omega)]``."""
  if dim % 2:
    raise ValueError(f"1-D sin-cos embedding needs an even dim, got {dim}")
  omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
  angles = np.asarray(positions, np.float64).reshape(-1)[:, None] * omega[None, :]
  return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_2d(dim: int, grid_h: int, grid_w: int, cls_token: bool = False) -> np.ndarray:
  """[(1 if cls_token) + grid_h * grid_w, dim] float32 table; the [CLS] row is zeros."""
  if dim % 4:
    raise ValueError(f"2-D sin-cos embedding needs dim divisible by 4, got {dim}")
  rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
  table = np.concatenate([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], axis=1)
  if cls_token:
    table = np.concatenate([np.zeros((1, dim)), table], axis=0)
  return table.astype(np.float32)
