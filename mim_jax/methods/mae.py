"""MAE pre-training (mae.md): random masking + ViT encoder on visible patches + pixel MSE.

With ``model.masking='amt'`` (amt.md) the patches are drawn by AMT once ``amt.start_epoch`` is
reached: masked (reconstructed), thrown (removed from encoder, decoder and loss) and visible.
"""

import jax.numpy as jnp
from ml_collections import ConfigDict

from mim_jax.masking import amt, sampling
from mim_jax.methods.amt_hooks import AMTHooks
from mim_jax.models import encoders
from mim_jax.models import mae as mae_model
from mim_jax.models.dtypes import compute_dtype
from mim_jax.models.patches import patchify, unpatchify
from mim_jax.objectives import losses


class MAE(AMTHooks):
  rng_streams = ("mask",)

  @staticmethod
  def default_model_config() -> ConfigDict:
    return ConfigDict(dict(
        encoders.encoder_config(),  # encoder, variant (SIZE/PATCH), width/depth/heads overrides
        decoder_width=512, decoder_depth=8, decoder_heads=16,
        mask_ratio=0.75,
        norm_pix_loss=True,   # the published recipe's setting
        masking="random",     # random | amt (config.amt; 'random' before amt.start_epoch)
    ))

  def __init__(self, config: ConfigDict, channels: int, num_classes: int = 0, data_info=None):
    del num_classes  # pre-training uses no labels
    m = config.model
    if m.encoder != "vit":
      raise ValueError(f"MAE needs model.encoder='vit', got {m.encoder!r}")
    self.dtype = compute_dtype(config.compute_dtype)
    self.encoder = encoders.build(m, config.image_size, dtype=self.dtype,
                                  **self.encoder_options(config))
    self.patch_size = self.encoder.patch_size
    self.grid = self.encoder.module.grid
    self.num_patches = self.grid[0] * self.grid[1]
    self.channels = channels
    self.mask_ratio = m.mask_ratio
    self.norm_pix = m.norm_pix_loss
    self.num_kept = sampling.num_kept(self.num_patches, m.mask_ratio)
    self.width = self.encoder.width
    decoder = mae_model.MAEDecoder(
        m.decoder_width, m.decoder_depth, m.decoder_heads, self.grid,
        self.patch_size ** 2 * channels, mlp_ratio=m.mlp_ratio, dtype=self.dtype, remat=m.remat,
        scan=m.scan_blocks, attention=m.attention)
    self.model = mae_model.MAE(self.encoder.module, decoder)
    self.config = config
    self.amt = amt.strategy(config, data_info, self.grid, self.patch_size, "floor")

  @staticmethod
  def encoder_options(config) -> dict:
    """Options of ``encoders.build`` beyond ``config.model`` (MLO-MAE: a learnable table)."""
    del config
    return {}

  def init(self, rng):
    patches = jnp.zeros((1, self.num_patches, self.patch_size ** 2 * self.channels))
    ids_keep = jnp.zeros((1, self.num_kept), jnp.int32)
    ids_restore = jnp.arange(self.num_patches, dtype=jnp.int32)[None]
    return self.model.init(rng, patches, ids_keep, ids_restore)["params"]

  def _predict(self, params, images, mask_rng):
    patches = patchify(images, self.patch_size)
    ids_keep, ids_restore, mask = sampling.random_masking(
        mask_rng, images.shape[0], self.num_patches, self.mask_ratio)
    pred = self.model.apply({"params": params}, patches.astype(self.dtype), ids_keep, ids_restore)
    return patches, pred, mask

  def _amt_ids(self, extra, batch, mask_rng):
    """AMT's draw for a batch: (visible ids [B, V], ids_restore [B, L], ids of the decoded
    visible + masked patches [B, V + M], loss mask over them [B, V + M])."""
    masked, thrown, visible = self.amt.split(mask_rng, self.amt.cached_weights(extra, batch))
    ids_restore = jnp.argsort(jnp.concatenate([visible, masked, thrown], 1), 1).astype(jnp.int32)
    mask = jnp.concatenate([jnp.zeros(visible.shape), jnp.ones(masked.shape)], 1)
    return visible, ids_restore, jnp.concatenate([visible, masked], 1), mask

  def _predict_amt(self, params, extra, batch, mask_rng):
    """AMT: encode the visible patches, decode visible + masked ones (thrown ones dropped).
    Returns patches and predictions, targets' ids and loss mask over the decoded tokens."""
    patches = patchify(batch["image"], self.patch_size)
    visible, ids_restore, ids_decode, mask = self._amt_ids(extra, batch, mask_rng)
    pred = self.model.apply({"params": params}, patches.astype(self.dtype), visible, ids_restore,
                            ids_decode)
    return patches, pred, ids_decode, mask

  def loss(self, params, extra, batch, rngs, stage=None):
    if stage == "amt":
      patches, pred, ids, mask = self._predict_amt(params, extra, batch, rngs["mask"])
      target = jnp.take_along_axis(losses.patch_targets(patches, self.norm_pix), ids[:, :, None],
                                   axis=1)
    else:
      patches, pred, mask = self._predict(params, batch["image"], rngs["mask"])
      target = losses.patch_targets(patches, self.norm_pix)
    loss = losses.masked_mse(pred, target, mask)
    return loss, ({"loss": loss}, extra)

  def reconstruct(self, params, images, rng):
    """Original, masked input, and reconstruction with the visible patches pasted back."""
    patches, pred, mask = self._predict(params, images, rng)
    return self.paste(images, patches, pred, mask)

  def paste(self, images, patches, pred, mask):
    """The PNG columns of ``reconstruct`` from a prediction of the masked patches."""
    if self.norm_pix:  # undo the per-patch normalization with the true patch statistics
      mean = patches.mean(-1, keepdims=True)
      std = jnp.sqrt(patches.var(-1, keepdims=True, ddof=1) + 1e-6)
      pred = pred * std + mean
    m = mask[:, :, None]
    to_image = lambda x: unpatchify(x, self.patch_size, *self.grid, self.channels)
    return {"original": images,
            "masked": to_image(patches * (1 - m)),
            "reconstruction": to_image(patches * (1 - m) + pred * m)}


