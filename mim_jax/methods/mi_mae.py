"""MI-MAE (mi_mae.md): MAE on N masked views of each image, plus mutual-information terms between
the views' latents.

Each image's augmented crop is shared by its N views (``mi_mae.num_masks``); all B x N views go
through the encoder and decoder in one batched call (view k of image b is row b * N + k). Views
are complementary (``mask_mode='partition'``: disjoint visible sets covering the image) or N
independent MAE masks (``'independent'``); with ``model.masking='amt'`` each view is its own AMT
draw. z is the pooled encoder output (``mi_mae.pool``: mean of the visible tokens or [CLS])
through an optional projector; x is the mean of the view's visible patch embeddings, gradient
stopped.

One training step, in one jitted function:
1. the encoder and decoder run on the views (z, predictions);
2. the variational network V, q(z | x), takes ``v_steps`` updates of its own AdamW on its NLL of
   (x, z) with z held fixed (V and its optimizer state live in ``extra["mi"]``, outside the main
   optimizer, and are checkpointed with the run);
3. the encoder and decoder are updated on L_rec + lambda_max * L_max + lambda_min * L_min, with
   L_rec the mean MAE loss of the views, L_max InfoNCE between views of the same image (in-batch
   negatives) and L_min the CLUB upper bound of I(x; z) under V at its new value, held fixed
   (per latent dimension with ``min_per_dim``, else summed over dimensions).
L_min enters the loss only once switched on (``club_start`` steps, and ``club_start_nll`` on V's
NLL): CLUB bounds the mutual information only for a fitted V. ``mi/v_nll`` (V's NLL before its
update of the step) and ``mi/club_on`` are logged next to ``mi/club_nats``.

The MAE model takes exactly the parameters MAE's method draws for the same seed; V and the
projector draw from keys of their own.
"""

import dataclasses

import logging
import zlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict

from mim_jax.core import optim
from mim_jax.masking import sampling
from mim_jax.methods.mae import MAE
from mim_jax.models.patches import patchify
from mim_jax.objectives import losses
from mim_jax.objectives import mi_estimators as mi

log = logging.getLogger("mim_jax")


def default_config() -> ConfigDict:
  """The ``mi_mae`` config group: the views and the weights of the information terms."""
  return ConfigDict(dict(
      num_masks=4,               # views per image
      mask_mode="partition",     # partition (complementary) | independent (model.mask_ratio)
      temperature=0.07,          # InfoNCE
      lambda_max=1.0,            # InfoNCE maximization (our mapping of the seed's 1 / 1 / 10)
      lambda_min=1.0,            # CLUB minimization
      lambda_approx=10.0,        # weight of V's NLL in V's own loss: under V's Adam it only
                                 # rescales the gradient, which Adam normalizes away
      pool="mean",               # mean (of the visible tokens) | cls
      projector_dim=0,           # > 0: a 2-layer MLP projector of this width on z
      club_negatives="views",    # views (the same image's other views) | batch (standard CLUB)
      min_per_dim=True,          # L_min = CLUB / latent dims (nats per dimension); False: CLUB
                                 #   summed over dimensions (nats), as the CLUB reference sums
      v_hidden=512,              # V's hidden width
      v_lr=3e-3,                 # V's own AdamW (0.9, 0.999): its lr, fitted before each update
      v_weight_decay=0.0,        #   of the encoder on the new latents (the CLUB reference: Adam)
      v_schedule="constant",     #   constant (the CLUB reference) | cosine (the run's warmup and
                                 #   cosine shape, peaking at v_lr)
      v_steps=5,                 # V's updates per training step, before the encoder's (1 at
                                 #   lr 1e-3 lets V's NLL climb as the encoder moves, digits)
      club_start=100,            # L_min is switched on from this step on (V's NLL falls to a
                                 #   third of its first value within 100 steps on digits) ...
      club_start_nll=0.0,        # ... and, when > 0, once V's NLL (mi/v_nll) is at most this
      epoch_unit="images"))      # images | views: what total_epochs / warmup_epochs count


class Projector(nn.Module):
  """The optional 2-layer MLP on the pooled latent."""
  features: int

  @nn.compact
  def __call__(self, z):
    z = nn.relu(nn.Dense(self.features, name="fc1")(z))
    return nn.Dense(self.features, name="fc2")(z)


class MIMAE(MAE):
  rng_streams = ("mask",)
  progress_keys = ("loss/rec", "mi/v_nll", "mi/club_nats", "mi/club_on")

  @staticmethod
  def config_groups() -> dict:
    return {**MAE.config_groups(), "mi_mae": default_config()}

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
    if o.v_steps < 1:
      raise ValueError(f"mi_mae.v_steps must be >= 1, got {o.v_steps}")
    if o.v_schedule not in ("constant", "cosine"):
      raise ValueError(f"mi_mae.v_schedule must be 'constant' or 'cosine', got "
                       f"{o.v_schedule!r}")
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
    self.v_tx = optax.adamw(self._v_schedule(config, data_info), b1=0.9, b2=0.999,
                            weight_decay=o.v_weight_decay)
    self.projector = Projector(o.projector_dim) if o.projector_dim else None

  def _v_schedule(self, config, data_info):
    """V's learning rate per V update: constant, or the run's warmup + cosine peaking at v_lr."""
    o = self.o
    if o.v_schedule == "constant":
      return o.v_lr
    if data_info is None and not config.total_steps:
      raise ValueError("mi_mae.v_schedule='cosine' needs the training split's size")
    total, warmup, _ = optim.run_length(config, data_info.num_examples if data_info else 1)
    return optim.warmup_cosine(o.v_lr, warmup * o.v_steps, total * o.v_steps)

  def init(self, rng):
    """MAE's parameters for the same key, and the projector's from a key of its own."""
    params = dict(super().init(rng))
    if self.projector:
      params["projector"] = self.projector.init(_subkey(rng, "projector"),
                                                jnp.zeros((1, self.width)))["params"]
    return params

  def init_extra(self, rng):
    """V, its optimizer state, and the CLUB switch (the step it turned on, -1 until then)."""
    v_params = self.variational.init(_subkey(rng, "variational"),
                                     jnp.zeros((1, self.width)))["params"]
    mi_state = {"v_params": v_params, "v_opt_state": self.v_tx.init(v_params),
                "step": jnp.zeros((), jnp.int32),
                "club_on_step": jnp.full((), -1, jnp.int32),
                "club_on_nll": jnp.zeros((), jnp.float32)}
    return dict(super().init_extra(rng), mi=mi_state)

  def step_hooks(self, mesh):
    return super().step_hooks(mesh) + [ClubSwitchLog(self.config.log_every)]

  def _views(self, extra, batch, rng, stage):
    """(views' patches [B N, L, P], ids_keep, ids_restore, ids_decode or None, loss mask)."""
    n, b = self.views, batch["image"].shape[0]
    patches = jnp.repeat(patchify(batch["image"], self.patch_size), n, axis=0)
    if stage == "amt":
      vbatch = {k: jnp.repeat(v, n, axis=0) for k, v in batch.items()
                if k in ("id", "crop_box", "flipped")}
      return (patches,) + self._amt_ids(extra, vbatch, rng)
    if self.o.mask_mode == "partition":
      ids_keep, ids_restore, mask = sampling.partition_masking(rng, b, self.num_patches, n)
    else:  # N independent MAE masks (with N = 1: exactly MAE's mask)
      ids_keep, ids_restore, mask = sampling.random_masking(rng, b * n, self.num_patches,
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

  def fit_variational(self, state, x, z):
    """``v_steps`` updates of V on (x, z), then the CLUB switch. Returns (new state, V's NLL
    before the first update, whether CLUB is on)."""
    o = self.o
    params, opt_state, nll = state["v_params"], state["v_opt_state"], None
    for _ in range(o.v_steps):
      params, opt_state, step_nll = mi.fit_step(self.variational, self.v_tx, params, opt_state, x,
                                                z, o.lambda_approx)
      nll = step_nll if nll is None else nll
    step = state["step"]
    was_on = state["club_on_step"] >= 0
    on = was_on | mi.club_ready(step, nll, o.club_start, o.club_start_nll)
    switches = on & ~was_on
    new = {"v_params": params, "v_opt_state": opt_state, "step": step + 1,
           "club_on_step": jnp.where(switches, step, state["club_on_step"]),
           "club_on_nll": jnp.where(switches, nll, state["club_on_nll"])}
    return new, nll, on

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
    mi_state, v_nll, club_on = self.fit_variational(extra["mi"], x, z)
    v_params = jax.lax.stop_gradient(mi_state["v_params"])
    mu, logvar = self.variational.apply({"params": v_params}, x)
    zero = jnp.zeros((), jnp.float32)
    z_unit = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
    l_max = mi.multiview_infonce(z_unit, o.temperature) if n > 1 else zero
    club = mi.club(z, mu, logvar, o.club_negatives)
    l_min = jnp.where(club_on, club / self.latent_dim if o.min_per_dim else club, zero)
    loss = l_rec + o.lambda_max * l_max + o.lambda_min * l_min
    metrics = {"loss": loss, "loss/rec": l_rec, "loss/max": l_max, "loss/min": l_min,
               "mi/infonce_nats": mi.infonce_bound(l_max, b) if n > 1 else zero,
               "mi/club_nats": club, "mi/v_nll": v_nll,
               "mi/club_on": club_on.astype(jnp.float32),
               # z's scale (mean over dimensions of the std over the step's views): V's bounded
               # variance makes mi/v_nll and mi/club_nats grow with it (benchmarks/mi_mae_club.py)
               "mi/z_std": jnp.mean(jnp.std(jax.lax.stop_gradient(z).reshape(-1, z.shape[-1]),
                                            axis=0))}
    return loss, (metrics, dict(extra, mi=mi_state))

  def reconstruct(self, params, images, rng):
    mae_params = {"encoder": params["encoder"], "decoder": params["decoder"]}
    return super().reconstruct(mae_params, images, rng)



def _subkey(rng, name: str):
  """A key for one of MI-MAE's own modules, apart from the MAE model's ``rng``."""
  return jax.random.fold_in(rng, zlib.crc32(name.encode()))


class ClubSwitchLog:
  """A step hook that logs, once, the step at which L_min (CLUB) was switched on."""
  name = "mi"

  def __init__(self, every: int):
    self.every = max(1, every)
    self.reported = False

  def due(self, step: int) -> bool:
    return not self.reported and step > 0 and step % self.every == 0

  def run(self, state, step, rng):
    del rng
    mi_state = jax.device_get({k: state["extra"]["mi"][k] for k in ("club_on_step",
                                                                     "club_on_nll")})
    if int(mi_state["club_on_step"]) >= 0:
      self.reported = True
      log.info("L_min (CLUB) on since step %d, where V's NLL was %.2f nats",
               int(mi_state["club_on_step"]), float(mi_state["club_on_nll"]))
    return state, {}, {}
