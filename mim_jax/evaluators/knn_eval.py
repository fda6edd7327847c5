"""kNN evaluator (evaluation.md; DINO's protocol): features of the training split form the bank,
each test image takes the temperature-weighted vote of its k nearest neighbours (cosine).
Runs periodically during any training run (``knn.enabled``) or alone (the ``knn`` method)."""

from mim_jax.evaluators.features import FeatureExtractor
from mim_jax.evaluators.knn import knn_predict, topk_accuracy


class KnnEvaluator:
  name = "knn"

  def __init__(self, config, method, mesh, num_classes: int):
    self.knn = config.knn
    self.every_steps = config.knn.every_steps
    self.num_classes = num_classes
    self.features = FeatureExtractor(config, method, mesh, self.knn.pool, self.knn.batch_size)

  def run(self, state, prefix: str = "knn/") -> dict:
    params = state["params"]
    x_train, y_train = self.features(params, self.knn.train_split, self.knn.train_examples)
    x_test, y_test = self.features(params, self.knn.test_split, self.knn.test_examples)
    scores = knn_predict(x_train, y_train, x_test, self.num_classes, k=self.knn.k,
                         temperature=self.knn.temperature)
    acc = topk_accuracy(scores, y_test, ks=(1, 5))
    return {prefix + "top1": acc["top1"], prefix + "top5": acc["top5"]}
