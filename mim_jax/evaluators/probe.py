"""Fast probe (evaluation.md, our choice): a cheap, deterministic curve of representation quality.

Features of a fixed labelled subset of the training split are computed with the encoder under
the same sharding as training, gathered on the host, standardized, and fit with an L2-regularized
multinomial logistic regression (L-BFGS, scikit-learn); the metric is its accuracy on a fixed
subset of the test split. Not the full linear-probe protocol: a signal that pre-training learns.
"""

import logging

import jax
import numpy as np
from jax.experimental import multihost_utils

from mim_jax import data

log = logging.getLogger("mim_jax")


class FastProbe:

  def __init__(self, config, method, mesh, batch_sharding):
    self.config = config
    self.probe = config.probe
    self.method = method
    self.batch_sharding = batch_sharding
    if self.probe.batch_size % jax.device_count():
      raise ValueError(f"probe.batch_size {self.probe.batch_size} must divide over "
                       f"{jax.device_count()} devices")
    pool = self.probe.pool
    self._features = jax.jit(lambda params, images: method.features(params, images, pool),
                             out_shardings=jax.sharding.NamedSharding(
                                 mesh, jax.sharding.PartitionSpec()))

  def features(self, params, split, max_examples):
    """(features [N, D], labels [N]) of the first ``max_examples`` of ``split``, on every host."""
    it = data.eval_iterator(self.config.data, self.config.dataset, split,
                            global_batch_size=self.probe.batch_size,
                            image_size=self.config.image_size, max_examples=max_examples)
    feats, labels = [], []
    for batch in data.device_prefetch(it, self.batch_sharding):
      f = np.asarray(self._features(params, batch["image"]))
      lab, mask = (np.asarray(multihost_utils.process_allgather(batch[k], tiled=True))
                   for k in ("label", "mask"))
      feats.append(f[mask])
      labels.append(lab[mask])
    return np.concatenate(feats), np.concatenate(labels)

  def run(self, params, prefix: str = "probe/") -> dict:
    from sklearn.linear_model import LogisticRegression
    x_train, y_train = self.features(params, self.probe.train_split, self.probe.train_examples)
    x_test, y_test = self.features(params, self.probe.test_split, self.probe.test_examples)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    clf = LogisticRegression(C=1.0 / (self.probe.l2 * len(x_train)), max_iter=self.probe.max_iter)
    clf.fit(x_train, y_train)
    accuracy = float(np.mean(clf.predict(x_test) == y_test))
    return {prefix + "accuracy": accuracy}
