"""MAE pre-training (mae.md): random masking + ViT encoder on visible patches + pixel MSE."""

import jax.numpy as jnp
from ml_collections import ConfigDict

from mim_jax import losses, masking
from mim_jax.models import mae as mae_model
from mim_jax.models.vit import parse_variant
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
        variant="B/16",       # encoder size / patch size; width/depth/heads > 0 override it
        width=0, depth=0, heads=0, mlp_ratio=4.0,
        decoder_width=512, decoder_depth=8, decoder_heads=16,
        mask_ratio=0.75,
        norm_pix_loss=True,   # the published recipe's setting
    ))

  def __init__(self, config: ConfigDict, channels: int):
    m = config.model
    size, self.patch_size = parse_variant(m.variant)
    if config.image_size % self.patch_size:
      raise ValueError(f"image_size {config.image_size} is not divisible by the patch size "
                       f"{self.patch_size} of variant {m.variant!r}")
    side = config.image_size // self.patch_size
    self.grid = (side, side)
    self.num_patches = side * side
    self.channels = channels
    self.mask_ratio = m.mask_ratio
    self.norm_pix = m.norm_pix_loss
    self.num_kept = masking.num_kept(self.num_patches, m.mask_ratio)
    self.dtype = compute_dtype(config.compute_dtype)
    self.width = m.width or size.dim
    encoder = mae_model.ViTEncoder(
        self.width, m.depth or size.depth, m.heads or size.heads, self.grid,
        mlp_ratio=m.mlp_ratio, dtype=self.dtype)
    decoder = mae_model.MAEDecoder(
        m.decoder_width, m.decoder_depth, m.decoder_heads, self.grid,
        self.patch_size ** 2 * channels, mlp_ratio=m.mlp_ratio, dtype=self.dtype)
    self.model = mae_model.MAE(encoder, decoder)

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

  def loss(self, params, batch, rngs):
    patches, pred, mask = self._predict(params, batch["image"], rngs["mask"])
    loss = losses.masked_mse(pred, losses.patch_targets(patches, self.norm_pix), mask)
    return loss, {"loss": loss}

  def features(self, params, images, pool: str = "cls"):
    """[B, width] features of whole images: the [CLS] token or the mean of patch tokens."""
    tokens = self.model.apply({"params": params}, patchify(images, self.patch_size).astype(
        self.dtype), method=mae_model.MAE.encode).astype(jnp.float32)
    if pool == "cls":
      return tokens[:, 0]
    if pool == "mean":
      return tokens[:, 1:].mean(axis=1)
    raise ValueError(f"probe pool must be 'cls' or 'mean', got {pool!r}")

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

