"""Supervised from scratch on digits: the fine-tune recipe of configs/finetune_digits.py (same
encoder, same budget and augmentation) from random init, the baseline that every pre-training
result on digits is shown against.

  python -m mim_jax.main --config configs/supervised_digits.py --workdir runs/supervised_digits

Measured: RESULTS.md.
"""

from mim_jax import recipes


def get_config(arg=None):
  c = recipes.sibling_config("finetune_digits", arg)
  c.init_from = ""
  return c
