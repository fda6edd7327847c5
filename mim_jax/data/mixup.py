"""Mixup, CutMix and label smoothing for fine-tuning, on device with static shapes.

Follows timm's ``Mixup`` in its 'batch' mode, which MAE's fine-tune recipe uses (mixup 0.8,
cutmix 1.0, smoothing 0.1): one lambda for the whole batch, image ``i`` mixed with image
``B - 1 - i``, CutMix picked with probability ``switch_prob`` when both alphas are positive, the
CutMix lambda corrected to the area actually kept. Everything is traceable under ``jit``: the
choices are made with ``jnp.where`` and the box is a mask built from index comparisons.
"""

import jax
import jax.numpy as jnp


def smooth_one_hot(labels, num_classes: int, smoothing: float):
  """float32 [B, num_classes]: ``on = 1 - smoothing + off`` at the label, ``off = smoothing / C``
  elsewhere, so that each row sums to 1."""
  off = smoothing / num_classes
  on = 1.0 - smoothing + off
  hit = labels[:, None] == jnp.arange(num_classes)[None, :]
  return jnp.where(hit, on, off).astype(jnp.float32)


def soft_cross_entropy(logits, targets):
  """Mean over the batch of ``-sum(targets * log_softmax(logits))``, in float32."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.mean(jnp.sum(targets.astype(jnp.float32) * logp, axis=-1))


def cutmix_box(key, height: int, width: int, lam):
  """timm's CutMix box for a (traced) ``lam``: cut ratio ``sqrt(1 - lam)``, ``cut_h = int(H * r)``,
  ``cut_w = int(W * r)``, a centre drawn uniformly from ``[0, H) x [0, W)``, and the box
  ``[cy - cut_h // 2, cy + cut_h // 2) x [cx - cut_w // 2, cx + cut_w // 2)`` clipped to the image.

  Returns int32 scalars (top, bottom, left, right) with 0 <= top <= bottom <= H and likewise for
  left/right; rows ``top:bottom`` and columns ``left:right`` are the box.
  """
  ratio = jnp.sqrt(jnp.clip(1.0 - jnp.asarray(lam, jnp.float32), 0.0, 1.0))
  cut_h = jnp.floor(height * ratio).astype(jnp.int32)
  cut_w = jnp.floor(width * ratio).astype(jnp.int32)
  cy, cx = jax.random.randint(key, (2,), 0, jnp.array([height, width]), dtype=jnp.int32)
  top = jnp.clip(cy - cut_h // 2, 0, height)
  bottom = jnp.clip(cy + cut_h // 2, 0, height)
  left = jnp.clip(cx - cut_w // 2, 0, width)
  right = jnp.clip(cx + cut_w // 2, 0, width)
  return top, bottom, left, right


def mix_batch(key, images, labels, num_classes: int, *, mixup_alpha: float = 0.8,
              cutmix_alpha: float = 1.0, switch_prob: float = 0.5, prob: float = 1.0,
              smoothing: float = 0.1):
  """Mixup or CutMix of a batch with its reverse, and the matching smoothed soft targets.

  images: [B, H, W, C] float; labels: [B] int. Everything but ``key``, ``images`` and ``labels`` is
  static. An alpha of 0 disables that kind of mixing; with both 0 the images are returned as they
  are and the targets are the smoothed one-hots. With probability ``1 - prob`` nothing is mixed
  (lam = 1).

  Returns:
    mixed: [B, H, W, C] in the images' dtype.
    targets: float32 [B, num_classes], ``lam * y + (1 - lam) * flip(y)`` with ``y`` smoothed.
    info: dict with 'lam' (float32 scalar, the lambda the targets use: for CutMix
      ``1 - box_area / (H * W)``), 'use_cutmix' (bool scalar) and 'box' (int32 [4]: top, bottom,
      left, right; all zeros unless CutMix was applied).
  """
  if images.ndim != 4:
    raise ValueError(f"images must be [B, H, W, C], got shape {images.shape}")
  batch, height, width = images.shape[:3]
  if labels.shape != (batch,):
    raise ValueError(f"labels must be [{batch}], got shape {labels.shape}")
  if batch % 2:
    raise ValueError(f"batch size must be even to pair image i with B-1-i, got {batch}")
  targets = smooth_one_hot(labels, num_classes, smoothing)
  use_mixup, use_cut = mixup_alpha > 0, cutmix_alpha > 0
  if not (use_mixup or use_cut):
    info = {"lam": jnp.ones((), jnp.float32), "use_cutmix": jnp.zeros((), bool),
            "box": jnp.zeros((4,), jnp.int32)}
    return images, targets, info

  key_coins, key_lam, key_box = jax.random.split(key, 3)
  coins = jax.random.uniform(key_coins, (2,))
  apply = coins[0] < prob
  if use_mixup and use_cut:
    use_cutmix = coins[1] < switch_prob
  else:
    use_cutmix = jnp.asarray(use_cut)
  use_cutmix = use_cutmix & apply
  # One beta call for the enabled kinds (one sampler to compile): [mixup lam?, cutmix lam?].
  alphas = jnp.array([a for a in (mixup_alpha, cutmix_alpha) if a > 0], jnp.float32)
  lams = jax.random.beta(key_lam, alphas, alphas)
  lam = jnp.where(use_cutmix, lams[-1], lams[0])
  lam = jnp.where(apply, lam, 1.0).astype(jnp.float32)

  # CutMix: a 0/1 map with 0 inside the box; mixup: lam everywhere. Then one blend for both;
  # with a 0/1 weight the blend copies pixels exactly.
  top, bottom, left, right = cutmix_box(key_box, height, width, lam)
  rows = jnp.arange(height, dtype=jnp.int32)[:, None]
  cols = jnp.arange(width, dtype=jnp.int32)[None, :]
  in_box = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
  area = (bottom - top) * (right - left)
  lam_corrected = 1.0 - area.astype(jnp.float32) / (height * width)
  lam = jnp.where(use_cutmix, lam_corrected, lam)
  weight = jnp.where(use_cutmix, jnp.where(in_box, 0.0, 1.0), lam)[None, :, :, None]

  x = images.astype(jnp.float32)
  mixed = (weight * x + (1.0 - weight) * jnp.flip(x, axis=0)).astype(images.dtype)
  targets = lam * targets + (1.0 - lam) * jnp.flip(targets, axis=0)
  box = jnp.where(use_cutmix, jnp.stack([top, bottom, left, right]), 0).astype(jnp.int32)
  return mixed, targets, {"lam": lam, "use_cutmix": use_cutmix, "box": box}
