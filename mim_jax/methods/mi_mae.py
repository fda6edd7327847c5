"""MI-MAE (mi_mae.md): MAE on N masked views of each image, plus mutual-information terms between
the views' latents.

Each image's augmented crop is shared by its N views (``mi_mae.num_masks``); all B x N views go
through the encoder and decoder in one batched call (view k of image b is row b * N + k). Views
are complementary (``mask_mode='partition'``: disjoint visible sets covering the image) or N
independent MAE masks (``'independent'``); with ``model.masking='amt'`` each view is its own AMT
draw. The loss is

  L_rec + lambda_max * L_max + lambda_min * L_min + lambda_approx * L_approx

with L_rec the mean MAE loss of the views, L_max InfoNCE between views of the same image (in-batch
negatives), L_min the CLUB upper bound of I(x; z) with the variational network V held fixed, and
L_approx V's own negative log-likelihood with the latents held fixed: stop-gradients let one
jitted step optimize all of them (mim_jax.mi_estimators). z is the pooled encoder output
(``mi_mae.pool``: mean of the visible tokens or [CLS]) through an optional projector; x is the
mean of the view's visible patch embeddings, gradient stopped.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from mim_jax import losses, masking, mi_estimators as mi
from mim_jax.methods.mae import MAE
from mim_jax.patches import patchify


class Projector(nn.Module):
  """The optional 2-layer MLP on the pooled latent."""
  features: int

  @nn.compact
  def __call__(self, z):
    z = nn.relu(nn.Dense(self.features, name="fc1")(z))
    return nn.Dense(self.features, name="fc2")(z)


class MIMAE(MAE):
  rng_streams = ("mask",)

  def __init__(self, config, channels: int, num_classes: int = 0, data_info=None):
    o = config.mi_mae
    if o.mask_mode not in ("partition", "independent"):
      raise ValueError(f"mi_mae.mask_mode must be 'partition' or 'independent', got "
                       f"{o.mask_mode!r}")
    if o.epoch_unit not in ("images", "views"):
      raise ValueError(f"mi_mae.epoch_unit must be 'images' or 'views', got {o.epoch_unit!r}")
    if o.pool not in ("mean", "cls"):
      raise ValueError(f"mi_mae.pool must be 'mean' or 'cls', got {o.pool!r}")
    if o.club_negatives not in ("views", "batch"):
      raise ValueError(f"mi_mae.club_negatives must be 'views' or 'batch', got "
                       f"{o.club_negatives!r}")
    if o.num_masks < 1:
      raise ValueError(f"mi_mae.num_masks must be >= 1, got {o.num_masks}")
    self.views = o.num_masks
    # With epochs counted in views, one epoch is a pass over 1/N of the images (each gives N).
    self.epoch_fraction = 1.0 / self.views if o.epoch_unit == "views" else 1.0
    if data_info is not None and self.epoch_fraction != 1.0:
      data_info = dataclasses.replace(
          data_info, num_examples=max(1, round(data_info.num_examples * self.epoch_fraction)))
    super().__init__(config, channels, num_classes, data_info)
    self.o = o
    if o.mask_mode == "partition" and self.num_patches // self.views < 1:
      raise ValueError(f"{self.views} views cannot share {self.num_patches} patches")
    self.latent_dim = o.projector_dim or self.width
    self.variational = mi.VariationalNet(self.latent_dim, o.v_hidden)
    self.projector = Projector(o.projector_dim) if o.projector_dim else None

  def init(self, rng):
    k_mae, k_v, k_p = jax.random.split(rng, 3)
    params = dict(super().init(k_mae))
    params["variational"] = self.variational.init(k_v, jnp.zeros((1, self.width)))["params"]
    if self.projector:
      params["projector"] = self.projector.init(k_p, jnp.zeros((1, self.width)))["params"]
    return params

  def _views(self, extra, batch, rng, stage):
    """(views' patches [B N, L, P], ids_keep, ids_restore, ids_decode or None, loss mask)."""
    n, b = self.views, batch["image"].shape[0]
    patches = jnp.repeat(patchify(batch["image"], self.patch_size), n, axis=0)
    if stage == "amt":
      vbatch = {k: jnp.repeat(v, n, axis=0) for k, v in batch.items()
                if k in ("id", "crop_box", "flipped")}
      return (patches,) + self._amt_ids(extra, vbatch, rng)
    if self.o.mask_mode == "partition":
      ids_keep, ids_restore, mask = masking.partition_masking(rng, b, self.num_patches, n)
    else:  # N independent MAE masks (with N = 1: exactly MAE's mask)
      ids_keep, ids_restore, mask = masking.random_masking(rng, b * n, self.num_patches,
                                                           self.mask_ratio)
    return patches, ids_keep, ids_restore, None, mask

  def _latents(self, params, latent):
    """z [B N, Dz]: the pooled encoder tokens, through the projector if there is one."""
    z = latent[:, 0] if self.o.pool == "cls" else latent[:, 1:].mean(axis=1)
    z = z.astype(jnp.float32)
    if self.projector:
      z = self.projector.apply({"params": params["projector"]}, z)
    return z

  def _inputs(self, params, patches, ids_keep):
    """x [B N, width]: the mean of each view's visible patch embeddings, gradient stopped."""
    visible = jnp.take_along_axis(patches, ids_keep[:, :, None], axis=1).mean(axis=1)
    proj = jax.lax.stop_gradient(params["encoder"]["patch_embed"]["proj"])
    return visible.astype(jnp.float32) @ proj["kernel"] + proj["bias"]

  def loss(self, params, extra, batch, rngs, stage=None):
    o, n, b = self.o, self.views, batch["image"].shape[0]
    patches, ids_keep, ids_restore, ids_decode, mask = self._views(extra, batch, rngs["mask"],
                                                                   stage)
    mae_params = {"encoder": params["encoder"], "decoder": params["decoder"]}
    pred, latent = self.model.apply({"params": mae_params}, patches.astype(self.dtype), ids_keep,
                                    ids_restore, ids_decode, return_latent=True)
    target = losses.patch_targets(patches, self.norm_pix)
    if ids_decode is not None:
      target = jnp.take_along_axis(target, ids_decode[:, :, None], axis=1)
    l_rec = losses.masked_mse(pred, target, mask)

    z = self._latents(params, latent).reshape(b, n, -1)
    x = self._inputs(params, patches, ids_keep).reshape(b, n, -1)
    mu, logvar = self.variational.apply({"params": params["variational"]}, x)
    frozen_v = jax.lax.stop_gradient(params["variational"])
    mu_fixed, logvar_fixed = self.variational.apply({"params": frozen_v}, x)
    zero = jnp.zeros((), jnp.float32)
    z_unit = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
    l_max = mi.multiview_infonce(z_unit, o.temperature) if n > 1 else zero
    l_min = mi.club(z, mu_fixed, logvar_fixed, o.club_negatives)
    l_approx = mi.variational_nll(jax.lax.stop_gradient(z), mu, logvar)
    loss = l_rec + o.lambda_max * l_max + o.lambda_min * l_min + o.lambda_approx * l_approx
    metrics = {"loss": loss, "loss/rec": l_rec, "loss/max": l_max, "loss/min": l_min,
               "loss/approx": l_approx,
               "mi/infonce_nats": mi.infonce_bound(l_max, b) if n > 1 else zero,
               "mi/club_nats": l_min}
    return loss, (metrics, extra)

  def reconstruct(self, params, images, rng):
    mae_params = {"encoder": params["encoder"], "decoder": params["decoder"]}
    return super().reconstruct(mae_params, images, rng)

