"""Tests of RandAugment, random erasing and their place in the training transforms."""

import math
import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from data_helpers import assert_batches_equal, make_config, take
from mim_jax import data
from mim_jax.data import random_erasing, sources, transforms
from mim_jax.data import randaugment as ra

FILL = (11, 22, 33)


def rgb(h=12, w=10, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def op(image, name, m, seed=0, fill=FILL, interpolation="bicubic"):
  return ra.apply_op(image, name, m, np.random.default_rng(seed), fill, interpolation)


def both_signs(image, name, m, candidates, atol=0):
  """Over seeds, the op's output is always one of the two candidates, and both occur."""
  seen = set()
  for seed in range(12):
    out = op(image, name, m, seed).astype(np.int64)
    matches = [k for k, c in enumerate(candidates) if np.abs(out - c).max() <= atol]
    assert matches, f"{name} m={m} seed={seed}: output matches no candidate"
    seen.add(matches[0])
  assert seen == {0, 1}, f"{name}: only sign {seen} seen"


# -------------------------------------------------------------------- spec


def test_parse_spec():
  spec = ra.parse_randaugment("rand-m9-mstd0.5-inc1")
  assert (spec.num_ops, spec.magnitude, spec.magnitude_std, spec.magnitude_max, spec.prob,
          spec.increasing) == (2, 9, 0.5, 10, 0.5, True)
  assert spec.ops == (
      "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
      "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
      "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
  default = ra.parse_randaugment("rand")  # timm's defaults: m10, n2, p0.5, original op set
  assert (default.num_ops, default.magnitude, default.prob, default.increasing) == (2, 10, 0.5, False)
  assert "Posterize" in default.ops and "PosterizeIncreasing" not in default.ops
  other = ra.parse_randaugment("rand-inc0-p0.7-mmax20-n3-mstd101-m12")
  assert (other.num_ops, other.magnitude, other.magnitude_max, other.prob, other.increasing) == (
      3, 12, 20, 0.7, False)
  assert other.magnitude_std == math.inf  # timm: above 100 means uniform in [0, m]
  for bad, token in [("rand-m9-x3", "'x3'"), ("rand-mfoo", "'mfoo'"), ("rand-n1.5", "'n1.5'"),
                     ("rand-p1.5", "'p1.5'"), ("augmix-m9", "'augmix'"), ("rand-m9-m8", "'m8'"),
                     ("rand--m9", "''"), ("rand-inc2", "'inc2'"), ("rand-m9-tweights", "'tweights'")]:
    with pytest.raises(ValueError, match=token):
      ra.parse_randaugment(bad)
  with pytest.raises(ValueError, match=r"data.randaugment.*'q1'"):
    transforms.AugmentOptions(randaugment="rand-m9-q1").validate()
  for prob in (-0.1, 1.5, "0.2"):
    with pytest.raises(ValueError, match="data.random_erase"):
      transforms.AugmentOptions(random_erase=prob).validate()
  cfg = ml_collections.ConfigDict(dict(randaugment="rand-m9-mstd0.5-inc1", random_erase=0.25,
                                       mean=(0.5,), std=(0.5,)))
  opts = transforms.AugmentOptions.from_config(cfg)
  assert opts.randaugment == "rand-m9-mstd0.5-inc1" and opts.random_erase == 0.25
  with pytest.raises(ValueError, match="1- or 3-channel"):
    opts.check_channels(2)
  assert ra.fill_from_mean((0.485, 0.456, 0.406), 3) == (124, 116, 104)
  assert ra.fill_from_mean((0.5,), 3) == (128, 128, 128) and ra.fill_from_mean((0.2,), 1) == (51,)


# ------------------------------------------------------------ op semantics


def test_pointwise_ops_match_numpy():
  x = rgb()
  i = x.astype(np.int64)
  np.testing.assert_array_equal(op(x, "Invert", 3), 255 - x)
  np.testing.assert_array_equal(op(x, "PosterizeIncreasing", 5), x & 0b11000000)  # 4 - 2 bits
  np.testing.assert_array_equal(op(x, "PosterizeIncreasing", 0), x & 0b11110000)
  np.testing.assert_array_equal(op(x, "PosterizeIncreasing", 10), np.zeros_like(x))
  np.testing.assert_array_equal(op(x, "Posterize", 7.5), x & 0b11100000)  # int(3.0) bits
  np.testing.assert_array_equal(op(x, "SolarizeIncreasing", 5), np.where(x >= 128, 255 - x, x))
  np.testing.assert_array_equal(op(x, "SolarizeIncreasing", 0), x)
  np.testing.assert_array_equal(op(x, "SolarizeIncreasing", 10), 255 - x)
  np.testing.assert_array_equal(op(x, "Solarize", 2.5), np.where(x >= 64, 255 - x, x))
  np.testing.assert_array_equal(op(x, "SolarizeAdd", 5), np.where(i < 128, np.minimum(i + 55, 255), i))
  np.testing.assert_array_equal(op(x, "SolarizeAdd", 10), np.where(i < 128, i + 110, i))
  # Brightness: blend with black, factor 1 +- 0.9 * m / 10, truncated and clipped.
  both_signs(x, "BrightnessIncreasing", 5,
             [np.clip(np.floor(i * 1.45), 0, 255), np.floor(i * 0.55)], atol=1)
  np.testing.assert_array_equal(op(x, "Brightness", 5), x)  # original set: 0.1 + 1.8 * 0.5 = 1
  np.testing.assert_allclose(op(x, "Brightness", 0), np.floor(i * 0.1), atol=1)
  # AutoContrast stretches each channel to 0..255 (about).
  y = np.stack([np.linspace(50, 150, 120), np.linspace(0, 100, 120), np.linspace(30, 40, 120)],
               -1).reshape(12, 10, 3).round().astype(np.uint8)
  out = op(y, "AutoContrast", 9).astype(np.float64)
  lo, hi = y.min((0, 1)), y.max((0, 1))
  np.testing.assert_allclose(out, (y - lo) * 255.0 / (hi - lo), atol=1)
  np.testing.assert_array_equal(out.min((0, 1)), 0)
  assert np.all(out.max((0, 1)) >= 254)  # PIL truncates the scaled values
  # Equalize spreads a narrow histogram over the range, keeping the order of values.
  z = np.repeat(np.arange(100, 104, dtype=np.uint8), 300).reshape(40, 30, 1)
  eq = op(z, "Equalize", 9, fill=0)[..., 0]
  assert eq.min() == 0 and eq.max() == 255 and len(np.unique(eq)) == 4
  assert np.all(np.diff(eq.reshape(-1).astype(int)) >= 0)
  # Enhancers that blend with a degenerate image leave that image unchanged.
  gray = np.repeat(x[..., :1], 3, -1)
  for name in ("ColorIncreasing", "Color"):
    np.testing.assert_array_equal(op(gray, name, 9), gray)
  flat = np.full((12, 10, 3), 77, np.uint8)
  for name in ("ContrastIncreasing", "SharpnessIncreasing", "Contrast", "Sharpness"):
    np.testing.assert_array_equal(op(flat, name, 9), flat)


def test_geometric_ops_translate_fill_and_identity():
  x = rgb(40, 20, seed=1)
  fill = np.array(FILL, np.int64)
  i = x.astype(np.int64)
  # X: 0.45 * 20 = 9 pixels at m=10; Y: 0.45 * 0.5 * 40 = 9 pixels at m=5.
  left, right = np.broadcast_to(fill, x.shape).copy(), np.broadcast_to(fill, x.shape).copy()
  left[:, :11], right[:, 9:] = i[:, 9:], i[:, :11]
  up, down = np.broadcast_to(fill, x.shape).copy(), np.broadcast_to(fill, x.shape).copy()
  up[:31], down[9:] = i[9:], i[:31]
  for interpolation in ("bicubic", "bilinear"):
    for name, m, candidates in [("TranslateXRel", 10, [left, right]), ("TranslateYRel", 5, [up, down])]:
      seen = set()
      for seed in range(10):
        out = op(x, name, m, seed, interpolation=interpolation)
        seen.update(k for k, c in enumerate(candidates) if np.array_equal(out, c))
      assert seen == {0, 1}, (name, interpolation)
  for name in ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"):
    for seed in range(4):  # magnitude 0: identity (a zero shift at pixel centers is exact)
      np.testing.assert_array_equal(op(x, name, 0, seed), x, err_msg=name)
  rotated = op(x, "Rotate", 10)  # +-30 degrees: the corners come from outside -> fill
  for corner in [(0, 0), (0, -1), (-1, 0), (-1, -1)]:
    np.testing.assert_array_equal(rotated[corner], FILL)
  # ShearX of an image constant along x: each pixel keeps its row's value or becomes fill.
  rows = np.repeat(np.linspace(0, 250, 40).round().astype(np.uint8)[:, None, None], 20, 1)
  rows = np.repeat(rows, 3, -1)
  sheared = op(rows, "ShearX", 10).astype(np.int64)
  is_fill = np.all(sheared == fill, -1)
  assert np.all(is_fill | np.all(np.abs(sheared - rows) <= 1, -1))
  # Row y is shifted by 0.3 * (y + 0.5) pixels (PIL samples at pixel centers).
  assert np.all(np.abs(is_fill.sum(1) - 0.3 * (np.arange(40) + 0.5)) <= 1)
  k = is_fill.sum(1, keepdims=True)
  at_right, at_left = np.arange(20) >= 20 - k, np.arange(20) < k
  assert np.array_equal(is_fill, at_right) or np.array_equal(is_fill, at_left)
  # "random" picks bilinear or bicubic per op (after the sign draw).
  kinds = set()
  for seed in range(12):
    out = op(x, "Rotate", 7, seed, interpolation="random")
    kinds.update(k for k in ("bicubic", "bilinear")
                 if np.array_equal(out, op(x, "Rotate", 7, seed, interpolation=k)))
  assert kinds == {"bicubic", "bilinear"}


def test_randaugment_deterministic_one_channel_and_shapes():
  x = rgb(16, 16)
  spec = "rand-m9-mstd0.5-inc1"
  a = ra.randaugment(x, spec, np.random.default_rng(5), FILL)
  np.testing.assert_array_equal(a, ra.randaugment(x, spec, np.random.default_rng(5), FILL))
  outs = {ra.randaugment(x, spec, np.random.default_rng(s), FILL).tobytes() for s in range(10)}
  assert len(outs) >= 5  # different seeds, different outputs
  gray = x[..., :1]
  for image in (x, gray):
    for name in ra.OPS:
      out = op(image, name, 9, fill=77)
      assert out.shape == image.shape and out.dtype == np.uint8, name
    out = ra.randaugment(image, "rand-m9-mstd0.5-inc1-p1-n4", np.random.default_rng(1), 77)
    assert out.shape == image.shape and out.dtype == np.uint8
  np.testing.assert_array_equal(op(gray, "Invert", 5, fill=77), 255 - gray)
  np.testing.assert_array_equal(op(gray, "TranslateXRel", 0, fill=77), gray)
  narrow = rgb(10, 20)[..., :1]  # 0.45 * 20 = 9 pixels at m=10, fill 77
  shifted = op(narrow, "TranslateXRel", 10, fill=77)
  left, right = np.full_like(narrow, 77), np.full_like(narrow, 77)
  left[:, :11], right[:, 9:] = narrow[:, 9:], narrow[:, :11]
  assert np.array_equal(shifted, left) or np.array_equal(shifted, right)
  with pytest.raises(ValueError, match="1 or 3"):
    ra.randaugment(x[..., :2], spec, np.random.default_rng(0), FILL)


def test_op_choice_is_uniform_and_half_applied(monkeypatch):
  calls = []
  for name in ra.OPS:
    monkeypatch.setitem(ra.OPS, name, lambda img, level, rng, ctx, name=name: (
        calls.append((name, level * 10)), img)[1])
  image = np.zeros((2, 2, 3), np.uint8)
  rng = np.random.default_rng(0)
  trials = 3000
  for _ in range(trials):
    ra.randaugment(image, "rand-m9-mstd0.5-inc1", rng, FILL)
  assert 0.46 < len(calls) / (2 * trials) < 0.54  # p = 0.5 per picked op
  names = [c[0] for c in calls]
  counts = np.array([names.count(n) for n in ra.INCREASING_OPS])
  expected = len(calls) / 15
  assert counts.min() > 0.7 * expected and counts.max() < 1.3 * expected, counts
  magnitudes = np.array([c[1] for c in calls])
  assert magnitudes.min() >= 0 and magnitudes.max() <= 10
  assert abs(magnitudes.mean() - 9) < 0.05 and 0.4 < magnitudes.std() < 0.55
  calls.clear()
  for _ in range(200):
    ra.randaugment(image, "rand-m7-p1", rng, FILL)
  assert len(calls) == 400 and {c[1] for c in calls} == {7}
  assert {c[0] for c in calls} <= set(ra.ORIGINAL_OPS)
  calls.clear()
  for _ in range(200):
    ra.randaugment(image, "rand-m7-mstd101-p1", rng, FILL)  # uniform in [0, 7]
  magnitudes = np.array([c[1] for c in calls])
  assert magnitudes.min() < 0.5 and 6.5 < magnitudes.max() <= 7


# ---------------------------------------------------------- random erasing


def test_random_erasing_distribution():
  height, width = 24, 32
  image = np.random.default_rng(0).normal(size=(height, width, 3)).astype(np.float32)
  original = image.copy()
  rng = np.random.default_rng(1)
  boxes, erased_values = [], []
  draws = 4000
  for _ in range(draws):
    out = random_erasing.random_erase(image, 0.25, rng)
    changed = np.any(out != image, -1)
    if not changed.any():
      assert out is image
      continue
    rows, cols = np.nonzero(changed)
    top, left, h, w = rows.min(), cols.min(), rows.max() + 1 - rows.min(), cols.max() + 1 - cols.min()
    assert changed.sum() == h * w  # one solid box; everything else unchanged
    assert np.all(out[top:top + h, left:left + w] != image[top:top + h, left:left + w])
    erased_values.append(out[top:top + h, left:left + w].reshape(-1))
    boxes.append((top, left, h, w))
  np.testing.assert_array_equal(image, original)  # the input is never modified
  assert 0.22 < len(boxes) / draws < 0.28
  top, left, h, w = np.array(boxes).T
  assert np.all((top >= 0) & (left >= 0) & (h < height) & (w < width))
  assert np.all((top + h <= height) & (left + w <= width))
  assert (top == 0).any() and (top + h == height).any() and (left + w == width).any()
  area = height * width
  # h = round(sqrt(a * r)), w = round(sqrt(a / r)): the unrounded box has
  # area in [0.02, 1/3] of the image and aspect h / w in [0.3, 1 / 0.3].
  assert np.all((h + 0.5) * (w + 0.5) >= 0.02 * area) and np.all((h - 0.5) * (w - 0.5) <= area / 3)
  assert np.all((h + 0.5) / (w - 0.5) >= 0.3) and np.all((h - 0.5) / (w + 0.5) <= 1 / 0.3)
  fraction = h * w / area
  assert fraction.min() < 0.04 and fraction.max() > 0.28
  values = np.concatenate(erased_values)  # mode 'pixel': per-pixel N(0, 1)
  assert abs(values.mean()) < 0.05 and abs(values.std() - 1) < 0.05
  never = [random_erasing.random_erase(image, 0.0, rng) is image for _ in range(200)]
  always = [random_erasing.random_erase(image, 1.0, rng) is not image for _ in range(200)]
  assert all(never) and sum(always) >= 195
  a = random_erasing.random_erase(image, 0.5, np.random.default_rng(3))
  np.testing.assert_array_equal(a, random_erasing.random_erase(image, 0.5, np.random.default_rng(3)))


# ----------------------------------------------------------------- pipeline


AUG = dict(randaugment="rand-m9-mstd0.5-inc1", random_erase=0.25)


def test_digits_stream_with_augmentations_is_deterministic_and_resumable():
  kw = dict(global_batch_size=32, image_size=16, seed=4)
  full = take(data.train_iterator(make_config(**AUG), "digits", "train", **kw), 4)
  again = take(data.train_iterator(make_config(**AUG), "digits", "train", **kw), 4)
  resumed = take(data.train_iterator(make_config(**AUG), "digits", "train", start_step=2, **kw), 2)
  for a, b in zip(full, again):
    assert_batches_equal(a, b)
  assert_batches_equal(full[2], resumed[0])
  assert_batches_equal(full[3], resumed[1])
  plain = take(data.train_iterator(make_config(), "digits", "train", **kw), 4)
  images = np.concatenate([b["image"] for b in full])
  np.testing.assert_array_equal(np.concatenate([b["id"] for b in full]),
                                np.concatenate([b["id"] for b in plain]))  # same order
  assert not np.array_equal(images, np.concatenate([b["image"] for b in plain]))
  # Erasing writes N(0, 1) values: beyond the [-1, 1] range of (x/255 - 0.5) / 0.5 in some images.
  outside = np.any(np.abs(images) > 1 + 1e-6, axis=(1, 2, 3)).mean()
  assert 0.05 < outside < 0.3
  erase_only = next(data.train_iterator(make_config(random_erase=0.25), "digits", "train", **kw))
  assert np.any(np.abs(erase_only["image"]) > 1 + 1e-6)
  ra_only = next(data.train_iterator(make_config(randaugment=AUG["randaugment"]), "digits", "train", **kw))
  assert np.abs(ra_only["image"]).max() <= 1 + 1e-6  # no erasing
  changed = np.any(np.abs(ra_only["image"] - plain[0]["image"]) > 0.01, axis=(1, 2, 3))
  assert changed.mean() > 0.5  # most images changed by at least one op


def test_augmentations_off_gives_the_unchanged_stream():
  seed, batch = 9, 24
  it = data.train_iterator(make_config(), "digits", "train", global_batch_size=batch,
                           image_size=12, seed=seed)
  images = sources.open_source("digits", make_config()).images("train")
  opts = transforms.AugmentOptions.from_config(make_config())
  for step, got in enumerate(take(it, 3)):
    rng = np.random.default_rng([seed, 1, 0, step])  # the draws as made before aug_seed existed
    draws = {"area": rng.random((batch, 10)), "log_ratio": rng.random((batch, 10)),
             "position": rng.random((batch, 2)), "flip": rng.random(batch)}
    expected = transforms.train_transform(images[got["id"]], draws, 12, opts)
    np.testing.assert_array_equal(got["image"], expected)


def test_single_image_path_matches_batched_path_with_augmentations():
  opts = transforms.AugmentOptions(crop_scale=(0.25, 0.25), crop_ratio=(1, 1), mean=(0.485, 0.456, 0.406),
                                   std=(0.229, 0.224, 0.225), **AUG)
  plain = transforms.AugmentOptions(crop_scale=(0.25, 0.25), crop_ratio=(1, 1),
                                    mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
  image = rgb(16, 16, seed=2)
  n = 24
  draws = transforms.draw_train_randomness(np.random.default_rng(0), n)
  batched = transforms.train_transform(np.repeat(image[None], n, 0), draws, 8, opts)
  base = transforms.train_transform(np.repeat(image[None], n, 0), draws, 8, plain)
  changed = 0
  for j in range(n):
    one = transforms.train_transform_one(image, {k: v[j] for k, v in draws.items()}, 8, opts)
    np.testing.assert_allclose(one, batched[j], atol=1e-5)
    changed += not np.allclose(batched[j], base[j], atol=1e-5)
  assert changed >= n // 3  # RandAugment / erasing changed many of them


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("augfolder")
  rng = np.random.default_rng(0)
  for name in ("a", "b"):
    os.makedirs(root / "train" / name)
    for i in range(3):
      pixels = rng.integers(0, 256, size=(20 + i, 18, 3), dtype=np.uint8)
      image = Image.fromarray(pixels)
      (image.convert("L") if i == 1 else image).save(root / "train" / name / f"img{i}.png")
  return str(root)


def test_folder_stream_with_augmentations_is_deterministic_and_resumable(small_folder):
  cfg = make_config(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), **AUG)
  kw = dict(global_batch_size=4, image_size=8, seed=3)
  spec = f"folder:{small_folder}"
  full = take(data.train_iterator(cfg, spec, "train", **kw), 4)
  resumed = take(data.train_iterator(cfg, spec, "train", start_step=2, **kw), 2)
  assert_batches_equal(full[2], resumed[0])
  assert_batches_equal(full[3], resumed[1])
  plain = take(data.train_iterator(make_config(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
                                   spec, "train", **kw), 4)
  assert not np.array_equal(np.stack([b["image"] for b in full]), np.stack([b["image"] for b in plain]))
