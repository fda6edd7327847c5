"""Mixup / CutMix / label smoothing against timm's batch-mode semantics.

One compiled function per pair of alphas (the beta sampler is slow to compile on CPU), called
for many keys.
"""

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np

from mim_jax.data import mixup

B, H, W, C, NUM_CLASSES = 6, 12, 20, 3, 10
NUM_KEYS = 128

_TRACES = collections.Counter()


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(B, H, W, C)).astype(np.float32)
  labels = rng.permutation(NUM_CLASSES)[:B].astype(np.int32)  # distinct, so flip(y) != y
  return jnp.asarray(images), jnp.asarray(labels)


@functools.lru_cache(maxsize=None)
def _mixer(mixup_alpha=0.8, cutmix_alpha=1.0):
  """jit(mix_batch) for these static alphas; the key is ``fold_in(key, i)`` and ``prob`` is
  traced, so one compile serves every key and probability."""
  def fn(key, i, images, labels, prob):
    _TRACES[mixup_alpha, cutmix_alpha] += 1
    return mixup.mix_batch(jax.random.fold_in(key, i), images, labels, NUM_CLASSES,
                           mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=prob)
  return jax.jit(fn)


def _run_many(seed=0, prob=1.0, **alphas):
  """(images, labels, mixed [K, ...], targets [K, ...], info of [K, ...] arrays) over K keys."""
  images, labels = _batch(seed)
  fn, key = _mixer(**alphas), jax.random.key(seed)
  outs = [fn(key, i, images, labels, prob) for i in range(NUM_KEYS)]
  mixed, targets, info = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *outs)
  return np.asarray(images), np.asarray(labels), mixed, targets, info


def _smooth(labels, smoothing=0.1):
  y = np.full((len(labels), NUM_CLASSES), smoothing / NUM_CLASSES, np.float64)
  y[np.arange(len(labels)), labels] = 1 - smoothing + smoothing / NUM_CLASSES
  return y


def _mixed_targets(lams, y):
  lams = np.asarray(lams, np.float64)[:, None, None]
  return lams * y + (1 - lams) * y[::-1]


def test_mixup_label_weights_equal_pixel_lambda():
  images, labels, mixed, targets, info = _run_many(cutmix_alpha=0.0)
  assert not info["use_cutmix"].any()
  np.testing.assert_array_equal(info["box"], 0)
  flipped = images[::-1]
  # mixed - flip(x) = lam * (x - flip(x)): least squares on the pixels, per key
  d = images - flipped
  lams = np.einsum("kbhwc,bhwc->k", mixed - flipped, d) / np.sum(d * d)
  np.testing.assert_allclose(
      mixed, lams[:, None, None, None, None] * images + (1 - lams[:, None, None, None, None])
      * flipped, atol=1e-5)
  np.testing.assert_allclose(info["lam"], lams, atol=1e-5)
  np.testing.assert_allclose(targets, _mixed_targets(lams, _smooth(labels)), atol=1e-5)
  assert np.all((lams >= 0) & (lams <= 1)) and lams.std() > 0.1  # Beta(0.8, 0.8) varies


def test_cutmix_area_matches_lambda_and_targets():
  images, labels, mixed, targets, info = _run_many(seed=1, mixup_alpha=0.0)
  assert info["use_cutmix"].all()
  flipped = images[::-1]
  from_partner = np.all((mixed == flipped) & (mixed != images), axis=-1)  # [K, B, H, W]
  from_self = np.all(mixed == images, axis=-1)
  assert np.all(from_partner | from_self)
  top, bottom, left, right = info["box"].T
  assert np.all((0 <= top) & (top <= bottom) & (bottom <= H))
  assert np.all((0 <= left) & (left <= right) & (right <= W))
  rows, cols = np.arange(H)[None, :, None], np.arange(W)[None, None, :]
  in_box = ((rows >= top[:, None, None]) & (rows < bottom[:, None, None])
            & (cols >= left[:, None, None]) & (cols < right[:, None, None]))  # [K, H, W]
  # the same region for every image of the batch, and it is the reported box
  np.testing.assert_array_equal(from_partner, np.broadcast_to(in_box[:, None], from_partner.shape))
  fraction = from_partner.mean(axis=(1, 2, 3))
  np.testing.assert_allclose(fraction, (bottom - top) * (right - left) / (H * W))
  np.testing.assert_allclose(1 - info["lam"], fraction, atol=1e-6)
  np.testing.assert_allclose(targets, _mixed_targets(1 - fraction, _smooth(labels)), atol=1e-5)
  assert np.mean(fraction > 0) > 0.5


def test_cutmix_box_bounds_and_size():
  box = jax.jit(lambda key, i, lam: mixup.cutmix_box(jax.random.fold_in(key, i), H, W, lam))
  lams = np.linspace(0.0, 1.0, 257, dtype=np.float32)
  key = jax.random.key(3)
  top, bottom, left, right = np.array(
      [[int(v) for v in box(key, i, lam)] for i, lam in enumerate(lams)]).T
  assert np.all((0 <= top) & (top <= bottom) & (bottom <= H))
  assert np.all((0 <= left) & (left <= right) & (right <= W))
  ratio = np.sqrt(1 - lams.astype(np.float64))
  cut_h, cut_w = (H * ratio).astype(int), (W * ratio).astype(int)
  # each side is 2 * (cut // 2) unless the box was clipped at an image border
  assert np.all((bottom - top == 2 * (cut_h // 2)) | (top == 0) | (bottom == H))
  assert np.all((right - left == 2 * (cut_w // 2)) | (left == 0) | (right == W))
  assert np.all(bottom - top <= 2 * (cut_h // 2)) and np.all(right - left <= 2 * (cut_w // 2))
  assert top[0] < bottom[0] and left[0] < right[0]  # lam = 0 gives a real box
  np.testing.assert_array_equal(bottom[-1] - top[-1], 0)  # lam = 1 an empty one


def test_switch_probability_and_default_lambda():
  images, labels, mixed, targets, info = _run_many(seed=2)  # MAE defaults: 0.8 / 1.0 / 0.5
  rate = info["use_cutmix"].mean()
  assert 0.35 < rate < 0.65, rate
  np.testing.assert_allclose(targets, _mixed_targets(info["lam"], _smooth(labels)), atol=1e-5)
  mix = ~info["use_cutmix"]
  np.testing.assert_array_equal(info["box"][mix], 0)
  lam = info["lam"][mix][:, None, None, None, None]
  np.testing.assert_allclose(mixed[mix], lam * images + (1 - lam) * images[::-1], atol=1e-5)
  # cutmix rows are 0/1 copies of the two images
  cut = mixed[~mix]
  assert np.all((cut == images) | (cut == images[::-1]))


def test_mix_probability():
  # prob = 0: both alphas active but the coin never lands
  images, labels, mixed, targets, info = _run_many(seed=4, prob=0.0)
  np.testing.assert_array_equal(mixed, np.broadcast_to(images, mixed.shape))
  np.testing.assert_allclose(targets, np.broadcast_to(_smooth(labels), targets.shape), atol=1e-7)
  assert np.all(info["lam"] == 1) and not info["use_cutmix"].any()
  # prob = 0.5: about half the batches are left alone
  images, labels, mixed, targets, info = _run_many(seed=5, prob=0.5)
  untouched = np.all(mixed == images, axis=(1, 2, 3, 4))
  assert 0.3 < untouched.mean() < 0.7, untouched.mean()
  np.testing.assert_array_equal(info["lam"][untouched], 1.0)


def test_no_mixing_when_disabled():
  images, labels, mixed, targets, info = _run_many(mixup_alpha=0.0, cutmix_alpha=0.0)
  np.testing.assert_array_equal(mixed, np.broadcast_to(images, mixed.shape))
  np.testing.assert_allclose(targets, np.broadcast_to(_smooth(labels), targets.shape), atol=1e-7)
  assert np.all(info["lam"] == 1) and not info["use_cutmix"].any()
  np.testing.assert_array_equal(info["box"], 0)


def test_smooth_one_hot_and_soft_cross_entropy():
  labels = jnp.array([0, 3, 9, 3])
  y = np.asarray(mixup.smooth_one_hot(labels, NUM_CLASSES, 0.1))
  assert y.dtype == np.float32
  np.testing.assert_allclose(y, _smooth(np.asarray(labels)), rtol=1e-6)
  np.testing.assert_allclose(y.sum(1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(y[np.arange(4), [0, 3, 9, 3]], 0.91, rtol=1e-6)

  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4, NUM_CLASSES)).astype(np.float32) * 3
  targets = rng.dirichlet(np.ones(NUM_CLASSES), size=4).astype(np.float32)
  z = logits.astype(np.float64)
  logp = z - z.max(1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(1, keepdims=True))
  expected = -(targets * logp).sum(1).mean()
  np.testing.assert_allclose(mixup.soft_cross_entropy(logits, targets), expected, rtol=1e-5)
  # bfloat16 logits are promoted: the loss is float32
  assert mixup.soft_cross_entropy(jnp.asarray(logits, jnp.bfloat16), targets).dtype == jnp.float32


def test_jit_traces_once():
  images, labels = _batch()
  fn = _mixer()
  first = fn(jax.random.key(10), 0, images, labels, 1.0)
  second = fn(jax.random.key(11), 7, images, labels, 1.0)
  assert _TRACES[0.8, 1.0] == 1
  assert not np.array_equal(np.asarray(first[0]), np.asarray(second[0]))
  assert first[1].shape == (B, NUM_CLASSES) and first[2]["box"].shape == (4,)
  assert first[2]["lam"].shape == () and first[2]["use_cutmix"].dtype == jnp.bool_
