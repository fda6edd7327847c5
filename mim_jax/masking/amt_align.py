"""Align AMT's cached attention maps with the RandomResizedCrop + horizontal flip of the image.

The cache holds one map ``M`` [h, w] per image, computed on the whole un-augmented image, so map
cell (i, j) covers the source region [i/h, (i+1)/h) x [j/w, (j+1)/w). AMT samples patches with
weights equal to the mass of the crop-aligned map over each patch (or 32 px SimMIM mask cell).

Bilinear resampling and sum-pooling are both linear, so the mass is ``Ay @ M @ Ax^T`` with small
per-example matrices and the S x S pixel map is never built. Each resampled pixel is a convex
combination of map cells, so for ``M`` in [0, 1] the released code's clamp to [0, 1] after the
resize is a no-op; we clamp ``M`` first, which makes that exact for any input.

``faithful_crop_bug=True`` reproduces the released code (guijiejie/AMT, ``maskRandomResizedCrop``):
its slice ``mask[i//H:(i+h)//H+2, j//W:(j+w)//W+2]`` keeps rows [0:3] when the crop reaches the
bottom edge (y1 == 1) and rows [0:2] otherwise (columns likewise), then resizes that sub-map to
S x S (bilinear, align_corners=False), clamps, flips and sums per block.
"""

import jax
import jax.numpy as jnp

_HIGHEST = jax.lax.Precision.HIGHEST


def bilinear_matrix(coords, size: int):
  """Bilinear weights [..., n, size] of sample points ``coords`` [..., n] over ``size`` cells.

  Coordinates are in cell-index units (cell k is centred at k). As in torch's align_corners=False
  bilinear, they are clamped to [0, size - 1], so samples past a border copy the edge cell. The
  weights are the hat function max(0, 1 - |c - k|): non-negative, summing to 1 per sample.
  """
  c = jnp.clip(coords, 0.0, size - 1.0)[..., None]
  return jnp.maximum(0.0, 1.0 - jnp.abs(c - jnp.arange(size, dtype=jnp.float32)))


def crop_coords(lo, hi, size: int, image_size: int):
  """Map-index coordinates [B, image_size] that the pixel centres of a crop [lo, hi) sample.

  ``lo``/``hi`` [B] are fractions of the source image; pixel r of the crop is centred at source
  fraction lo + (r + 0.5) (hi - lo) / image_size, i.e. map coordinate ``that * size - 0.5``.
  """
  r = jnp.arange(image_size, dtype=jnp.float32) + 0.5
  frac = lo[:, None] + r * ((hi - lo)[:, None] / image_size)
  return frac * size - 0.5


def resize_coords(n_in, image_size: int):
  """torch's align_corners=False source coordinates [B, image_size] for resizing n_in [B] cells."""
  r = jnp.arange(image_size, dtype=jnp.float32) + 0.5
  coords = r * (n_in[:, None] / image_size) - 0.5
  return jnp.clip(coords, 0.0, n_in[:, None] - 1.0)


def pool_rows(mat, block: int):
  """Sum consecutive groups of ``block`` rows: [B, S, k] -> [B, S // block, k]."""
  b, s, k = mat.shape
  return mat.reshape(b, s // block, block, k).sum(axis=2)


def _crop_aligned_mass(maps, box, image_size: int, block: int):
  """Correct mode: Ay @ clip(M, 0, 1) @ Ax^T, the block sums of the crop-resampled map."""
  h, w = maps.shape[1:]
  ay = pool_rows(bilinear_matrix(crop_coords(box[:, 0], box[:, 2], h, image_size), h), block)
  ax = pool_rows(bilinear_matrix(crop_coords(box[:, 1], box[:, 3], w, image_size), w), block)
  return jnp.einsum("bph,bhw,bqw->bpq", ay, jnp.clip(maps, 0.0, 1.0), ax, precision=_HIGHEST)


def _released_mass(maps, box, image_size: int, block: int):
  """Faithful mode: resize M[:n_rows, :n_cols] (n = 3 if the crop touches the far edge, else 2)."""
  b, h, w = maps.shape
  kh, kw = min(3, h), min(3, w)
  n_rows = jnp.minimum(jnp.where(box[:, 2] >= 1.0, 3.0, 2.0), float(h))
  n_cols = jnp.minimum(jnp.where(box[:, 3] >= 1.0, 3.0, 2.0), float(w))
  # a 2-cell resize puts zero weight on cell 2, so one [S, 3] matrix covers both slice sizes
  ry = bilinear_matrix(resize_coords(n_rows, image_size), kh)
  rx = bilinear_matrix(resize_coords(n_cols, image_size), kw)
  pix = jnp.einsum("bsh,bhw,btw->bst", ry, maps[:, :kh, :kw], rx, precision=_HIGHEST)
  pix = jnp.clip(pix, 0.0, 1.0)  # the released clamp, applied to the resized map
  g = image_size // block
  return pix.reshape(b, g, block, g, block).sum(axis=(2, 4))


def patch_weights(maps, crop_box, flipped, image_size: int, block: int,
                  faithful_crop_bug: bool = False):
  """Per-block AMT sampling weights aligned with each example's crop and flip.

  Args:
    maps: float [B, h, w], the cached attention maps (values in [0, 1]).
    crop_box: float [B, 4], (y0, x0, y1, x1) of the RandomResizedCrop as fractions of the source.
    flipped: bool [B], whether the image was mirrored horizontally after the crop.
    image_size: static S, the side of the cropped training image in pixels.
    block: static block side in pixels (the patch size for MAE, the 32 px mask cell for SimMIM).
    faithful_crop_bug: reproduce the released code's top-left-corner slice instead.

  Returns:
    float32 [B, S // block, S // block]: the mass of the resampled map over each block.
  """
  if image_size % block:
    raise ValueError(f"image_size {image_size} is not a multiple of block {block}")
  maps = jnp.asarray(maps, jnp.float32)
  box = jnp.asarray(crop_box, jnp.float32)
  mass_fn = _released_mass if faithful_crop_bug else _crop_aligned_mass
  weights = mass_fn(maps, box, image_size, block)
  # mirroring the S x S map mirrors its block sums, since S is a multiple of block
  return jnp.where(jnp.asarray(flipped)[:, None, None], weights[:, :, ::-1], weights)
