"""Evaluators: each has ``name``, ``every_steps`` and ``run(state) -> dict of metrics``.

``build`` picks them from the config: the fast probe (``probe.enabled``), kNN (``knn.enabled``)
and, for methods that classify (fine-tuning, linear probing), top-1 / top-5 on ``eval.split``.
"""


def build(config, method, mesh, num_classes: int) -> list:
  from mim_jax.evaluators.classification import ClassifierEvaluator
  from mim_jax.evaluators.knn_eval import KnnEvaluator
  from mim_jax.evaluators.probe import FastProbe
  out = []
  if hasattr(method, "logits"):
    out.append(ClassifierEvaluator(config, method, mesh))
  if config.knn.enabled:
    out.append(KnnEvaluator(config, method, mesh, num_classes))
  if config.probe.enabled:
    out.append(FastProbe(config, method, mesh))
  return out
