"""AMT, attention-driven masking and throwing (amt.md): a masking strategy any method can select
with ``model.masking='amt'`` (MAE, SimMIM), configured by ``config.amt``.

``AMTMasking`` holds what the strategy needs inside a training step:
  * the cache: one attention map [h, w] per training image (indexed by the dataset's example
    id), ``extra["amt_cache"]`` in the train state, so it is checkpointed and a resumed run
    continues with it; all ones until the first refresh (``mim_jax.masking.amt_refresh``);
  * the schedule: stage 'random' (the method's plain masking, nothing thrown) before
    ``amt.start_epoch``, stage 'amt' from then on; refreshes at the start and every
    ``amt.interval_epochs`` after;
  * the sampling: the cached map aligned with the batch's crop and flip (``amt_align``), summed
    over each sampling unit (a patch for MAE, a 32 px mask cell for SimMIM), then a weighted
    ordering without replacement cut into masked / thrown / visible with static counts.
"""

import jax.numpy as jnp
from ml_collections import ConfigDict

from mim_jax.core import optim
from mim_jax.masking import amt_align, sampling

STAGES = ("random", "amt")


def default_config() -> ConfigDict:
  """The ``amt`` config group, carried by the methods that can take AMT's masks (MAE, MI-MAE,
  SimMIM); it acts with ``model.masking='amt'``."""
  return ConfigDict(dict(
      mask_ratio=0.45, throw_ratio=0.40,      # MAE's; SimMIM's are 0.44 / 0.26 (on mask cells)
      start_epoch=40.0,          # plain random masking before; first attention refresh at it
      interval_epochs=40.0,      # refresh the attention maps every this many epochs
      throw_lowest=False,        # throw the lowest-weight patches (the paper's figure)
      faithful_crop_bug=False,   # align maps with the crop as the released code does (wrongly)
      batch_size=256,            # global batch of the refresh pass
      images=8))                 # images in the PNG written at each refresh


def attention_maps(cls_attention):
  """The maps AMT caches, from the last block's [CLS] attention [B, heads, 1 + L].

  The [CLS] key is dropped after the softmax; each head is min-max normalized over the L
  patches, then the heads are averaged. Returns (maps [B, L] in [0, 1], entropy [B]: the mean
  over heads of the entropy in nats of the attention over patches, renormalized to sum to 1).
  """
  a = cls_attention[:, :, 1:].astype(jnp.float32)
  lo, hi = a.min(-1, keepdims=True), a.max(-1, keepdims=True)
  maps = ((a - lo) / jnp.maximum(hi - lo, 1e-12)).mean(1)
  p = a / jnp.maximum(a.sum(-1, keepdims=True), 1e-12)
  entropy = -jnp.sum(p * jnp.log(jnp.maximum(p, 1e-30)), -1).mean(1)
  return maps, entropy


class AMTMasking:
  """AMT for a method whose encoder has a ``grid`` of patches and samples units of ``block``
  pixels (``block`` = patch size: MAE; the mask cell: SimMIM). ``rounding`` of the counts:
  see ``sampling.amt_counts``."""

  def __init__(self, config, data_info, grid: tuple, block: int, rounding: str):
    a = config.amt
    if data_info is None:
      raise ValueError("AMT needs the training split's size (data_info) to size its cache")
    if config.image_size % block:
      raise ValueError(f"image_size {config.image_size} is not a multiple of AMT's unit {block}")
    self.grid = tuple(grid)
    self.block = block
    self.image_size = config.image_size
    side = config.image_size // block
    self.unit_grid = (side, side)
    self.num_units = side * side
    self.counts = sampling.amt_counts(self.num_units, a.mask_ratio, a.throw_ratio, rounding)
    self.throw_lowest = a.throw_lowest
    self.faithful_crop_bug = a.faithful_crop_bug
    spe = optim.steps_per_epoch(data_info.num_examples, config.batch_size)
    self.start_step = round(a.start_epoch * spe)
    self.interval = max(1, round(a.interval_epochs * spe))
    self.cache_size = data_info.base_split_size

  def init_extra(self):
    return {"amt_cache": jnp.ones((self.cache_size,) + self.grid, jnp.float16)}

  def stage(self, step: int) -> str:
    return "amt" if step >= self.start_step else "random"

  def refresh_due(self, step: int) -> bool:
    return step >= self.start_step and (step - self.start_step) % self.interval == 0

  def unit_weights(self, maps, batch):
    """[B, units] sampling weights: ``maps`` [B, h, w] aligned with the batch's crop box and
    flip (the whole image, unflipped, when the batch has none) and summed over each unit."""
    b = maps.shape[0]
    box = batch.get("crop_box")
    if box is None:
      box = jnp.broadcast_to(jnp.asarray([0.0, 0.0, 1.0, 1.0]), (b, 4))
    flipped = batch.get("flipped")
    if flipped is None:
      flipped = jnp.zeros((b,), bool)
    w = amt_align.patch_weights(maps, box, flipped, self.image_size, self.block,
                                self.faithful_crop_bug)
    return w.reshape(b, -1)

  def cached_weights(self, extra, batch):
    """``unit_weights`` of the cached maps of the batch's examples (``batch['id']``)."""
    return self.unit_weights(extra["amt_cache"][batch["id"]].astype(jnp.float32), batch)

  def split(self, key, weights):
    """(masked, thrown, visible) unit ids, each [B, n], drawn with probability ~ weights."""
    order = sampling.weighted_order(key, weights)
    return sampling.amt_split(order, self.counts, self.throw_lowest)

  def unit_states(self, masked, thrown):
    """int32 [B, units]: 0 visible, 1 masked, 2 thrown (for pictures)."""
    b = masked.shape[0]
    rows = jnp.arange(b)[:, None]
    states = jnp.zeros((b, self.num_units), jnp.int32)
    return states.at[rows, masked].set(1).at[rows, thrown].set(2)



def strategy(config, data_info, grid: tuple, block: int, rounding: str):
  """An ``AMTMasking`` when ``model.masking`` is 'amt'; None for the method's own masking."""
  name = config.model.masking
  if name == "random":
    return None
  if name != "amt":
    raise ValueError(f"model.masking must be 'random' or 'amt', got {name!r}")
  return AMTMasking(config, data_info, grid, block, rounding)
