"""Methods: what a run trains. Pre-training methods (a model, a masking and a loss) and the
evaluation protocols (fine-tune, linear probe, kNN), each a small class.

Each subclasses ``mim_jax.methods.base.Method``, the contract with the generic trainer
(``mim_jax.train``): the members every method has (``default_model_config``, ``init``,
``rng_streams``, ``features``), the capabilities a method may have (``loss``, ``reconstruct``,
``logits``, ``layer_ids``, ``load_pretrained``, its own ``optimizer`` and ``make_train_step``) and
the hooks with defaults (``init_extra``, ``frozen``, ``stage``, ``step_hooks``, ``data_streams``,
``epoch_fraction``, ``progress_keys``). A method without ``loss`` (kNN) only evaluates: it runs
with ``eval_only``.
"""

import importlib

_REGISTRY = {
    "mae": "mim_jax.methods.mae:MAE",
    "simmim": "mim_jax.methods.simmim:SimMIM",
    "mi_mae": "mim_jax.methods.mi_mae:MIMAE",
    "mixmim": "mim_jax.methods.mixmim:MixMIM",
    "mlo_mae": "mim_jax.methods.mlo_mae:MLOMAE",
    "finetune": "mim_jax.evaluation.protocols.finetune:FineTune",
    "linear_probe": "mim_jax.evaluation.protocols.linear_probe:LinearProbe",
    "knn": "mim_jax.evaluation.protocols.knn:Knn",
}


def names():
  return sorted(_REGISTRY)


def get(name: str):
  if name not in _REGISTRY:
    raise ValueError(f"unknown method {name!r}; known: {names()}")
  module, _, cls = _REGISTRY[name].partition(":")
  return getattr(importlib.import_module(module), cls)
