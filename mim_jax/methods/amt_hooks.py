"""The method hooks of the AMT masking strategy (amt.md): its stages ('random', then 'amt'), its
cache of attention maps, its refresh. The base of the methods that take AMT's masks: MAE (and
MI-MAE, MLO-MAE built on it) and SimMIM."""

from mim_jax.masking import amt
from mim_jax.methods.base import Method


class AMTHooks(Method):
  """Subclasses set ``config`` and ``amt``: a ``masking.amt.AMTMasking``, or None when the run
  uses the method's own masking (then these hooks are the contract's defaults). Their runs carry
  the ``amt`` config group."""

  @staticmethod
  def config_groups() -> dict:
    return {"amt": amt.default_config()}

  def stage(self, step: int):
    return self.amt.stage(step) if self.amt else None

  def init_extra(self, rng):
    del rng
    return self.amt.init_extra() if self.amt else {}

  def step_hooks(self, mesh):
    if not self.amt:
      return []
    from mim_jax.masking import amt_refresh  # pylint: disable=g-import-not-at-top
    return [amt_refresh.AttentionRefresh(self.config, self, mesh)]
