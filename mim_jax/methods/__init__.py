"""Pre-training methods. Each is a small class composed of a model, a masking and a loss.

A method gives the generic trainer (``mim_jax.train``):
  ``default_model_config()``  (static) the ``config.model`` group it reads;
  ``init(rng)``               -> params;
  ``loss(params, batch, rngs)``  -> (scalar loss, dict of scalar metrics);
  ``rng_streams``             names of the per-step RNG streams ``loss`` uses;
  ``features(params, images)``   -> [B, D] encoder features for the evaluators;
  ``reconstruct(params, images, rng)`` -> dict of image batches for the PNG grid.
"""

import importlib

_REGISTRY = {"mae": "mim_jax.methods.mae:MAE"}


def names():
  return sorted(_REGISTRY)


def get(name: str):
  if name not in _REGISTRY:
    raise ValueError(f"unknown method {name!r}; known: {names()}")
  module, _, cls = _REGISTRY[name].partition(":")
  return getattr(importlib.import_module(module), cls)
