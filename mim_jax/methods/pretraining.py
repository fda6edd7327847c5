"""What the masked-image pre-training methods (MAE, SimMIM) share: features for the evaluators,
and the hooks of the AMT masking strategy (its stages, its cache, its refresh)."""

import jax.numpy as jnp

from mim_jax.methods.base import Method


class MaskedPretraining(Method):
  """Base of MAE and SimMIM: subclasses set ``encoder`` (an ``EncoderSpec``), ``config`` and
  ``amt`` (an ``amt.AMTMasking``, or None for the method's own masking)."""

  def stage(self, step: int):
    return self.amt.stage(step) if self.amt else None

  def init_extra(self, rng):
    del rng
    return self.amt.init_extra() if self.amt else {}

  def step_hooks(self, mesh):
    if not self.amt:
      return []
    from mim_jax import amt_refresh  # pylint: disable=g-import-not-at-top
    return [amt_refresh.AttentionRefresh(self.config, self, mesh)]

  def features(self, params, images, pool: str = "cls"):
    """[B, width] features of whole images: the [CLS] token or the average of patch tokens."""
    tokens = self.encoder.apply(params["encoder"], images)
    return self.encoder.pool(tokens.astype(jnp.float32), pool)
