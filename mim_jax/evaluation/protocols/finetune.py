"""Fine-tuning (evaluation.md, MAE's protocol): the whole encoder plus a linear head, trained with
mixup / cutmix and label smoothing (on device, the ``augment`` stream), drop path (the
``drop_path`` stream), RandAugment and random erasing (host, ``config.data``), layer-wise lr decay
(``optimizer.layer_decay``) and optionally an EMA of the weights (``ema_decay``).

ViT: average pooling of the patch tokens + LayerNorm (fc_norm; the encoder's final norm is left
out), or the [CLS] token after the final norm; the position embedding becomes a parameter that
starts from the sin-cos values. Hierarchical encoder: final norm, average pooling, head.
With ``init_from`` empty this is the supervised-from-scratch baseline.
"""

from ml_collections import ConfigDict

from mim_jax.data import mixup
from mim_jax.evaluation.protocols.encoder_protocol import EncoderProtocol, build_encoder
from mim_jax.models import encoders
from mim_jax.models.classifier import Classifier


class FineTune(EncoderProtocol):
  rng_streams = ("augment", "drop_path")

  @staticmethod
  def default_model_config() -> ConfigDict:
    return ConfigDict(dict(
        encoders.encoder_config(),
        pool="avg",            # avg | cls
        drop_path=0.1,
        head_init_std=2e-5,
        mixup=0.8, cutmix=1.0, mix_switch_prob=0.5, mix_prob=1.0,
        label_smoothing=0.1,
    ))

  def __init__(self, config, channels: int, num_classes: int, data_info=None):
    super().__init__(config, channels, num_classes, data_info)
    m = config.model
    if num_classes < 2:
      raise ValueError(f"fine-tuning needs a labelled dataset; {config.dataset!r} has "
                       f"{num_classes} classes")
    vit = m.encoder == "vit"
    fc_norm = vit and m.pool == "avg"
    self.encoder = build_encoder(config, drop_path_rate=m.drop_path, learnable_pos=vit,
                                 final_norm=not fc_norm)
    if m.pool not in self.encoder.pools:
      raise ValueError(f"model.pool {m.pool!r} is not available for the {m.encoder} encoder "
                       f"(choose from {self.encoder.pools})")
    self.model = Classifier(self.encoder.module, num_classes, m.pool, fc_norm, m.head_init_std,
                            self.encoder.patch_size, dtype=self.dtype)
    self.mix = dict(mixup_alpha=m.mixup, cutmix_alpha=m.cutmix, switch_prob=m.mix_switch_prob,
                    prob=m.mix_prob, smoothing=m.label_smoothing)

  def init(self, rng):
    return self.model.init(rng, self._dummy_images())["params"]

  def loss(self, params, extra, batch, rngs):
    images, targets, _ = mixup.mix_batch(rngs["augment"], batch["image"], batch["label"],
                                         self.num_classes, **self.mix)
    logits = self.model.apply({"params": params}, images, deterministic=False,
                              rngs={"drop_path": rngs["drop_path"]})
    loss = mixup.soft_cross_entropy(logits, targets)
    return loss, ({"loss": loss}, extra)

  def logits(self, params, extra, images):
    del extra
    return self.model.apply({"params": params}, images)
