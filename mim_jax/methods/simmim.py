"""SimMIM pre-training (simmim.md): the encoder sees every token, masked patches carry a learned
[MASK] embedding, a linear head predicts their pixels, L1 loss on the masked pixels.

Masks are drawn on a coarser grid of mask cells (``mask_patch_size``, 32 px), ``ceil(cells *
ratio)`` cells per image. Defaults are the official ViT-B options: no absolute position
embedding, one shared relative position bias, layer scale 0.1, q/v-only biases, BEiT init, drop
path 0.1. With ``model.masking='amt'`` (amt.md) AMT draws the cells once ``amt.start_epoch`` is
reached: masked, thrown (removed from the encoder and the loss) and visible.

``model.encoder='hierarchical'`` runs SimMIM on the hierarchical encoder (MixMIM's Swin-style
encoder, models/hierarchical.py), as the official code does with Swin:
* masks: the same cells, each expanded to the stage-0 tokens it covers; the encoder replaces the
  embeddings of those tokens (after its patch LayerNorm, before the sin-cos positions) by a
  learned ``mask_token``. The cell size must be a multiple of the encoder's patch size and
  divide ``image_size``; it need not be a multiple of the encoder's stride s.
* head: per last-stage token a Dense to its s x s x C pixels (SimMIM's Swin head).
* loss: the same L1 on masked pixels, computed on blocks of u = gcd(cell, s) pixels: the
  predictions and images are cut into u x u blocks and the cell mask is expanded to them, so
  every pixel carries its own cell's mask value, whatever the cell and stride (u = s, i.e. no
  re-cutting, when the cell is a multiple of the stride, as with 32 px cells on MixMIM-B).
* AMT (``model.masking='amt'``) is a ValueError: its maps are the [CLS] attention of a ViT.
The ViT-only options (pos_embed, rel_pos, layer_scale, qkv_bias, init) do not apply to it.
"""

import math

import jax.numpy as jnp
from ml_collections import ConfigDict

from mim_jax import amt, losses, masking
from mim_jax.methods.mae import compute_dtype
from mim_jax.methods.pretraining import MaskedPretraining
from mim_jax.models import encoders
from mim_jax.models import hierarchical
from mim_jax.models.simmim import SimMIMHierModel, SimMIMModel
from mim_jax.patches import patchify, unpatchify


class SimMIM(MaskedPretraining):
  rng_streams = ("mask", "drop_path")

  @staticmethod
  def default_model_config() -> ConfigDict:
    c = ConfigDict(encoders.encoder_config())
    c.update(pos_embed="none", rel_pos="shared", layer_scale=0.1, qkv_bias="qv", init="beit")
    c.mask_patch_size = 32    # pixels per side of a mask cell
    c.mask_ratio = 0.6        # of the cells (rounded up)
    c.drop_path = 0.1
    c.masking = "random"      # random | amt (config.amt; 'random' before amt.start_epoch)
    return c

  def __init__(self, config: ConfigDict, channels: int, num_classes: int = 0, data_info=None):
    del num_classes  # pre-training uses no labels
    m = config.model
    self.family = m.encoder
    if m.encoder == "hierarchical":
      self._init_hierarchical(config, channels)
      return
    if m.encoder != "vit":
      raise ValueError(f"SimMIM runs on model.encoder 'vit' or 'hierarchical', got {m.encoder!r}")
    self.config = config
    self.dtype = compute_dtype(config.compute_dtype)
    self.encoder = encoders.build(m, config.image_size, dtype=self.dtype,
                                  drop_path_rate=m.drop_path)
    self.patch_size = p = self.encoder.patch_size
    self.grid = self.encoder.module.grid
    self.num_patches = self.grid[0] * self.grid[1]
    self.channels = channels
    cell = m.mask_patch_size
    if cell % p or config.image_size % cell:
      raise ValueError(f"mask_patch_size {cell} must be a multiple of the patch size {p} and "
                       f"divide image_size {config.image_size}")
    self.scale = cell // p
    self.cell_grid = (config.image_size // cell,) * 2
    self.num_cells = self.cell_grid[0] * self.cell_grid[1]
    self.mask_ratio = m.mask_ratio
    masking.num_masked_cells(self.num_cells, m.mask_ratio)  # checks the ratio
    self.cell_patches = jnp.asarray(masking.cell_patch_ids(self.cell_grid, self.scale))
    self.model = SimMIMModel(self.encoder.module, p * p * channels)
    self.amt = amt.strategy(config, data_info, self.grid, cell, "ceil")

  def _init_hierarchical(self, config, channels):
    m = config.model
    if m.masking == "amt":
      raise ValueError("model.masking='amt' needs model.encoder='vit': AMT's masks come from the "
                       "[CLS] attention maps, which the hierarchical encoder does not have")
    if m.masking != "random":
      raise ValueError(f"model.masking must be 'random' on the hierarchical encoder, got "
                       f"{m.masking!r}")
    self.config = config
    self.dtype = compute_dtype(config.compute_dtype)
    self.encoder = encoders.build(m, config.image_size, dtype=self.dtype,
                                  drop_path_rate=m.drop_path)
    module = self.encoder.module
    size = config.image_size
    hierarchical.stage_windows(size, module.patch_size, module.window_sizes)  # checks the layout
    p = module.patch_size
    self.stride = s = module.stride
    self.channels = channels
    cell = m.mask_patch_size
    if cell % p or size % cell:
      raise ValueError(f"mask_patch_size {cell} must be a multiple of the encoder's patch size "
                       f"{p} and divide image_size {size}")
    self.token_grid = size // p          # stage-0 tokens per side
    self.token_scale = cell // p         # stage-0 tokens per cell side
    self.out_grid = size // s            # last-stage tokens per side
    self.unit = math.gcd(cell, s)        # pixels per side of the loss's mask blocks
    self.cell = cell
    self.cell_grid = (size // cell,) * 2
    self.num_cells = self.cell_grid[0] * self.cell_grid[1]
    self.mask_ratio = m.mask_ratio
    masking.num_masked_cells(self.num_cells, m.mask_ratio)  # checks the ratio
    self.model = SimMIMHierModel(module, s * s * channels)
    self.amt = None

  def init(self, rng):
    if self.family == "hierarchical":
      size = self.config.image_size
      images = jnp.zeros((1, size, size, self.channels))
      return self.model.init(rng, images, jnp.zeros((1, self.token_grid ** 2)))["params"]
    patches = jnp.zeros((1, self.num_patches, self.patch_size ** 2 * self.channels))
    return self.model.init(rng, patches, jnp.zeros((1, self.num_patches)))["params"]

  def _random_mask(self, rng, batch_size):
    cells = masking.block_masking(rng, batch_size, self.num_cells, self.mask_ratio)
    return masking.cells_to_patches(cells, self.cell_grid, self.scale)

  def _plan(self, extra, batch, rng, stage):
    """(patch mask [B, L], ids of the encoded patches [B, K] or None for all)."""
    b = batch["image"].shape[0]
    if stage != "amt":
      return self._random_mask(rng, b), None
    masked, _, visible = self.amt.split(rng, self.amt.cached_weights(extra, batch))
    cell_mask = jnp.zeros((b, self.num_cells)).at[jnp.arange(b)[:, None], masked].set(1.0)
    kept_cells = jnp.concatenate([visible, masked], 1)
    ids_keep = self.cell_patches[kept_cells].reshape(b, -1)
    return masking.cells_to_patches(cell_mask, self.cell_grid, self.scale), ids_keep

  def _hier_token_mask(self, cells):
    """[B, cells] -> [B, N0] on the encoder's stage-0 tokens."""
    return masking.cells_to_patches(cells, self.cell_grid, self.token_scale)

  def hier_l1(self, pred, images, cells):
    """SimMIM's L1 for the hierarchical model: ``pred`` [B, L_last, s*s*C], ``images``
    [B, H, W, C], ``cells`` [B, cells] (1 = masked). Both sides are cut into u x u blocks,
    u = gcd(cell, s), and the cells' mask expanded to those blocks, so the loss is
    sum(|pred - x| over masked pixels) / (masked pixels + 1e-5) / C for any cell size."""
    u, s = self.unit, self.stride
    if u != s:
      pred = patchify(unpatchify(pred, s, self.out_grid, self.out_grid, self.channels), u)
    mask = masking.cells_to_patches(cells, self.cell_grid, self.cell // u)
    return losses.masked_l1(pred, patchify(images, u), mask, self.channels)

  def _hier_loss(self, params, extra, batch, rngs):
    images = batch["image"]
    cells = masking.block_masking(rngs["mask"], images.shape[0], self.num_cells, self.mask_ratio)
    pred = self.model.apply({"params": params}, images.astype(self.dtype),
                            self._hier_token_mask(cells), deterministic=False,
                            rngs={"drop_path": rngs["drop_path"]})
    loss = self.hier_l1(pred, images, cells)
    return loss, ({"loss": loss}, extra)

  def loss(self, params, extra, batch, rngs, stage=None):
    if self.family == "hierarchical":
      return self._hier_loss(params, extra, batch, rngs)
    patches = patchify(batch["image"], self.patch_size)
    mask, ids_keep = self._plan(extra, batch, rngs["mask"], stage)
    pred = self.model.apply({"params": params}, patches.astype(self.dtype), mask, ids_keep,
                            deterministic=False, rngs={"drop_path": rngs["drop_path"]})
    if ids_keep is not None:
      patches = jnp.take_along_axis(patches, ids_keep[:, :, None], axis=1)
      mask = jnp.take_along_axis(mask, ids_keep, axis=1)
    loss = losses.masked_l1(pred, patches, mask, self.channels)
    return loss, ({"loss": loss}, extra)

  def reconstruct(self, params, images, rng):
    """Original, masked input, and reconstruction with the visible patches pasted back."""
    if self.family == "hierarchical":
      return self._hier_reconstruct(params, images, rng)
    patches = patchify(images, self.patch_size)
    mask = self._random_mask(rng, images.shape[0])
    pred = self.model.apply({"params": params}, patches, mask)
    m = mask[:, :, None]
    to_image = lambda x: unpatchify(x, self.patch_size, *self.grid, self.channels)
    return {"original": images,
            "masked": to_image(patches * (1 - m)),
            "reconstruction": to_image(patches * (1 - m) + pred * m)}

  def _hier_reconstruct(self, params, images, rng):
    b, h, w, _ = images.shape
    cells = masking.block_masking(rng, b, self.num_cells, self.mask_ratio)
    pred = self.model.apply({"params": params}, images.astype(self.dtype),
                            self._hier_token_mask(cells))
    pred = unpatchify(pred, self.stride, self.out_grid, self.out_grid, self.channels)
    m = masking.cells_to_patches(cells, self.cell_grid, self.cell).reshape(b, h, w, 1)
    return {"original": images,
            "masked": images * (1 - m),
            "reconstruction": images * (1 - m) + pred * m}
