"""Masking strategies as pure functions of (key, shapes) -> index arrays.

Every count depends only on static arguments, so the arrays have static shapes under ``jit``.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np


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


def topk_masking(probs, mask_ratio: float):
  """MLO-MAE's deterministic mask: in each row of ``probs`` [B, L] the patches with the highest
  probability are masked, the rest kept. No randomness, no gradient (``probs`` goes through
  ``stop_gradient`` before the sort; the probabilities reach the loss through
  ``losses.probability_weighted_mse`` instead).

  Counts follow ``random_masking``: ``K = num_kept(L, ratio) = int(L * (1 - ratio))`` patches
  are kept and ``L - K`` masked (``int(L * ratio)`` whenever ``L * ratio`` is an integer, e.g.
  192 of 256 or 147 of 196 at 0.75). Ties are broken by index: the patches are ordered by a
  stable ascending sort of ``p``, so among equal probabilities the lower index is kept first and
  the higher index masked first.

  Returns (ids_keep int32 [B, K], ids_restore int32 [B, L], mask float32 [B, L]) with the
  conventions of ``random_masking``: ``ids_keep`` in ascending order of ``p``, ``ids_restore``
  the inverse of the shuffle ``[kept..., masked...]``, mask 1 on masked patches.
  """
  num_patches = probs.shape[1]
  kept = num_kept(num_patches, mask_ratio)
  scores = jax.lax.stop_gradient(probs)
  ids_shuffle = jnp.argsort(scores, axis=1, stable=True).astype(jnp.int32)
  ids_restore = jnp.argsort(ids_shuffle, axis=1).astype(jnp.int32)
  mask = (ids_restore >= kept).astype(jnp.float32)
  return ids_shuffle[:, :kept], ids_restore, mask


def num_masked_cells(num_cells: int, mask_ratio: float) -> int:
  """SimMIM's count: ``ceil(cells * ratio)`` (49 cells at 0.6: 30)."""
  masked = math.ceil(num_cells * mask_ratio)
  if not 0 < masked < num_cells:
    raise ValueError(f"mask_ratio {mask_ratio} masks {masked} of {num_cells} cells")
  return masked


def block_masking(key, batch_size: int, num_cells: int, mask_ratio: float):
  """SimMIM's masking on the grid of mask cells: ``ceil(cells * ratio)`` cells chosen by a
  random permutation. Returns float32 [B, cells], 1 on masked cells."""
  masked = num_masked_cells(num_cells, mask_ratio)
  ranks = jnp.argsort(jnp.argsort(jax.random.uniform(key, (batch_size, num_cells)), axis=1),
                      axis=1)
  return (ranks < masked).astype(jnp.float32)


def cells_to_patches(cell_values, cell_grid: tuple, scale: int):
  """[B, ch * cw] values on mask cells -> [B, (ch * scale) * (cw * scale)] on the patches they
  cover (each cell is ``scale x scale`` patches; row-major order on both grids)."""
  b = cell_values.shape[0]
  x = cell_values.reshape(b, *cell_grid)
  x = jnp.repeat(jnp.repeat(x, scale, axis=1), scale, axis=2)
  return x.reshape(b, -1)


def cell_patch_ids(cell_grid: tuple, scale: int) -> np.ndarray:
  """int32 [cells, scale * scale]: the patch indices (row-major on the patch grid) of each cell."""
  ch, cw = cell_grid
  rows = np.arange(ch)[:, None, None, None] * scale + np.arange(scale)[None, None, :, None]
  cols = np.arange(cw)[None, :, None, None] * scale + np.arange(scale)[None, None, None, :]
  return (rows * (cw * scale) + cols).reshape(ch * cw, scale * scale).astype(np.int32)


# --------------------------------------------------------------------------------------------
# AMT: weighted ordering, then masked / thrown / visible with static counts (amt.md).
# --------------------------------------------------------------------------------------------
def amt_counts(num_units: int, mask_ratio: float, throw_ratio: float, rounding: str):
  """(masked, thrown, visible) out of ``num_units`` patches or cells.

  'floor' is MAE + AMT's code: masked = int(L r), thrown = int(L (r + t)) - masked (196 at
  0.45 / 0.40: 88 / 78 / 30). 'ceil' is SimMIM + AMT's: ceil(L r) and ceil(L t) (49 cells at
  0.44 / 0.26: 22 / 13 / 14).
  """
  if rounding == "floor":
    masked = int(num_units * mask_ratio)
    thrown = int(num_units * (mask_ratio + throw_ratio)) - masked
  elif rounding == "ceil":
    masked = math.ceil(num_units * mask_ratio)
    thrown = math.ceil(num_units * throw_ratio)
  else:
    raise ValueError(f"rounding must be 'floor' or 'ceil', got {rounding!r}")
  visible = num_units - masked - thrown
  if masked < 1 or thrown < 0 or visible < 1:
    raise ValueError(f"mask ratio {mask_ratio} and throw ratio {throw_ratio} leave "
                     f"{masked} masked / {thrown} thrown / {visible} visible of {num_units}")
  return masked, thrown, visible


def weighted_order(key, weights):
  """A random ordering [B, L] of each row's units, drawn without replacement with probability
  proportional to ``weights`` [B, L] (Gumbel-top-k: the same distribution as
  ``torch.multinomial(weights, L)``): the first entry is unit i with probability w_i / sum(w)."""
  gumbel = jax.random.gumbel(key, weights.shape)
  scores = jnp.log(weights.astype(jnp.float32) + 1e-6) + gumbel
  return jnp.argsort(-scores, axis=1).astype(jnp.int32)


def amt_split(order, counts, throw_lowest: bool = False):
  """(masked, thrown, visible) unit ids [B, n] from an ``order`` [B, L] (highest weight first).

  The first ``masked`` of the order are masked; then, as AMT's code does, the next ``thrown``
  are thrown and the rest stay visible. ``throw_lowest`` throws the last ``thrown`` instead (the
  lowest weights) and keeps the middle ranks visible (the paper's figure).
  """
  masked, thrown, _ = counts
  if throw_lowest:
    cut = order.shape[1] - thrown
    return order[:, :masked], order[:, cut:], order[:, masked:cut]
  return order[:, :masked], order[:, masked:masked + thrown], order[:, masked + thrown:]


def partition_masking(key, batch_size: int, num_patches: int, num_views: int):
  """MI-MAE's complementary masks: one random permutation of the L patches per image, view k
  keeps its k-th block of ``L // N`` patches (the views' visible sets are disjoint and, when N
  divides L, cover the image).

  Returns ids_keep [B * N, K], ids_restore [B * N, L] and mask [B * N, L] as ``random_masking``
  does, view k of image b in row ``b * N + k``.
  """
  kept = num_patches // num_views
  if kept < 1:
    raise ValueError(f"{num_views} views cannot share {num_patches} patches")
  perm = jnp.argsort(jax.random.uniform(key, (batch_size, num_patches)), axis=1).astype(jnp.int32)
  blocks = perm[:, :kept * num_views].reshape(batch_size, num_views, kept)
  rest = perm[:, kept * num_views:]
  shuffles = []
  for k in range(num_views):  # view k: its own block first, then every other patch
    others = [blocks[:, j] for j in range(num_views) if j != k] + [rest]
    shuffles.append(jnp.concatenate([blocks[:, k]] + others, axis=1))
  ids_shuffle = jnp.stack(shuffles, axis=1).reshape(batch_size * num_views, num_patches)
  ids_restore = jnp.argsort(ids_shuffle, axis=1).astype(jnp.int32)
  mask = (ids_restore >= kept).astype(jnp.float32)
  return ids_shuffle[:, :kept], ids_restore, mask
