"""Linear probing (evaluation.md, MAE's protocol): a frozen encoder, its pooled features ([CLS]
after the final norm, or the average of the patch tokens) through BatchNorm without affine
parameters and a linear head, trained with LARS (``optimizer.name='lars'``) and plain
cross-entropy. The BatchNorm statistics are state (``extra['batch_stats']``): updated on
training batches, frozen at evaluation. The encoder gets no update and no optimizer state.

The statistics are computed over the global batch (all devices), not per device.
"""

import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict

from mim_jax.evaluation.protocols.encoder_protocol import EncoderProtocol, build_encoder
from mim_jax.models import encoders
from mim_jax.models.classifier import ProbeClassifier


class LinearProbe(EncoderProtocol):
  rng_streams = ()

  @staticmethod
  def default_model_config() -> ConfigDict:
    return ConfigDict(dict(encoders.encoder_config(), pool="cls"))

  def __init__(self, config, channels: int, num_classes: int, data_info=None):
    super().__init__(config, channels, num_classes, data_info)
    if num_classes < 2:
      raise ValueError(f"linear probing needs a labelled dataset; {config.dataset!r} has "
                       f"{num_classes} classes")
    # The position table is a parameter (never trained here) so that an encoder pre-trained
    # with a learned one (MLO-MAE) restores; a sin-cos one starts as that table.
    self.encoder = build_encoder(config, learnable_pos=True)
    self.pool = config.model.pool
    if self.pool not in self.encoder.pools:
      raise ValueError(f"model.pool {self.pool!r} is not available for the "
                       f"{config.model.encoder} encoder (choose from {self.encoder.pools})")
    self.model = ProbeClassifier(self.encoder.module, num_classes, self.pool,
                                 self.encoder.patch_size, dtype=self.dtype)

  def init(self, rng):
    return self.model.init(rng, self._dummy_images())["params"]

  def init_extra(self, rng):
    return {"batch_stats": self.model.init(rng, self._dummy_images())["batch_stats"]}

  def frozen(self, params):
    return {k: jax.tree.map(lambda _: k == "encoder", v) for k, v in params.items()}

  def loss(self, params, extra, batch, rngs):
    del rngs
    logits, updated = self.model.apply(
        {"params": params, "batch_stats": extra["batch_stats"]}, batch["image"], train=True,
        mutable=["batch_stats"])
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]))
    return loss, ({"loss": loss}, dict(extra, batch_stats=updated["batch_stats"]))

  def logits(self, params, extra, images):
    return self.model.apply({"params": params, "batch_stats": extra["batch_stats"]}, images)
