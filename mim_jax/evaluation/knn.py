"""The kNN evaluator (evaluation.md, DINO's protocol: k=20, T=0.07): features of the training
split form the bank, and each test image takes the weighted vote of its k nearest neighbours.

Both feature sets are L2-normalized; each test feature takes its ``k`` most cosine-similar train
features, and each neighbour votes for its class with weight ``exp(similarity / T)``. Runs
periodically during any training run (``knn.enabled``) or alone (the ``knn`` protocol).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mim_jax.evaluation.features import FeatureExtractor


@jax.jit
def _l2_normalize(x, eps=1e-12):
  x = x.astype(jnp.float32)
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
  return x / jnp.maximum(norm, eps)


@functools.partial(jax.jit, static_argnames=("k", "num_classes"))
def _chunk_scores(train_features, train_labels, test_features, temperature, *, k, num_classes):
  """Class scores [chunk, num_classes] of a chunk of raw test features (train already normalized)."""
  sims = jnp.matmul(_l2_normalize(test_features), train_features.T,
                    precision=jax.lax.Precision.HIGHEST)
  top_sims, top_ids = jax.lax.top_k(sims, k)
  weights = jnp.exp(top_sims / temperature)
  neighbour_labels = train_labels[top_ids]
  rows = jnp.arange(test_features.shape[0])[:, None]
  scores = jnp.zeros((test_features.shape[0], num_classes), jnp.float32)
  return scores.at[rows, neighbour_labels].add(weights)


def knn_predict(train_features, train_labels, test_features, num_classes: int, k: int = 20,
                temperature: float = 0.07, chunk: int = 1024):
  """Weighted kNN class scores, float32 numpy [N_test, num_classes].

  train_features [N_train, D], train_labels [N_train] int in [0, num_classes), test_features
  [N_test, D]. The normalized train features are put on device once; test features go through one
  jitted function in chunks of ``min(chunk, N_test)`` rows, the last chunk zero-padded so that a
  single shape is compiled. Memory per chunk is about ``chunk * N_train`` float32 similarities.
  """
  train_labels = np.asarray(train_labels)
  if np.ndim(train_features) != 2 or np.ndim(test_features) != 2:
    raise ValueError(f"features must be 2-D, got train {np.shape(train_features)} and test "
                     f"{np.shape(test_features)}")
  num_train, dim = train_features.shape
  num_test, test_dim = test_features.shape
  if test_dim != dim:
    raise ValueError(f"feature dims differ: train {dim}, test {test_dim}")
  if train_labels.shape != (num_train,):
    raise ValueError(f"train_labels must be [{num_train}], got shape {train_labels.shape}")
  if not 1 <= k <= num_train:
    raise ValueError(f"k={k} must be in [1, N_train={num_train}]")
  if num_train and (train_labels.min() < 0 or train_labels.max() >= num_classes):
    raise ValueError(f"train labels must lie in [0, {num_classes})")
  if chunk < 1:
    raise ValueError(f"chunk must be positive, got {chunk}")

  train = _l2_normalize(jnp.asarray(train_features))
  labels = jnp.asarray(train_labels, jnp.int32)
  temperature = jnp.float32(temperature)
  test_features = np.asarray(test_features)
  chunk = max(1, min(chunk, num_test))
  out = np.zeros((num_test, num_classes), np.float32)
  for start in range(0, num_test, chunk):
    part = test_features[start:start + chunk]
    rows = part.shape[0]
    if rows < chunk:
      part = np.concatenate([part, np.zeros((chunk - rows, dim), part.dtype)])
    scores = _chunk_scores(train, labels, part, temperature, k=k, num_classes=num_classes)
    out[start:start + rows] = np.asarray(scores)[:rows]
  return out


def topk_accuracy(scores, labels, ks=(1, 5)):
  """Fraction of rows whose label is among the ``k`` highest scores, as {"top{k}": float}.

  Ties are broken towards the lower class index; ``k`` above the class count counts every row.
  """
  scores = np.asarray(scores)
  labels = np.asarray(labels)
  if scores.ndim != 2 or labels.shape != (scores.shape[0],):
    raise ValueError(f"scores [N, C] and labels [N] expected, got {scores.shape}, {labels.shape}")
  order = np.argsort(-scores, axis=1, kind="stable")
  hits = order == labels[:, None]
  return {f"top{k}": float(hits[:, :k].any(axis=1).mean()) for k in ks}


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
