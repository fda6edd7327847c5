"""Weighted kNN against a brute-force numpy reference."""

import numpy as np
import pytest

from mim_jax.evaluation import knn

NUM_CLASSES, DIM, K, T = 5, 32, 20, 0.07


def _clusters(sizes, seed):
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(NUM_CLASSES, DIM)) * 4
  labels = np.repeat(np.arange(NUM_CLASSES), sizes)
  features = centers[labels] + rng.normal(size=(len(labels), DIM))
  order = rng.permutation(len(labels))
  # unnormalized and with varied norms: knn_predict must normalize
  scale = rng.uniform(0.5, 3.0, size=(len(labels), 1))
  return (features[order] * scale[order]).astype(np.float32), labels[order].astype(np.int32)


def _reference(train, train_labels, test, k, temperature):
  train = train.astype(np.float64)
  test = test.astype(np.float64)
  train /= np.linalg.norm(train, axis=1, keepdims=True)
  test /= np.linalg.norm(test, axis=1, keepdims=True)
  sims = test @ train.T
  scores = np.zeros((len(test), NUM_CLASSES))
  for i, row in enumerate(sims):
    nearest = np.argsort(-row)[:k]
    for j in nearest:
      scores[i, train_labels[j]] += np.exp(row[j] / temperature)
  return scores


@pytest.fixture(scope="module")
def data():
  train, train_labels = _clusters([40, 40, 25, 60, 40], seed=0)  # some equal sizes
  test, test_labels = _clusters([11, 11, 8, 15, 8], seed=0)  # same centres, 53 rows
  return train, train_labels, test, test_labels


def test_scores_match_brute_force(data):
  train, train_labels, test, test_labels = data
  expected = _reference(train, train_labels, test, K, T)
  scores = knn.knn_predict(train, train_labels, test, NUM_CLASSES, k=K, temperature=T)
  assert scores.shape == (len(test), NUM_CLASSES) and scores.dtype == np.float32
  np.testing.assert_allclose(scores, expected, rtol=2e-4)
  accuracy = knn.topk_accuracy(scores, test_labels)
  assert accuracy["top1"] == 1.0 and accuracy["top5"] == 1.0
  # 16 does not divide 53: the padded last chunk gives the same scores
  chunked = knn.knn_predict(train, train_labels, test, NUM_CLASSES, k=K, temperature=T, chunk=16)
  np.testing.assert_allclose(chunked, scores, rtol=1e-6)


def test_weighting_by_hand():
  # test point e0: one neighbour of class 1 at cos 1, two of class 0 at cos 0.6; k = 3
  train = np.array([[1, 0], [0.6, 0.8], [0.6, -0.8], [-1, 0]], np.float32) * 2
  labels = np.array([1, 0, 0, 2])
  scores = knn.knn_predict(train, labels, np.array([[3.0, 0.0]], np.float32), 3, k=3,
                           temperature=1.0)
  np.testing.assert_allclose(scores[0], [2 * np.exp(0.6), np.exp(1.0), 0], rtol=1e-5)
  # with a lower temperature the single close neighbour outvotes the two further ones
  cold = knn.knn_predict(train, labels, np.array([[3.0, 0.0]], np.float32), 3, k=3,
                         temperature=0.1)
  assert cold[0].argmax() == 1 and scores[0].argmax() == 0


def test_invalid_arguments(data):
  train, train_labels, test, _ = data
  with pytest.raises(ValueError, match="k="):
    knn.knn_predict(train, train_labels, test, NUM_CLASSES, k=len(train) + 1)
  with pytest.raises(ValueError, match="dims"):
    knn.knn_predict(train, train_labels, test[:, :-1], NUM_CLASSES)
  with pytest.raises(ValueError, match="labels"):
    knn.knn_predict(train, train_labels, test, NUM_CLASSES - 1)


def test_topk_accuracy_by_hand():
  scores = np.array([
      [0.1, 0.9, 0.0, 0.0, 0.0, 0.0],  # label 1: top-1 right
      [0.5, 0.4, 0.3, 0.2, 0.1, 0.0],  # label 4: 5th best -> top-5 only
      [0.5, 0.4, 0.3, 0.2, 0.1, 0.0],  # label 5: 6th best -> neither
      [0.0, 0.2, 0.9, 0.1, 0.0, 0.0],  # label 1: 2nd best -> top-5 only
  ])
  labels = np.array([1, 4, 5, 1])
  accuracy = knn.topk_accuracy(scores, labels)
  assert accuracy == {"top1": 0.25, "top5": 0.75}
  assert knn.topk_accuracy(scores, labels, ks=(1, 2, 6)) == {"top1": 0.25, "top2": 0.5,
                                                              "top6": 1.0}
