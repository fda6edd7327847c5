"""MAE pre-training (mae.md): random masking + ViT encoder on visible patches + pixel MSE."""

import jax.numpy as jnp
from ml_collections import ConfigDict

from mim_jax import losses, masking
from mim_jax.models import encoders
from mim_jax.models import mae as mae_model
from mim_jax.patches import patchify, unpatchify

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str):
  if name not in DTYPES:
    raise ValueError(f"compute_dtype must be one of {sorted(DTYPES)}, got {name!r}")
  return DTYPES[name]


class MAE:
  rng_streams = ("mask",)

  @staticmethod
  def default_model_config() -> ConfigDict:
    return ConfigDict(dict(
        encoders.encoder_config(),  # encoder, variant (SIZE/PATCH), width/depth/heads overrides
        decoder_width=512, decoder_depth=8, decoder_heads=16,
        mask_ratio=0.75,
        norm_pix_loss=True,   # the published recipe's setting
    ))

  def __init__(self, config: ConfigDict, channels: int, num_classes: int = 0):
    del num_classes  # pre-training uses no labels
    m = config.model
    if m.encoder != "vit":
      raise ValueError(f"MAE needs model.encoder='vit', got {m.encoder!r}")
    self.dtype = compute_dtype(config.compute_dtype)
    self.encoder = encoders.build(m, config.image_size, dtype=self.dtype)
    self.patch_size = self.encoder.patch_size
    self.grid = self.encoder.module.grid
    self.num_patches = self.grid[0] * self.grid[1]
    self.channels = channels
    self.mask_ratio = m.mask_ratio
    self.norm_pix = m.norm_pix_loss
    self.num_kept = masking.num_kept(self.num_patches, m.mask_ratio)
    self.width = self.encoder.width
    decoder = mae_model.MAEDecoder(
        m.decoder_width, m.decoder_depth, m.decoder_heads, self.grid,
        self.patch_size ** 2 * channels, mlp_ratio=m.mlp_ratio, dtype=self.dtype)
    self.model = mae_model.MAE(self.encoder.module, decoder)

  def init(self, rng):
    patches = jnp.zeros((1, self.num_patches, self.patch_size ** 2 * self.channels))
    ids_keep = jnp.zeros((1, self.num_kept), jnp.int32)
    ids_restore = jnp.arange(self.num_patches, dtype=jnp.int32)[None]
    return self.model.init(rng, patches, ids_keep, ids_restore)["params"]

  def _predict(self, params, images, mask_rng):
    patches = patchify(images, self.patch_size)
    ids_keep, ids_restore, mask = masking.random_masking(
        mask_rng, images.shape[0], self.num_patches, self.mask_ratio)
    pred = self.model.apply({"params": params}, patches.astype(self.dtype), ids_keep, ids_restore)
    return patches, pred, mask

  def loss(self, params, extra, batch, rngs):
    patches, pred, mask = self._predict(params, batch["image"], rngs["mask"])
    loss = losses.masked_mse(pred, losses.patch_targets(patches, self.norm_pix), mask)
    return loss, ({"loss": loss}, extra)

  def features(self, params, images, pool: str = "cls"):
    """[B, width] features of whole images: the [CLS] token or the average of patch tokens."""
    tokens = self.encoder.apply(params["encoder"], images)
    return self.encoder.pool(tokens.astype(jnp.float32), pool)

  def reconstruct(self, params, images, rng):
    """Original, masked input, and reconstruction with the visible patches pasted back."""
    patches, pred, mask = self._predict(params, images, rng)
    if self.norm_pix:  # undo the per-patch normalization with the true patch statistics
      mean = patches.mean(-1, keepdims=True)
      std = jnp.sqrt(patches.var(-1, keepdims=True, ddof=1) + 1e-6)
      pred = pred * std + mean
    m = mask[:, :, None]
    to_image = lambda x: unpatchify(x, self.patch_size, *self.grid, self.channels)
    return {"original": images,
            "masked": to_image(patches * (1 - m)),
            "reconstruction": to_image(patches * (1 - m) + pred * m)}

