"""kNN evaluation as a run of its own: restore an encoder (``init_from``) and score it with the
kNN evaluator (``config.knn``: k = 20, cosine, temperature 0.07). Trains nothing, so it runs with
``eval_only=True``."""

from ml_collections import ConfigDict

from mim_jax.evaluation.protocols.encoder_protocol import EncoderProtocol, build_encoder
from mim_jax.models import encoders


class Knn(EncoderProtocol):
  rng_streams = ()

  @staticmethod
  def default_model_config() -> ConfigDict:
    return ConfigDict(encoders.encoder_config())

  def __init__(self, config, channels: int, num_classes: int, data_info=None):
    super().__init__(config, channels, num_classes, data_info)
    # The position table is a parameter (never trained here) so that an encoder pre-trained
    # with a learned one (MLO-MAE) restores; a sin-cos one starts as that table.
    self.encoder = build_encoder(config, learnable_pos=True)

  def init(self, rng):
    return {"encoder": self.encoder.init(rng, self._dummy_images())}
