"""What the evaluation protocols (fine-tune, linear probe, kNN) share: an encoder described by
``config.model`` (``mim_jax.models.encoders``), its features, its layer ids, and restoring it from
another run's checkpoint (``mim_jax.interop.pretrained``)."""

import jax
import jax.numpy as jnp
import numpy as np

from mim_jax.interop import pretrained
from mim_jax.methods.base import Method
from mim_jax.models import encoders
from mim_jax.models.dtypes import compute_dtype


class EncoderProtocol(Method):
  """Base of the evaluation protocols; subclasses set ``self.encoder`` and ``self.model``."""

  def __init__(self, config, channels: int, num_classes: int, data_info=None):
    del data_info  # the training split's size: only AMT needs it
    self.config = config
    self.channels = channels
    self.num_classes = num_classes
    self.image_size = config.image_size
    self.dtype = compute_dtype(config.compute_dtype)

  def _dummy_images(self):
    return jnp.zeros((1, self.image_size, self.image_size, self.channels), jnp.float32)

  def layer_ids(self, params):
    """(layer id per parameter, number of layers) for layer-wise lr decay: the encoder's ids;
    everything outside the encoder (fc_norm, head) at the encoder's top id (ViT: num_layers + 1,
    the MAE rule; hierarchical: num_layers, the MixMIM rule)."""
    top = self.encoder.top_layer_id

    def layer_id(path, leaf):
      keys = tuple(getattr(k, "key", str(k)) for k in path)
      ids = self.encoder.layer_id(keys[1:]) if keys[0] == "encoder" else top
      if np.ndim(ids):  # scanned blocks: one id per slice of the leading axis
        ids = np.reshape(ids, (-1,) + (1,) * (len(leaf.shape) - 1))
      return ids
    return jax.tree_util.tree_map_with_path(layer_id, params), self.encoder.num_layers

  def load_pretrained(self, params, extra, workdir: str, step: int = -1):
    """(step, params, extra, what): the encoder (or a whole classifier) of ``workdir``."""
    step, params, what = pretrained.restore_into(params, self.encoder, workdir, step)
    if what == "classifier" and extra.get("batch_stats") is not None:
      extra = dict(extra, batch_stats=pretrained.read_item(workdir, step, "extra")["batch_stats"])
    return step, params, extra, what


def build_encoder(config, **options):
  return encoders.build(config.model, config.image_size,
                        dtype=compute_dtype(config.compute_dtype), pixels=True, **options)
