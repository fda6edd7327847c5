"""MixMIM's mixing (mixmim.md): one shared mask per group of the batch, partners, un-mixing.

A *group* is the slice of the global batch one device holds: the official code draws one mask per
step per device and pairs image i of a device's batch with image b - 1 - i of the same device. The
global batch [G * b, ...] is viewed as [G, b, ...]; under the trainer's 'data' sharding each group
lies on one device, so flipping inside a group moves no data between devices.
"""

import jax
import jax.numpy as jnp


def partners(x, groups: int):
  """Each example's partner: the batch reversed inside each of ``groups`` equal groups.
  x: [G * b, ...] -> [G * b, ...]; an involution (partners(partners(x)) == x)."""
  n = x.shape[0]
  if groups < 1 or n % groups:
    raise ValueError(f"a batch of {n} does not split into {groups} mixing groups")
  return x.reshape(groups, n // groups, *x.shape[1:])[:, ::-1].reshape(x.shape)


def num_mixed(num_cells: int, ratio: float) -> int:
  """Cells filled from the partner: ``int(cells * ratio)`` (49 at 0.5: 24)."""
  n = int(num_cells * ratio)
  if not 0 < n < num_cells:
    raise ValueError(f"mask_ratio {ratio} mixes {n} of {num_cells} cells")
  return n


def group_masks(key, groups: int, num_cells: int, ratio: float):
  """float32 [G, cells]: one random mask per group, ``int(cells * ratio)`` ones (1 = the cell
  shows the partner image)."""
  n = num_mixed(num_cells, ratio)
  ranks = jnp.argsort(jnp.argsort(jax.random.uniform(key, (groups, num_cells)), axis=1), axis=1)
  return (ranks < n).astype(jnp.float32)


def per_example(group_mask, batch_size: int):
  """[G, N] -> [G * b, N]: every example of a group gets its group's mask."""
  groups = group_mask.shape[0]
  return jnp.repeat(group_mask, batch_size // groups, axis=0)


def upsample(mask, grid: tuple, factor: int):
  """[B, h * w] on a ``grid`` (h, w) -> [B, (h * factor) * (w * factor)], nearest (each value
  covers factor x factor positions; row-major on both grids)."""
  b = mask.shape[0]
  m = mask.reshape(b, *grid).repeat(factor, axis=1).repeat(factor, axis=2)
  return m.reshape(b, -1)


def mix(x, mask, groups: int):
  """x [B, N, ...] tokens, mask [B, N]: x where the mask is 0, the partner's x where it is 1."""
  m = mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim)).astype(x.dtype)
  return x * (1 - m) + partners(x, groups) * m


def unmix(pred, mask, groups: int):
  """The two decoder copies [2B, N, D] (copy 1: rows 0..B-1 kept the unmasked tokens, copy 2
  kept the masked ones) -> [B, N, D], every position of image i predicted from a copy in which
  image i's token there was hidden: copy 1 of example i where the mask is 1, copy 2 of i's partner
  where it is 0 (that mixed example held image i's tokens at its masked positions)."""
  b = pred.shape[0] // 2
  m = mask[:, :, None].astype(pred.dtype)
  return pred[:b] * m + partners(pred[b:], groups) * (1 - m)
