"""Reconstruction losses on patch sequences."""

import jax.numpy as jnp


def patch_targets(patches, norm_pix: bool, eps: float = 1e-6):
  """MAE targets: the patches, or with ``norm_pix`` each patch normalized by its own mean and
  unbiased variance: (x - mean) / sqrt(var + eps)."""
  if not norm_pix:
    return patches
  mean = patches.mean(axis=-1, keepdims=True)
  var = patches.var(axis=-1, keepdims=True, ddof=1)
  return (patches - mean) / jnp.sqrt(var + eps)


def masked_mse(pred, target, mask):
  """Mean over patches where ``mask`` is 1 of the per-patch mean squared error.

  pred, target: [B, L, D]; mask: [B, L] with 1 = masked (the loss is taken there only).
  """
  per_patch = jnp.mean(jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32)), -1)
  return jnp.sum(per_patch * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def probability_weighted_mse(pred, target, mask, probs):
  """MLO-MAE's pre-training loss: sum_j m_j p_j l_j / sum_j m_j over all rows and patches, with
  l_j the per-patch mean squared error, m_j the mask (1 = masked) and p_j the masking network's
  probability for patch j. The gradient reaches ``probs`` (and through it the masking network);
  the mask is a constant. The denominator counts masked patches, not their probabilities.

  pred, target: [B, L, D]; mask, probs: [B, L].
  """
  per_patch = jnp.mean(jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32)), -1)
  weighted = per_patch * probs.astype(jnp.float32) * mask
  return jnp.sum(weighted) / jnp.maximum(jnp.sum(mask), 1.0)


def masked_l1(pred, target, mask, channels: int, eps: float = 1e-5):
  """SimMIM's loss: L1 over the pixels of masked patches, divided by (masked pixels + eps) and
  by the channels: sum(|pred - x| * mask) / (sum(mask) + eps) / C with the mask at pixel level.

  pred, target: [B, L, p*p*C]; mask: [B, L] with 1 = masked.
  """
  diff = jnp.abs(pred.astype(jnp.float32) - target.astype(jnp.float32))
  pixels_per_patch = pred.shape[-1] // channels
  masked_pixels = jnp.sum(mask) * pixels_per_patch
  return jnp.sum(diff.sum(-1) * mask) / (masked_pixels + eps) / channels
