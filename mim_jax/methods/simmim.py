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

Two classes, one per encoder family, share the mask cells (``SimMIM``, their base); ``SimMIM(config,
...)`` builds the one ``model.encoder`` names.
"""

import math

import jax.numpy as jnp
from ml_collections import ConfigDict

from mim_jax.masking import amt, sampling
from mim_jax.methods.amt_hooks import AMTHooks
from mim_jax.models import encoders, hierarchical
from mim_jax.models.dtypes import compute_dtype
from mim_jax.models.patches import patchify, unpatchify
from mim_jax.models.simmim import SimMIMHierModel, SimMIMModel
from mim_jax.objectives import losses


class SimMIM(AMTHooks):
  """What both families share: the options, the mask cells and their random draw."""
  rng_streams = ("mask", "drop_path")

  def __new__(cls, config, *args, **kwargs):
    del args, kwargs
    if cls is SimMIM:
      family = config.model.encoder
      if family not in FAMILIES:
        raise ValueError(f"SimMIM runs on model.encoder 'vit' or 'hierarchical', got {family!r}")
      cls = FAMILIES[family]
    return super().__new__(cls)

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
    del num_classes, data_info  # pre-training uses no labels
    m = config.model
    self.config = config
    self.channels = channels
    self.dtype = compute_dtype(config.compute_dtype)
    self.encoder = encoders.build(m, config.image_size, dtype=self.dtype,
                                  drop_path_rate=m.drop_path)
    self.cell = m.mask_patch_size
    self.mask_ratio = m.mask_ratio

  def _set_cells(self, first_patch: int, what: str):
    """Checks the cell size against the encoder's first patch size (``what``) and sets the cell
    grid."""
    size = self.config.image_size
    if self.cell % first_patch or size % self.cell:
      raise ValueError(f"mask_patch_size {self.cell} must be a multiple of {what} "
                       f"{first_patch} and divide image_size {size}")
    self.cell_grid = (size // self.cell,) * 2
    self.num_cells = self.cell_grid[0] * self.cell_grid[1]
    sampling.num_masked_cells(self.num_cells, self.mask_ratio)  # checks the ratio

  def _random_cells(self, rng, batch_size):
    """[B, cells], 1 = masked: ceil(cells x ratio) cells per image."""
    return sampling.block_masking(rng, batch_size, self.num_cells, self.mask_ratio)


class SimMIMViT(SimMIM):
  """SimMIM on the ViT: masked patches carry the [MASK] embedding; AMT may draw the cells."""

  def __init__(self, config: ConfigDict, channels: int, num_classes: int = 0, data_info=None):
    super().__init__(config, channels, num_classes, data_info)
    self.patch_size = p = self.encoder.patch_size
    self._set_cells(p, "the patch size")
    self.grid = self.encoder.module.grid
    self.num_patches = self.grid[0] * self.grid[1]
    self.scale = self.cell // p
    self.cell_patches = jnp.asarray(sampling.cell_patch_ids(self.cell_grid, self.scale))
    self.model = SimMIMModel(self.encoder.module, p * p * channels)
    self.amt = amt.strategy(config, data_info, self.grid, self.cell, "ceil")

  def init(self, rng):
    patches = jnp.zeros((1, self.num_patches, self.patch_size ** 2 * self.channels))
    return self.model.init(rng, patches, jnp.zeros((1, self.num_patches)))["params"]

  def _random_mask(self, rng, batch_size):
    return sampling.cells_to_patches(self._random_cells(rng, batch_size), self.cell_grid,
                                    self.scale)

  def _plan(self, extra, batch, rng, stage):
    """(patch mask [B, L], ids of the encoded patches [B, K] or None for all)."""
    b = batch["image"].shape[0]
    if stage != "amt":
      return self._random_mask(rng, b), None
    masked, _, visible = self.amt.split(rng, self.amt.cached_weights(extra, batch))
    cell_mask = jnp.zeros((b, self.num_cells)).at[jnp.arange(b)[:, None], masked].set(1.0)
    kept_cells = jnp.concatenate([visible, masked], 1)
    ids_keep = self.cell_patches[kept_cells].reshape(b, -1)
    return sampling.cells_to_patches(cell_mask, self.cell_grid, self.scale), ids_keep

  def loss(self, params, extra, batch, rngs, stage=None):
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
    patches = patchify(images, self.patch_size)
    mask = self._random_mask(rng, images.shape[0])
    pred = self.model.apply({"params": params}, patches, mask)
    m = mask[:, :, None]
    to_image = lambda x: unpatchify(x, self.patch_size, *self.grid, self.channels)
    return {"original": images,
            "masked": to_image(patches * (1 - m)),
            "reconstruction": to_image(patches * (1 - m) + pred * m)}


class SimMIMHierarchical(SimMIM):
  """SimMIM on the hierarchical encoder: masked stage-0 tokens carry the mask token; a head per
  last-stage token predicts its s x s pixels."""
  amt = None

  def __init__(self, config: ConfigDict, channels: int, num_classes: int = 0, data_info=None):
    m = config.model
    if m.masking == "amt":
      raise ValueError("model.masking='amt' needs model.encoder='vit': AMT's masks come from the "
                       "[CLS] attention maps, which the hierarchical encoder does not have")
    if m.masking != "random":
      raise ValueError(f"model.masking must be 'random' on the hierarchical encoder, got "
                       f"{m.masking!r}")
    super().__init__(config, channels, num_classes, data_info)
    module = self.encoder.module
    size = config.image_size
    hierarchical.stage_windows(size, module.patch_size, module.window_sizes)  # checks the layout
    p = module.patch_size
    self.stride = s = module.stride
    self._set_cells(p, "the encoder's patch size")
    self.token_grid = size // p          # stage-0 tokens per side
    self.token_scale = self.cell // p    # stage-0 tokens per cell side
    self.out_grid = size // s            # last-stage tokens per side
    self.unit = math.gcd(self.cell, s)   # pixels per side of the loss's mask blocks
    self.model = SimMIMHierModel(module, s * s * channels)

  def init(self, rng):
    size = self.config.image_size
    images = jnp.zeros((1, size, size, self.channels))
    return self.model.init(rng, images, jnp.zeros((1, self.token_grid ** 2)))["params"]

  def _token_mask(self, cells):
    """[B, cells] -> [B, N0] on the encoder's stage-0 tokens."""
    return sampling.cells_to_patches(cells, self.cell_grid, self.token_scale)

  def hier_l1(self, pred, images, cells):
    """SimMIM's L1 for the hierarchical model: ``pred`` [B, L_last, s*s*C], ``images``
    [B, H, W, C], ``cells`` [B, cells] (1 = masked). Both sides are cut into u x u blocks,
    u = gcd(cell, s), and the cells' mask expanded to those blocks, so the loss is
    sum(|pred - x| over masked pixels) / (masked pixels + 1e-5) / C for any cell size."""
    u, s = self.unit, self.stride
    if u != s:
      pred = patchify(unpatchify(pred, s, self.out_grid, self.out_grid, self.channels), u)
    mask = sampling.cells_to_patches(cells, self.cell_grid, self.cell // u)
    return losses.masked_l1(pred, patchify(images, u), mask, self.channels)

  def loss(self, params, extra, batch, rngs, stage=None):
    del stage  # one stage: no AMT on this encoder
    images = batch["image"]
    cells = self._random_cells(rngs["mask"], images.shape[0])
    pred = self.model.apply({"params": params}, images.astype(self.dtype),
                            self._token_mask(cells), deterministic=False,
                            rngs={"drop_path": rngs["drop_path"]})
    loss = self.hier_l1(pred, images, cells)
    return loss, ({"loss": loss}, extra)

  def reconstruct(self, params, images, rng):
    b, h, w, _ = images.shape
    cells = self._random_cells(rng, b)
    pred = self.model.apply({"params": params}, images.astype(self.dtype),
                            self._token_mask(cells))
    pred = unpatchify(pred, self.stride, self.out_grid, self.out_grid, self.channels)
    m = sampling.cells_to_patches(cells, self.cell_grid, self.cell).reshape(b, h, w, 1)
    return {"original": images,
            "masked": images * (1 - m),
            "reconstruction": images * (1 - m) + pred * m}


FAMILIES = {"vit": SimMIMViT, "hierarchical": SimMIMHierarchical}
