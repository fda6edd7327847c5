"""Fast probe (evaluation.md, our choice): a cheap, deterministic curve of representation quality.

Features of a fixed labelled subset of the training split (``probe.train_examples``: a seeded,
class-stratified draw, the same in every run; ``data.subsets``) are computed with the encoder under
the same sharding as training, gathered on the host, standardized, and fit with an L2-regularized
multinomial logistic regression (L-BFGS, scikit-learn); the metric is its accuracy on a fixed
draw of the evaluation split (``probe.test_examples``). Not the full linear-probe protocol: a
signal that pre-training learns.
"""

import numpy as np

from mim_jax.evaluation.features import FeatureExtractor


class FastProbe:
  name = "probe"

  def __init__(self, config, method, mesh):
    self.probe = config.probe
    self.every_steps = config.probe.every_steps
    self.features = FeatureExtractor(config, method, mesh, self.probe.pool, self.probe.batch_size)

  def run(self, state, prefix: str = "probe/") -> dict:
    from sklearn.linear_model import LogisticRegression
    params = state["params"]
    x_train, y_train = self.features(params, self.probe.train_split, self.probe.train_examples)
    x_test, y_test = self.features(params, self.probe.test_split, self.probe.test_examples)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    clf = LogisticRegression(C=1.0 / (self.probe.l2 * len(x_train)), max_iter=self.probe.max_iter)
    clf.fit(x_train, y_train)
    accuracy = float(np.mean(clf.predict(x_test) == y_test))
    return {prefix + "accuracy": accuracy}
