"""Evaluation: the protocols that are runs of their own (``protocols``: fine-tune, linear probe,
kNN) and the evaluators any run calls periodically, each with ``name``, ``every_steps`` and
``run(state) -> dict of metrics``.

``build`` picks them from the config: the fast probe (``probe.enabled``), kNN (``knn.enabled``)
and, for methods that classify (fine-tuning, linear probing), top-1 / top-5 on ``eval.split``.
"""


def build(config, method, mesh, num_classes: int) -> list:
  from mim_jax import data
  from mim_jax.evaluation.classification import ClassifierEvaluator
  from mim_jax.evaluation.knn import KnnEvaluator
  from mim_jax.evaluation.probe import FastProbe
  out = []
  if method.logits is not None:
    out.append(ClassifierEvaluator(config, method, mesh))
  if config.knn.enabled:
    out.append(KnnEvaluator(config, method, mesh, num_classes))
  if config.probe.enabled:
    out.append(FastProbe(config, method, mesh))
  # The evaluators' splits are found now, so that a missing one stops the run before it trains.
  splits = ([config.eval.split] if method.logits is not None else []) + (
      [config.knn.train_split, config.knn.test_split] if config.knn.enabled else []) + (
      [config.probe.train_split, config.probe.test_split] if config.probe.enabled else [])
  for split in splits:
    data.dataset_info(config.data, config.dataset, split)
  return out
