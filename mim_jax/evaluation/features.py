"""Encoder features of a labelled split, computed under the training mesh's sharding.

Batches are split over the ``data`` axis like training batches; the features come back
replicated, so every host ends with the same [N, D] array (padding removed).
"""

import jax
import numpy as np
from jax.experimental import multihost_utils

from mim_jax import data
from mim_jax.config import ConfigError
from mim_jax.core import sharding


class FeatureExtractor:
  """``extractor(params, split, max_examples)`` -> (features [N, D] float32, labels [N]).

  ``max_examples`` > 0 takes a seeded, class-stratified draw of that many examples of the split
  (``data.eval_batches``; seed 0, so every run scores the same examples); 0 the whole split."""

  def __init__(self, config, method, mesh, pool: str, batch_size: int):
    if batch_size % jax.device_count():
      raise ConfigError(f"evaluator batch_size {batch_size} must divide over "
                        f"{jax.device_count()} devices")
    self.config, self.batch_size = config, batch_size
    self.mesh = mesh
    self._features = jax.jit(lambda params, images: method.features(params, images, pool),
                             out_shardings=sharding.replicated(mesh))

  def __call__(self, params, split: str, max_examples: int = 0):
    batches = data.eval_batches(self.config.data, self.config.dataset, split,
                                global_batch_size=self.batch_size,
                                image_size=self.config.image_size, mesh=self.mesh,
                                max_examples=max_examples or None)
    feats, labels = [], []
    for batch in batches:
      f = np.asarray(self._features(params, batch["image"]))
      lab, mask = (np.asarray(multihost_utils.process_allgather(batch[k], tiled=True))
                   for k in ("label", "mask"))
      feats.append(f[mask])
      labels.append(lab[mask])
    return np.concatenate(feats).astype(np.float32), np.concatenate(labels)
