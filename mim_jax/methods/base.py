"""The contract between a method and the generic trainer (``mim_jax.train``), as code.

Every method (pre-training methods and evaluation protocols alike) subclasses ``Method``. The
trainer calls each member plainly: what a method does not define is the default here. Members
that are ``None`` by default are capabilities: the trainer uses them where a method gives them.
A subclass member whose name is one typing slip from a contract member (``reconstuct``,
``step_hook``) is refused when the class is defined, rather than ignored at run time.
"""

import difflib

import jax.numpy as jnp
from ml_collections import ConfigDict

# The members of the contract; a subclass's other public names must not be near-misses of these.
CONTRACT = (
    "default_model_config", "init", "rng_streams", "loss", "features",
    "init_extra", "reconstruct", "logits", "layer_ids", "frozen", "load_pretrained", "stage",
    "epoch_fraction", "step_hooks", "data_streams", "optimizer", "make_train_step",
    "progress_keys", "config_groups", "resolve_config",
)


def near_miss(name: str):
  """The contract member ``name`` looks like a typing slip of (one or two characters away, the
  lengths within one), or None."""
  if name in CONTRACT or name.startswith("_"):
    return None
  for member in CONTRACT:
    if abs(len(member) - len(name)) <= 1 and (
        difflib.SequenceMatcher(None, name, member).ratio() >= 0.8):
      return member
  return None


class Method:
  """What a run trains (or evaluates): ``Method(config, channels, num_classes, data_info)``,
  ``data_info`` being the training split's ``data.DatasetInfo``. Every method keeps its encoder
  under ``params["encoder"]``, described by ``self.encoder`` (a ``models.encoders.EncoderSpec``)."""

  # --- required ------------------------------------------------------------------------------
  @staticmethod
  def default_model_config() -> ConfigDict:
    """The ``config.model`` group the method reads."""
    raise NotImplementedError

  def init(self, rng):
    """-> params (what the optimizer trains)."""
    raise NotImplementedError

  def features(self, params, images, pool: str = "cls"):
    """-> [B, D] encoder features of whole images for the kNN and fast-probe evaluators: the
    [CLS] token or the average of the tokens (``pool``)."""
    tokens = self.encoder.apply(params["encoder"], images)
    return self.encoder.pool(tokens.astype(jnp.float32), pool)

  rng_streams: tuple = ()
  """Names of the per-step RNG streams ``loss`` takes (each folded with the step)."""

  # --- capabilities: None where the method has none ------------------------------------------
  loss = None
  """``loss(params, extra, batch, rngs[, stage=])`` -> (scalar, (dict of scalar metrics,
  extra)). A method without it (kNN) only evaluates, with ``eval_only``."""

  reconstruct = None
  """``reconstruct(params, images, rng)`` -> dict of image batches for the PNG grid."""

  logits = None
  """``logits(params, extra, images)`` -> [B, classes]: turns on the top-1 / top-5 evaluator."""

  layer_ids = None
  """``layer_ids(params)`` -> (pytree of layer ids, num_layers): ``optimizer.layer_decay``."""

  load_pretrained = None
  """``load_pretrained(params, extra, workdir, step)`` -> (step, params, extra, what) for
  ``init_from``, on host copies; without it the whole params tree is restored, checked."""

  optimizer = None
  """``optimizer(schedule, total_steps)`` -> an object with ``init(params)``, replacing
  ``config.optimizer``'s; comes with ``make_train_step`` (MLO-MAE's levels)."""

  make_train_step = None
  """``make_train_step(tx, base_key)`` -> the method's own ``train_step(state, batch) -> (state,
  metrics with loss, grad_norm, lr)`` (MLO-MAE's rounds of three levels)."""

  # --- hooks with defaults -------------------------------------------------------------------
  @staticmethod
  def config_groups() -> dict:
    """{name: ConfigDict}: the top-level config groups the method owns besides ``model`` (AMT's
    ``amt``, ``mi_mae``, ``mlo``). A run's config holds these and no other method's."""
    return {}

  @staticmethod
  def resolve_config(config: ConfigDict) -> ConfigDict:
    """The config as the method will run it (the trainer saves this one as ``config.json``):
    settings the method decides for itself resolved (MLO-MAE: 'auto' attention to 'xla' under a
    second-order hypergradient)."""
    return config

  epoch_fraction: float = 1.0
  """The share of the training split one configured epoch covers (MI-MAE, epochs in views:
  1 / N)."""

  progress_keys: tuple = ()
  """Metrics shown on the progress line after the loss."""

  def init_extra(self, rng) -> dict:
    """-> state that is not trained by the optimizer (BatchNorm statistics, caches)."""
    del rng
    return {}

  def frozen(self, params):
    """-> pytree of bools: parameters the optimizer leaves alone; None: none."""
    del params
    return None

  def stage(self, step: int):
    """A name for the step's shape: a method whose steps change shape during the run (AMT:
    'random', then 'amt') gets one jitted step per stage, its ``loss`` taking ``stage=``."""
    del step
    return None

  def step_hooks(self, mesh) -> list:
    """Hooks run before the step they are ``due(step)`` at: ``name`` and
    ``run(state, step, rng) -> (state, metrics, images)`` (AMT's attention refresh)."""
    del mesh
    return []

  def data_streams(self, train_split, batch_size: int) -> dict:
    """{name: (split, global batch)}: the training streams, each batch then {name: batch} when
    there are several; the first is what epochs and images/s count (MLO-MAE: three)."""
    return {"": (train_split, batch_size)}

  def __init_subclass__(cls, **kwargs):
    super().__init_subclass__(**kwargs)
    for name in vars(cls):
      member = near_miss(name)
      if member:
        raise TypeError(f"{cls.__name__}.{name} looks like a misspelling of the method contract's "
                        f"{member!r} (mim_jax/methods/base.py), which the trainer would not call")
