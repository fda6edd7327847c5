"""Supervised from scratch on digits: the fine-tune recipe of configs/finetune_digits.py (same
encoder, same budget and augmentation) from random init, the baseline that every pre-training
result on digits is shown against.

  python -m mim_jax.main --config configs/supervised_digits.py --workdir runs/supervised_digits

Measured: RESULTS.md.
"""

import importlib.util
import os


def get_config(arg=None):
  c = _finetune_config().get_config(arg)
  c.init_from = ""
  return c


def _finetune_config():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "finetune_digits.py")
  spec = importlib.util.spec_from_file_location("_finetune_digits", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
