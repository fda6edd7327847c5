"""AMT's crop/flip alignment of cached attention maps, against slow numpy references."""

import math

import jax
import numpy as np
import pytest

from mim_jax.masking import amt_align


def _torch_source_index(dst, n_in, n_out):
  """torch's align_corners=False bilinear: (i0, i1, lambda) for one output index."""
  src = max((dst + 0.5) * n_in / n_out - 0.5, 0.0)
  i0 = min(int(math.floor(src)), n_in - 1)
  i1 = min(i0 + 1, n_in - 1)
  return i0, i1, src - i0


def _sample(m, sy, sx):
  """Bilinear value of map m at map-index coordinate (sy, sx), torch-style border handling."""
  h, w = m.shape
  sy, sx = max(sy, 0.0), max(sx, 0.0)
  y0, x0 = min(int(math.floor(sy)), h - 1), min(int(math.floor(sx)), w - 1)
  y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
  ly, lx = sy - y0, sx - x0
  top = (1 - lx) * m[y0, x0] + lx * m[y0, x1]
  bottom = (1 - lx) * m[y1, x0] + lx * m[y1, x1]
  return (1 - ly) * top + ly * bottom


def _block_sums(pix, flip, block):
  pix = np.clip(pix, 0.0, 1.0)
  if flip:
    pix = pix[:, ::-1]
  g = pix.shape[0] // block
  return pix.reshape(g, block, g, block).sum(axis=(1, 3))


def _reference_crop(m, box, flip, s, block):
  """Upsample m over the crop box by sampling at every pixel centre, clamp, flip, block-sum."""
  h, w = m.shape
  y0, x0, y1, x1 = (float(v) for v in box)
  pix = np.zeros((s, s))
  for r in range(s):
    sy = (y0 + (r + 0.5) * (y1 - y0) / s) * h - 0.5
    for c in range(s):
      sx = (x0 + (c + 0.5) * (x1 - x0) / s) * w - 0.5
      pix[r, c] = _sample(m, sy, sx)
  return _block_sums(pix, flip, block)


def _reference_released(m, box, flip, s, block):
  """The released code: slice the top-left 2 or 3 cells, torch bilinear resize, clamp, flip, sum."""
  rows = 3 if box[2] >= 1.0 else 2
  cols = 3 if box[3] >= 1.0 else 2
  sub = np.asarray(m, np.float64)[:rows, :cols]
  pix = np.zeros((s, s))
  for r in range(s):
    a0, a1, ly = _torch_source_index(r, rows, s)
    for c in range(s):
      b0, b1, lx = _torch_source_index(c, cols, s)
      pix[r, c] = ((1 - ly) * ((1 - lx) * sub[a0, b0] + lx * sub[a0, b1])
                   + ly * ((1 - lx) * sub[a1, b0] + lx * sub[a1, b1]))
  return _block_sums(pix, flip, block)


def _random_boxes(rng, n):
  """RandomResizedCrop-like boxes, including some touching the image edges."""
  lo = rng.uniform(0.0, 0.5, (n, 2))
  hi = lo + rng.uniform(0.1, 0.5, (n, 2))
  box = np.concatenate([lo, np.minimum(hi, 1.0)], axis=1)
  box[0] = (0.0, 0.0, 1.0, 1.0)
  box[1, 2:] = 1.0
  return box.astype(np.float32)


@pytest.mark.parametrize("s,block,hw", [(32, 4, 8), (32, 8, 8), (24, 6, (6, 4))])
def test_matches_pixel_reference(s, block, hw):
  h, w = hw if isinstance(hw, tuple) else (hw, hw)
  rng = np.random.default_rng(s + block + h)
  n = 6
  maps = rng.uniform(0.0, 1.0, (n, h, w)).astype(np.float32)
  boxes = _random_boxes(rng, n)
  flipped = np.array([False, True, False, True, True, False])
  got = np.asarray(amt_align.patch_weights(maps, boxes, flipped, s, block))
  assert got.shape == (n, s // block, s // block) and got.dtype == np.float32
  for b in range(n):
    want = _reference_crop(maps[b], boxes[b], flipped[b], s, block)
    np.testing.assert_allclose(got[b], want, rtol=1e-4, atol=1e-5)


def test_linear_ramp_inside_the_image():
  h = w = 8
  ramp = np.tile(np.arange(w, dtype=np.float32) / (w - 1), (h, 1))[None]
  # x in [0.25, 0.75): pixel c samples map x = 1.5 + (c + 0.5) / 8, all inside [0, 7], so bilinear
  # is exact; block q (pixels 8q..8q+7) has mean map x 2 + q, hence mass 64 * (2 + q) / 7.
  box = np.array([[0.125, 0.25, 0.625, 0.75]], np.float32)
  want = 64.0 / 7.0 * np.array([2.0, 3.0, 4.0, 5.0])
  got = np.asarray(amt_align.patch_weights(ramp, box, np.array([False]), 32, 8))
  np.testing.assert_allclose(got[0], np.tile(want, (4, 1)), rtol=1e-6)
  got = np.asarray(amt_align.patch_weights(ramp, box, np.array([True]), 32, 8))
  np.testing.assert_allclose(got[0], np.tile(want[::-1], (4, 1)), rtol=1e-6)


def test_whole_image_box():
  # One map cell per 4 px block: the 4 pixel rows of block p sample map rows p -/+ 0.375, 0.125,
  # so bilinear gives cell p weight 3 and each neighbour 0.5 (the edge cell keeps its outer 0.5).
  # Block sums are therefore 4T M 4T^T with T tridiagonal, not 16 M, unless M is locally linear.
  h, s, block = 8, 32, 4
  t = 0.75 * np.eye(h) + 0.125 * (np.eye(h, k=1) + np.eye(h, k=-1))
  t[0, 0] = t[-1, -1] = 0.875
  rng = np.random.default_rng(0)
  maps = rng.uniform(0.0, 1.0, (3, h, h)).astype(np.float32)
  box = np.tile(np.array([0.0, 0.0, 1.0, 1.0], np.float32), (3, 1))
  got = np.asarray(amt_align.patch_weights(maps, box, np.zeros(3, bool), s, block))
  want = 16.0 * np.einsum("ph,bhw,qw->bpq", t, maps, t)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got.sum((1, 2)), 16.0 * maps.sum((1, 2)), rtol=1e-5)
  const = np.full((1, h, h), 0.3, np.float32)
  got = np.asarray(amt_align.patch_weights(const, box[:1], np.zeros(1, bool), s, block))
  np.testing.assert_allclose(got[0], 16.0 * const[0], rtol=1e-6)


def test_correct_mode_clamps_the_map():
  rng = np.random.default_rng(1)
  maps = rng.uniform(-0.5, 1.5, (2, 8, 8)).astype(np.float32)
  box = _random_boxes(rng, 2)
  flipped = np.array([False, True])
  got = amt_align.patch_weights(maps, box, flipped, 32, 8)
  want = amt_align.patch_weights(np.clip(maps, 0.0, 1.0), box, flipped, 32, 8)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6)
  assert np.all(np.asarray(got) >= 0.0) and np.all(np.asarray(got) <= 64.0 + 1e-4)


@pytest.mark.parametrize("y1,x1,rows,cols", [(0.8, 0.9, 2, 2), (1.0, 0.7, 3, 2), (0.6, 1.0, 2, 3),
                                             (1.0, 1.0, 3, 3)])
def test_released_crop_bug(y1, x1, rows, cols):
  s, block, h = 32, 8, 8
  rng = np.random.default_rng(rows * 10 + cols)
  # values outside [0, 1] check that the clamp comes after the resize, as in the released code
  maps = rng.uniform(-0.3, 1.3, (2, h, h)).astype(np.float32)
  box = np.array([[0.3, 0.2, y1, x1]] * 2, np.float32)
  flipped = np.array([False, True])
  got = np.asarray(amt_align.patch_weights(maps, box, flipped, s, block, True))
  for b in range(2):
    want = _reference_released(maps[b], box[b], flipped[b], s, block)
    np.testing.assert_allclose(got[b], want, rtol=1e-4, atol=1e-5)
  # only M[:rows, :cols] matters: perturb every other entry
  outside = np.ones((h, h), bool)
  outside[:rows, :cols] = False
  changed = maps + 5.0 * outside * rng.uniform(0.2, 1.0, maps.shape).astype(np.float32)
  again = np.asarray(amt_align.patch_weights(changed, box, flipped, s, block, True))
  np.testing.assert_array_equal(again, got)
  # and every entry inside does matter
  for i in range(rows):
    for j in range(cols):
      poked = maps.copy()
      poked[:, i, j] = 0.5 - 0.4 * np.sign(maps[:, i, j] - 0.5)
      assert not np.allclose(amt_align.patch_weights(poked, box, flipped, s, block, True), got)


def test_released_crop_bug_matches_torch():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(2)
  maps = rng.uniform(0.0, 1.0, (4, 14, 14)).astype(np.float32)
  box = np.array([[0.1, 0.2, 0.9, 0.8], [0.0, 0.3, 1.0, 0.9], [0.2, 0.0, 0.7, 1.0],
                  [0.0, 0.0, 1.0, 1.0]], np.float32)
  flipped = np.array([True, False, True, False])
  got = np.asarray(amt_align.patch_weights(maps, box, flipped, 224, 16, True))
  for b in range(4):
    rows, cols = (3 if box[b, 2] >= 1.0 else 2), (3 if box[b, 3] >= 1.0 else 2)
    sub = torch.from_numpy(maps[b, :rows, :cols])[None, None]
    for antialias in (False, True):  # torchvision's tensor resize; upsampling, so both agree
      pix = torch.nn.functional.interpolate(sub, size=(224, 224), mode="bilinear",
                                            align_corners=False, antialias=antialias)
      pix = pix[0, 0].clamp(0, 1).numpy()
      want = _block_sums(pix, flipped[b], 16)
      np.testing.assert_allclose(got[b], want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("faithful", [False, True])
def test_jit(faithful):
  rng = np.random.default_rng(3)
  maps = rng.uniform(0.0, 1.0, (4, 14, 14)).astype(np.float32)
  box = _random_boxes(rng, 4)
  flipped = np.array([True, False, True, False])
  fn = jax.jit(amt_align.patch_weights, static_argnums=(3, 4, 5))
  got = fn(maps, box, flipped, 224, 32, faithful)
  want = amt_align.patch_weights(maps, box, flipped, 224, 32, faithful)
  assert got.shape == (4, 7, 7)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_rejects_block_not_dividing_image():
  with pytest.raises(ValueError):
    amt_align.patch_weights(np.ones((1, 4, 4)), np.array([[0.0, 0.0, 1.0, 1.0]]),
                            np.array([False]), 30, 8)
