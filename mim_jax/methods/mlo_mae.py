"""MLO-MAE pre-training (mlo_mae.md): a masking network learned by multi-level optimization.

Three parameter sets under ``params``:
  theta = ``encoder`` + ``decoder`` (the MAE)         stage I:   L_P on the pre-training images;
  psi   = ``cls_head`` (LayerNorm -> Dropout -> Dense  stage II:  L_F, cross-entropy on a labelled
          on the [CLS] output of the whole image)                  training part;
  phi   = ``masker`` (``models.masking_net``)          stage III: L_M, the same cross-entropy on a
                                                                   held-out part, through theta, psi.

The position tables of encoder and decoder start as sin-cos and are theta parameters
(``mlo.learnable_pos``, ``mlo.learnable_decoder_pos``), as in the official models.

The masking network reads the encoder's own patch + position embeddings and gives a probability
per patch; the ``int(L * ratio)`` most probable patches are masked (``sampling.topk_masking``) and
L_P weighs each masked patch's error by its probability (``losses.probability_weighted_mse``).

One trainer step is one round of the official schedule: ``mlo.unroll_steps`` (K, 2) AdamW steps
of theta on K pre-training batches, then one of psi, then one of phi with the hypergradient of
``mlo.hypergrad`` (``mim_jax.objectives.hypergrad``): 'finite_difference' (the official code's), 'jvp' (the
same expression, exact) or 'unroll' (jax.grad of L_M through the round's K theta steps and the
psi step, which then are the round's real updates). Each level has its own data stream
(``data_streams``: by default a seeded, class-stratified draw of 20 % of the training split for
stage III and the other 80 % for stages I and II), its own AdamW (betas of ``optimizer``) and its
own cosine schedule over its own updates. The checkpoint holds all three parameter sets and optimizer states.
"""

import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict

from mim_jax import data
from mim_jax.core import optim
from mim_jax.core.rng import stream_key
from mim_jax.masking import sampling
from mim_jax.methods.mae import MAE
from mim_jax.models.classifier import FeatureHead
from mim_jax.models.mae import MAE as MAEModel
from mim_jax.models.masking_net import MaskingNet
from mim_jax.models.patches import patchify
from mim_jax.models.vit_encoder import ViTEncoder
from mim_jax.objectives import hypergrad, losses

HYPERGRADS = ("finite_difference", "jvp", "unroll")


def default_config() -> ConfigDict:
  """The ``mlo`` config group: the three levels, their data and the hypergradient."""
  return ConfigDict(dict(
      hypergrad="finite_difference",   # finite_difference (official) | jvp | unroll
      unroll_steps=2,            # K: theta updates per round (then one psi, one phi update)
      fd_alpha=0.01,             # finite differences: eps = fd_alpha / ||direction||
      remat=True,                # unroll: recompute each inner step in the backward pass
      eps_root=1e-16,            # unroll: AdamW's eps inside the sqrt (differentiable at 0)
      heldout_fraction=0.2,      # stage III's share of train_split: a class-stratified draw
                                 #   (seed: config.seed); stages I and II get the rest
      stage1_uses_all_train=False,  # the official CIFAR code: stage I on all of train_split
      head_lr=4e-5, head_weight_decay=0.01, head_batch_size=0,        # psi; batch 0 = batch_size
      masker_lr=4e-5, masker_weight_decay=0.01, masker_batch_size=0,  # phi
      head_dropout=0.1,
      masker_hidden=512,
      learnable_pos=True,        # the encoder's sin-cos table is a parameter (official models)
      learnable_decoder_pos=True))  # the decoder's too (official models: requires_grad=True)
LEVELS = ("theta", "psi", "phi")
THETA = ("encoder", "decoder")


def theta_of(params):
  return {k: params[k] for k in THETA}


class LevelOptimizers:
  """The optimizers of the three levels (``levels``: name -> optax transformation), each on its
  own part of the parameters. ``init`` gives the trainer's ``opt_state`` {theta, psi, phi}; the
  updates are MLO-MAE's train step's (``update`` is not used)."""

  def __init__(self, levels: dict, schedules: dict):
    self.levels = levels
    self.schedules = schedules

  @staticmethod
  def part(params, level: str):
    return {"theta": theta_of, "psi": lambda p: p["cls_head"],
            "phi": lambda p: p["masker"]}[level](params)

  def init(self, params):
    return {level: tx.init(self.part(params, level)) for level, tx in self.levels.items()}

  def update(self, *args, **kwargs):
    raise TypeError("MLO-MAE's levels are updated by MLOMAE.make_train_step, not by tx.update")


# Hypergradients that differentiate through a gradient (unroll) or push tangents through the
# model (jvp). cuDNN's fused attention has a custom VJP and no rule for either.
SECOND_ORDER = ("jvp", "unroll")


def xla_attention(config: ConfigDict) -> ConfigDict:
  """``config`` with ``model.attention`` 'auto' resolved to 'xla' (a copy) when the hypergradient
  is second order; an explicit 'cudnn' is then an error."""
  if config.mlo.hypergrad not in SECOND_ORDER:
    return config
  if config.model.attention == "cudnn":
    raise ValueError(f"mlo.hypergrad={config.mlo.hypergrad!r} differentiates through attention "
                     f"twice, which cuDNN's fused kernel cannot: use model.attention='auto' or "
                     f"'xla'")
  config = config.copy_and_resolve_references()
  config.model.attention = "xla"
  return config


class MLOMAE(MAE):
  rng_streams = ()  # the masks are learned; the head's dropout keys are drawn in the step
  progress_keys = ("loss_f", "loss_m", "hypergrad_norm", "mask_prob_image_std",
                   "mask_pairs_differ")   # on each progress line
  resolve_config = staticmethod(xla_attention)  # config.json says which attention ran

  @staticmethod
  def config_groups() -> dict:
    return {"mlo": default_config()}   # no amt: the masks are learned

  def __init__(self, config: ConfigDict, channels: int, num_classes: int = 0, data_info=None):
    if config.model.masking != "random":
      raise ValueError("MLO-MAE learns its masks: model.masking must stay 'random' (unused)")
    config = xla_attention(config)
    super().__init__(config, channels, 0, data_info)
    if num_classes < 2:
      raise ValueError(f"MLO-MAE's upper levels classify: {config.dataset!r} has "
                       f"{num_classes} classes")
    o = config.mlo
    self.mode = o.hypergrad
    if self.mode not in HYPERGRADS:
      raise ValueError(f"mlo.hypergrad must be one of {HYPERGRADS}, got {self.mode!r}")
    if o.unroll_steps < 1:
      raise ValueError(f"mlo.unroll_steps must be >= 1, got {o.unroll_steps}")
    if o.learnable_decoder_pos:   # the decoder's sin-cos table trained too (official models)
      self.model = MAEModel(self.encoder.module, self.model.decoder.clone(learnable_pos=True))
    self.num_classes = num_classes
    self.head = FeatureHead(num_classes, o.head_dropout)
    self.masker = MaskingNet(o.masker_hidden, dtype=self.dtype)
    self.steps = o.unroll_steps

  @staticmethod
  def encoder_options(config) -> dict:
    """``mlo.learnable_pos``: the encoder's sin-cos table is a parameter (its decoder's:
    ``mlo.learnable_decoder_pos``, set in ``__init__``)."""
    return {"learnable_pos": config.mlo.learnable_pos}

  # --------------------------------------------------------------------------------------------
  # Data: three streams. The first (pre-training) takes K batches per round.
  # --------------------------------------------------------------------------------------------
  def data_streams(self, train_split: str, batch_size: int) -> dict:
    c, o = self.config, self.config.mlo
    # Stage III's part: a class-stratified draw of heldout_fraction (seed config.seed), the
    # rest for stages I and II; the same on every host and every resume.
    kept, heldout = data.holdout_splits(c.data, c.dataset, train_split, o.heldout_fraction,
                                        seed=c.seed)
    pretrain = train_split if o.stage1_uses_all_train else kept
    return {"pretrain": (pretrain, self.steps * batch_size),
            "train": (kept, o.head_batch_size or batch_size),
            "heldout": (heldout, o.masker_batch_size or batch_size)}

  # --------------------------------------------------------------------------------------------
  # Parameters and optimizers.
  # --------------------------------------------------------------------------------------------
  def init(self, rng):
    k_mae, k_head, k_mask = jax.random.split(rng, 3)
    params = dict(super().init(k_mae))
    params["cls_head"] = self.head.init(k_head, jnp.zeros((1, self.width)))["params"]
    tokens = jnp.zeros((1, self.num_patches, self.width), self.dtype)
    params["masker"] = self.masker.init(k_mask, tokens)["params"]
    return params

  def optimizer(self, schedule, total_steps: int) -> LevelOptimizers:
    """AdamW per level. theta: ``config.optimizer`` with the run's ``schedule`` (lr = blr *
    batch / 256, ``warmup_epochs``, cosine) read at round u / K of its u-th update; psi and phi:
    lr and weight decay of ``mlo`` (decay on every parameter), cosine to 0 over their
    ``total_steps`` updates, no warmup. With ``mlo.hypergrad='unroll'`` every AdamW gets
    ``mlo.eps_root`` > 0 (differentiating sqrt(nu) at nu = 0 gives NaN otherwise)."""
    c, o = self.config, self.config.mlo
    eps_root = o.eps_root if self.mode == "unroll" else 0.0
    steps = self.steps
    theta_lr = lambda update: schedule(jnp.asarray(update, jnp.float32) / steps)
    theta_tx = optim.make_optimizer(c.optimizer, theta_lr, eps_root=eps_root)
    schedules = {"theta": theta_lr}
    levels = {"theta": theta_tx}
    for level, lr, wd in (("psi", o.head_lr, o.head_weight_decay),
                          ("phi", o.masker_lr, o.masker_weight_decay)):
      schedules[level] = optim.warmup_cosine(lr, 0, total_steps)
      levels[level] = optax.adamw(schedules[level], b1=c.optimizer.b1, b2=c.optimizer.b2,
                                  weight_decay=wd, eps_root=eps_root)
    return LevelOptimizers(levels, schedules)

  # --------------------------------------------------------------------------------------------
  # The three losses, as functions of (level parameters, batch) for ``mim_jax.objectives.hypergrad``.
  # --------------------------------------------------------------------------------------------
  def mask_probs(self, theta, phi, patches):
    """[B, L] masking probabilities of the patches [B, L, p*p*C] (differentiable in both)."""
    tokens = self.encoder.module.apply({"params": theta["encoder"]}, patches.astype(self.dtype),
                                       method=ViTEncoder.embed)
    return self.masker.apply({"params": phi}, tokens)

  def loss_p(self, theta, phi, batch):
    """Stage I: the probability-weighted MSE of the masked patches. The top-k mask is computed
    from the probabilities unless the batch brings it (``ids_keep``, ``ids_restore``, ``mask``:
    held fixed across the finite-difference pair)."""
    patches = patchify(batch["image"], self.patch_size)
    probs = self.mask_probs(theta, phi, patches)
    if "mask" in batch:
      ids_keep, ids_restore, mask = batch["ids_keep"], batch["ids_restore"], batch["mask"]
    else:
      ids_keep, ids_restore, mask = sampling.topk_masking(probs, self.mask_ratio)
    pred = self.model.apply({"params": theta}, patches.astype(self.dtype), ids_keep, ids_restore)
    target = losses.patch_targets(patches, self.norm_pix)
    return losses.probability_weighted_mse(pred, target, mask, probs)

  def loss_cls(self, theta, psi, batch):
    """Stages II and III: cross-entropy of the head on the [CLS] output of the whole image
    (no masking), with dropout drawn from ``batch['dropout']``."""
    tokens = self.encoder.apply(theta["encoder"], batch["image"])
    logits = self.head.apply({"params": psi}, tokens[:, 0], deterministic=False,
                             rngs={"dropout": batch["dropout"]})
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

  def with_mask(self, theta, phi, batch):
    """``batch`` with its top-k mask at (theta, phi) attached."""
    probs = self.mask_probs(theta, phi, patchify(batch["image"], self.patch_size))
    ids_keep, ids_restore, mask = sampling.topk_masking(probs, self.mask_ratio)
    return dict(batch, ids_keep=ids_keep, ids_restore=ids_restore, mask=mask)

  # --------------------------------------------------------------------------------------------
  # One round: K theta steps, one psi step, one phi step.
  # --------------------------------------------------------------------------------------------
  def make_train_step(self, tx: LevelOptimizers, base_key):
    o = self.config.mlo
    theta_update = hypergrad.optax_update(tx.levels["theta"])
    psi_update = hypergrad.optax_update(tx.levels["psi"])
    phi_update = hypergrad.optax_update(tx.levels["phi"])
    loss_p, loss_cls = self.loss_p, self.loss_cls

    def train_step(state, batch):
      step, params, opt = state["step"], state["params"], state["opt_state"]
      theta, psi, phi = theta_of(params), params["cls_head"], params["masker"]
      batches_p = self.split_pretrain(batch["pretrain"])
      batch_f = dict(batch["train"], dropout=stream_key(base_key, "dropout_head", step))
      batch_m = dict(batch["heldout"], dropout=stream_key(base_key, "dropout_masker", step))
      stats = self.prob_stats(theta, phi, batches_p[-1]["image"])
      if self.mode == "unroll":
        grad_phi, diag, inner = hypergrad.unroll(
            loss_p, loss_cls, loss_cls, theta, psi, phi, batches_p, [batch_f], batch_m,
            theta_update, psi_update, opt["theta"], opt["psi"], psi_every=self.steps,
            remat=o.remat)
        theta, opt_theta, psi, opt_psi = inner
        lp, lf = diag["loss_p"], diag["loss_f"]
        # The inner gradients stay inside the unroll: the updated parameters' norm stands in.
        level_norms = [diag["grad_norm"], hypergrad.tree_norm(theta), hypergrad.tree_norm(psi)]
      else:
        opt_theta, values, norms = opt["theta"], [], []
        for b in batches_p:
          value, grads = jax.value_and_grad(loss_p)(theta, phi, b)
          theta, opt_theta = theta_update(theta, grads, opt_theta)
          values.append(value)
          norms.append(hypergrad.tree_norm(grads))
        lf, grads = jax.value_and_grad(loss_cls, argnums=1)(theta, psi, batch_f)
        psi, opt_psi = psi_update(psi, grads, opt["psi"])
        norms.append(hypergrad.tree_norm(grads))
        batch_hyper = self.with_mask(theta, phi, batches_p[-1])
        if self.mode == "jvp":
          grad_phi, diag = hypergrad.jvp(loss_p, loss_cls, loss_cls, theta, psi, phi,
                                         batch_hyper, batch_f, batch_m)
        else:
          grad_phi, diag = hypergrad.finite_difference(
              loss_p, loss_cls, loss_cls, theta, psi, phi, batch_hyper, batch_f, batch_m,
              alpha=o.fd_alpha)
        lp = jnp.mean(jnp.stack(values))
        level_norms = norms + [diag["grad_norm"]]
      phi, opt_phi = phi_update(phi, grad_phi, opt["phi"])
      new_params = dict(params, **theta, cls_head=psi, masker=phi)
      new = {"step": step + 1, "params": new_params,
             "opt_state": {"theta": opt_theta, "psi": opt_psi, "phi": opt_phi},
             "extra": state["extra"]}
      # One norm over every level's gradient: non-finite if any of them is.
      grad_norm = jnp.sqrt(sum(jnp.square(n) for n in level_norms))
      finite = jnp.isfinite(lp) & jnp.isfinite(lf) & jnp.isfinite(diag["loss_m"]) & \
          jnp.isfinite(grad_norm)
      new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)
      metrics = dict(stats, loss=lp, loss_f=lf, loss_m=diag["loss_m"], grad_norm=grad_norm,
                     hypergrad_norm=diag["grad_norm"],
                     lr=tx.schedules["theta"](self.steps * step),  # at the round's first
                     lr_head=tx.schedules["psi"](step), lr_masker=tx.schedules["phi"](step))
      return new, metrics
    return train_step

  def split_pretrain(self, batch):
    """The round's K pre-training batches from its [K * B] batch: row i of batch k is row
    i * K + k, so each device keeps its own rows under the 'data' sharding."""
    def part(x, k):
      return x.reshape(x.shape[0] // self.steps, self.steps, *x.shape[1:])[:, k]
    return [{"image": part(batch["image"], k)} for k in range(self.steps)]

  def prob_stats(self, theta, phi, images):
    """How alive the learned mask is, on a batch of images [B, H, W, C]:
      mask_prob_mean       mean masking probability;
      mask_prob_std        spread over the patches of an image (std, averaged over images);
      mask_prob_gap        masked minus kept patches' mean probability;
      mask_prob_image_std  spread over the images (std of each patch's probability across the
                           batch, averaged over patches): 0 when every image gets the same p;
      mask_pairs_differ    the share of image pairs whose top-k masks differ: 0 = one mask for
                           every image;
      mask_prob_saturated  the share of probabilities within 1e-4 of 0 or 1, where the sigmoid
                           passes (almost) no gradient."""
    probs = jax.lax.stop_gradient(
        self.mask_probs(theta, phi, patchify(images, self.patch_size)))
    _, _, mask = sampling.topk_masking(probs, self.mask_ratio)
    gap = (jnp.sum(probs * mask) / jnp.sum(mask)
           - jnp.sum(probs * (1 - mask)) / jnp.maximum(jnp.sum(1 - mask), 1.0))
    b = probs.shape[0]
    overlap = mask @ mask.T                       # masked patches two images share
    same = overlap >= jnp.sum(mask[0]) - 0.5      # every image masks the same count
    pairs_differ = (b * b - jnp.sum(same)) / max(b * (b - 1), 1)
    saturated = jnp.mean((probs < 1e-4) | (probs > 1 - 1e-4))
    return {"mask_prob_mean": probs.mean(), "mask_prob_std": probs.std(axis=1).mean(),
            "mask_prob_gap": gap, "mask_prob_image_std": probs.std(axis=0).mean(),
            "mask_pairs_differ": pairs_differ, "mask_prob_saturated": saturated}

  # --------------------------------------------------------------------------------------------
  # The PNG: original | masked by the learned mask | reconstruction | probabilities.
  # --------------------------------------------------------------------------------------------
  def reconstruct(self, params, images, rng):
    del rng  # the mask is the network's, not drawn
    theta, phi = theta_of(params), params["masker"]
    patches = patchify(images, self.patch_size)
    probs = self.mask_probs(theta, phi, patches)
    ids_keep, ids_restore, mask = sampling.topk_masking(probs, self.mask_ratio)
    pred = self.model.apply({"params": theta}, patches.astype(self.dtype), ids_keep, ids_restore)
    out = self.paste(images, patches, pred, mask)
    out["probabilities"] = probs.reshape(-1, *self.grid)
    return out
