"""Supervised from scratch on ImageNet-1K: the same encoder and the same fine-tune recipe as
configs/finetune_mae_imagenet.py, from random init (no init_from), so that a pre-trained
encoder's fine-tune result can be shown against training from scratch under the same budget.

  python -m mim_jax.main --config configs/supervised_imagenet.py:variant=B/16 \
      --workdir runs/scratch_b16 --config.data.data_dir=/path/to/tensorflow_datasets

This is not the strong from-scratch recipe of MAE's paper (longer, different hyper-parameters):
it isolates what pre-training adds under the fine-tune budget.
"""

import importlib.util
import os


def get_config(arg=None):
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "finetune_mae_imagenet.py")
  spec = importlib.util.spec_from_file_location("_finetune_mae_imagenet", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config(arg)
  c.init_from = ""
  return c
