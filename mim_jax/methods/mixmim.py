"""MixMIM pre-training (mixmim.md): mixed inputs, masked attention, dual reconstruction.

Each step draws one mask per group of the batch (a group = one device's share: ``mixing``) on the
encoder's last token grid (7x7 stride-32 cells at 224 px), ``int(cells * ratio)`` cells set. The
encoder sees every image with its masked cells filled by its partner's tokens (the batch reversed
inside the group), tokens attending only to tokens of their own image; the decoder predicts each
image's hidden cells from two complementary copies, and the loss is the MSE over every pixel of
every image against per-cell normalized pixels.

``model.encoder``: 'hierarchical' (the paper's; mask nearest-upsampled to every stage) or 'vit'
(our plain-ViT variant, no official version: the mask on the patch grid, global masked attention,
the patch's pixels as targets).
"""

import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from mim_jax.masking import mixing
from mim_jax.methods.base import Method
from mim_jax.models import encoders
from mim_jax.models.dtypes import compute_dtype
from mim_jax.models.mixmim import MixMIMDecoder, MixMIMModel
from mim_jax.models.patches import patchify, unpatchify
from mim_jax.objectives import losses


class MixMIM(Method):
  rng_streams = ("mask", "drop_path")

  @staticmethod
  def default_model_config() -> ConfigDict:
    c = ConfigDict(encoders.encoder_config())
    c.encoder = "hierarchical"
    c.variant = "B"
    c.decoder_width, c.decoder_depth, c.decoder_heads = 512, 8, 16
    c.mask_ratio = 0.5        # of the last grid's cells, rounded down (49 -> 24)
    c.norm_pix_loss = True    # targets normalized per cell (mean, unbiased variance, eps 1e-6)
    c.drop_path = 0.0
    c.mask_groups = 0         # masks (and pairing groups) per step; 0 = one per device
    return c

  def __init__(self, config: ConfigDict, channels: int, num_classes: int = 0, data_info=None):
    del num_classes, data_info  # pre-training uses no labels
    m = config.model
    self.config = config
    self.dtype = compute_dtype(config.compute_dtype)
    self.encoder = encoders.build(m, config.image_size, dtype=self.dtype,
                                  drop_path_rate=m.drop_path)
    module = self.encoder.module
    if self.encoder.family == "vit":
      self.stride = first = self.encoder.patch_size
    else:
      self.stride, first = module.stride, module.patch_size
    self.cell_grid = (config.image_size // self.stride,) * 2
    self.num_cells = self.cell_grid[0] * self.cell_grid[1]
    self.factor = self.stride // first        # first-grid tokens per cell side
    self.channels = channels
    self.mask_ratio = m.mask_ratio
    mixing.num_mixed(self.num_cells, m.mask_ratio)   # checks the ratio
    self.norm_pix = m.norm_pix_loss
    self.groups = m.mask_groups or jax.device_count()
    if config.batch_size % self.groups or config.batch_size < 2 * self.groups:
      raise ValueError(f"batch_size {config.batch_size} does not split into {self.groups} mask "
                       f"groups of at least 2 images (model.mask_groups; 0 = one per device): "
                       f"an image alone in its group would be mixed with itself")
    decoder = MixMIMDecoder(m.decoder_width, m.decoder_depth, m.decoder_heads, self.cell_grid,
                            self.stride ** 2 * channels, mlp_ratio=m.mlp_ratio, dtype=self.dtype,
                            attention=m.attention)
    self.model = MixMIMModel(module, decoder)

  def init(self, rng):
    images = jnp.zeros((2, self.config.image_size, self.config.image_size, self.channels))
    token_mask, cell_mask = self.masks(jax.random.key(0), 2, 1)
    return self.model.init(rng, self.encoder.inputs(images), token_mask, cell_mask)["params"]

  def masks(self, rng, batch_size: int, groups: int):
    """(mask on the first token grid [B, N0], on the cells [B, N]): one draw per group."""
    cells = mixing.per_example(
        mixing.group_masks(rng, groups, self.num_cells, self.mask_ratio), batch_size)
    return mixing.upsample(cells, self.cell_grid, self.factor), cells

  def predict(self, params, images, rng, groups: int, drop_rng=None):
    """(un-mixed predictions [B, N, stride*stride*C], cell mask [B, N])."""
    token_mask, cell_mask = self.masks(rng, images.shape[0], groups)
    rngs = None if drop_rng is None else {"drop_path": drop_rng}
    pred = self.model.apply({"params": params}, self.encoder.inputs(images), token_mask,
                            cell_mask, groups, deterministic=drop_rng is None, rngs=rngs)
    return mixing.unmix(pred, cell_mask, groups), cell_mask

  def loss(self, params, extra, batch, rngs):
    images = batch["image"]
    pred, _ = self.predict(params, images, rngs["mask"], self.groups, rngs["drop_path"])
    target = losses.patch_targets(patchify(images, self.stride), self.norm_pix)
    loss = jnp.mean(jnp.square(pred - target))
    return loss, ({"loss": loss}, extra)

  def reconstruct(self, params, images, rng):
    """Original, the mixed input (pixels), and the un-mixed prediction of every cell."""
    pred, cell_mask = self.predict(params, images, rng, groups=1)
    cells = patchify(images, self.stride)
    if self.norm_pix:  # undo the per-cell normalization with the true cell statistics
      mean = cells.mean(-1, keepdims=True)
      std = jnp.sqrt(cells.var(-1, keepdims=True, ddof=1) + 1e-6)
      pred = pred * std + mean
    to_image = lambda x: unpatchify(x, self.stride, *self.cell_grid, self.channels)
    return {"original": images,
            "masked": to_image(mixing.mix(cells, cell_mask, 1)),
            "reconstruction": to_image(pred)}
