"""Methods: what a run trains. Pre-training methods (a model, a masking and a loss) and the
evaluation protocols (fine-tune, linear probe, kNN), each a small class.

A method ``Method(config, channels, num_classes, data_info)`` (``data_info``: the training split's
``data.DatasetInfo``) gives the generic trainer (``mim_jax.train``):
  ``default_model_config()``  (static) the ``config.model`` group it reads;
  ``init(rng)``               -> params (trained by the optimizer);
  ``rng_streams``             names of the per-step RNG streams ``loss`` uses;
  ``loss(params, extra, batch, rngs)`` -> (scalar loss, (dict of scalar metrics, extra));
  ``features(params, images, pool)``   -> [B, D] encoder features for the evaluators;
and optionally:
  ``init_extra(rng)``         -> dict of state that is not trained (BatchNorm statistics, ...);
  ``reconstruct(params, images, rng)`` -> dict of image batches for the PNG grid;
  ``logits(params, extra, images)``    -> [B, classes] (turns on the top-1 / top-5 evaluator);
  ``layer_ids(params)``       -> (pytree of layer ids, num_layers) for ``optimizer.layer_decay``;
  ``frozen(params)``          -> pytree of bools: parameters the optimizer leaves alone;
  ``load_pretrained(params, extra, workdir, step)`` -> (step, params, extra, what) for
                                 ``init_from`` (default: the whole params tree, checked);
  ``stage(step)``             -> a name: methods whose step changes shape during the run (AMT:
                                 'random', then 'amt') get one jitted step per stage, and their
                                 ``loss`` takes ``stage=``;
  ``epoch_fraction``          the share of the training split one configured epoch covers (MI-MAE
                                 with epochs counted in views: 1 / N; default 1);
  ``step_hooks(mesh)``        -> hooks run before the step they are ``due(step)`` at:
                                 ``run(state, step, rng) -> (state, metrics, images)`` (AMT's
                                 attention refresh);
  ``data_streams(train_split, batch_size)`` -> {name: (split, global batch)}: several training
                                 streams, each batch then {name: batch}; the first is what epochs
                                 and images/s count (MLO-MAE's three levels);
  ``optimizer(schedule, total_steps)`` -> an object with ``init(params)`` (the ``opt_state``),
                                 replacing ``config.optimizer``'s; and with it
  ``make_train_step(tx, base_key)`` -> the method's own ``train_step(state, batch) -> (state,
                                 metrics with loss, grad_norm, lr)`` (MLO-MAE's rounds);
  ``progress_keys``           metrics shown on the progress line after the loss.
A method without ``loss`` (kNN) only evaluates: it runs with ``eval_only``.
Every method keeps its encoder under ``params["encoder"]``.
"""

import importlib

_REGISTRY = {
    "mae": "mim_jax.methods.mae:MAE",
    "simmim": "mim_jax.methods.simmim:SimMIM",
    "mi_mae": "mim_jax.methods.mi_mae:MIMAE",
    "mixmim": "mim_jax.methods.mixmim:MixMIM",
    "mlo_mae": "mim_jax.methods.mlo_mae:MLOMAE",
    "finetune": "mim_jax.methods.finetune:FineTune",
    "linear_probe": "mim_jax.methods.linear_probe:LinearProbe",
    "knn": "mim_jax.methods.knn:Knn",
}


def names():
  return sorted(_REGISTRY)


def get(name: str):
  if name not in _REGISTRY:
    raise ValueError(f"unknown method {name!r}; known: {names()}")
  module, _, cls = _REGISTRY[name].partition(":")
  return getattr(importlib.import_module(module), cls)
