"""Masking strategies as pure functions of (key, shapes) -> index arrays.

Every count depends only on static arguments, so the arrays have static shapes under ``jit``.
"""

import jax
import jax.numpy as jnp


def num_kept(num_patches: int, mask_ratio: float) -> int:
  """Patches the encoder sees: ``int(L * (1 - ratio))``, as MAE computes it."""
  kept = int(num_patches * (1 - mask_ratio))
  if not 0 < kept <= num_patches:
    raise ValueError(f"mask_ratio {mask_ratio} keeps {kept} of {num_patches} patches")
  return kept


def random_masking(key, batch_size: int, num_patches: int, mask_ratio: float):
  """MAE's per-sample uniform random masking.

  Returns:
    ids_keep: int32 [B, K], the kept patch indices (in shuffle order).
    ids_restore: int32 [B, L], the inverse of the shuffle permutation: position ``j`` of the
      un-shuffled sequence is token ``ids_restore[j]`` of ``[kept..., masked...]``.
    mask: float32 [B, L], 1 on masked patches, 0 on kept ones, in the original order.
  """
  kept = num_kept(num_patches, mask_ratio)
  noise = jax.random.uniform(key, (batch_size, num_patches))
  ids_shuffle = jnp.argsort(noise, axis=1).astype(jnp.int32)
  ids_restore = jnp.argsort(ids_shuffle, axis=1).astype(jnp.int32)
  ids_keep = ids_shuffle[:, :kept]
  mask = (ids_restore >= kept).astype(jnp.float32)
  return ids_keep, ids_restore, mask
