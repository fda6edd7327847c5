"""The method contract (mim_jax/methods/base.py): every method has it, and a misspelled hook is
refused when its class is defined instead of being silently skipped by the trainer."""

import pytest

from mim_jax import methods
from mim_jax.methods import base, simmim


def test_every_registered_method_follows_the_contract():
  for name in methods.names():
    cls = methods.get(name)
    assert issubclass(cls, base.Method), name
    # the required members are the method's own, not the base's placeholders (SimMIM's class
    # picks its encoder family's class when constructed: each of those has them)
    for concrete in simmim.FAMILIES.values() if cls is simmim.SimMIM else (cls,):
      for member in ("default_model_config", "init"):
        assert getattr(concrete, member) is not getattr(base.Method, member), (name, member)
    assert isinstance(cls.default_model_config(), type(base.ConfigDict())), name
  # what trains has a loss; kNN only evaluates
  assert methods.get("knn").loss is None and methods.get("mae").loss is not None
  # capabilities the trainer switches on: reconstruction for pre-training, logits for classifiers
  assert methods.get("mae").reconstruct is not None and methods.get("finetune").reconstruct is None
  assert methods.get("finetune").logits is not None and methods.get("mae").logits is None


@pytest.mark.parametrize("name, member", [("reconstuct", "reconstruct"), ("step_hook", "step_hooks"),
                                          ("init_extras", "init_extra"), ("layer_id", "layer_ids"),
                                          ("progres_keys", "progress_keys")])
def test_a_misspelled_hook_fails_at_class_definition(name, member):
  with pytest.raises(TypeError, match=f"{name} looks like a misspelling .*'{member}'"):
    type("Typo", (base.Method,), {name: lambda self: None})


def test_helpers_with_other_names_are_allowed():
  # the public helpers of the methods of this repository are not near-misses
  for name in ("loss_p", "loss_cls", "paste", "masks", "predict", "mask_probs", "with_mask",
               "encoder_options", "fit_variational", "prob_stats", "split_pretrain"):
    assert base.near_miss(name) is None, name
  type("Fine", (base.Method,), {"stage": lambda self, step: "amt", "loss_p": lambda self: 0})
