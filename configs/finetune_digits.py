"""Fine-tuning the digits demo's MAE encoder with MAE's protocol (CPU, a few minutes).

  python -m mim_jax.main --config configs/mae_digits.py --workdir runs/mae_digits
  python -m mim_jax.main --config configs/finetune_digits.py --workdir runs/finetune_digits \
      --config.init_from=runs/mae_digits
  # the same budget from random init: configs/supervised_digits.py

The protocol of MAE's fine-tuning (evaluation.md) shrunk to 16x16 digits: average pooling + fc_norm,
learnable position embedding, layer-wise lr decay 0.75 (4 blocks), drop path 0.1, AdamW
(0.9, 0.999) with weight decay 0.05, label smoothing 0.1, mixup 0.8 / cutmix 1.0, RandAugment
(rand-m9-mstd0.5-inc1), random erasing 0.25. Changed for digits: crop scale 0.35-1 and no flip
(as in pre-training), batch 128, 60 epochs (~660 steps), 5 warmup. Reports top-1 / top-5 on the
360 test images. Measured: RESULTS.md.
"""

from mim_jax import recipes
from mim_jax.config import base_config, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False)
  c = base_config("finetune")
  recipes.finetune_protocol(c)
  recipes.digits_data(c)
  recipes.digits_encoder(c.model)
  recipes.digits_evaluation(c)
  c.model.drop_path = 0.1
  c.optimizer.layer_decay = 0.75
  c.optimizer.blr = 1e-3
  c.batch_size = 128
  c.total_epochs = 60.0
  c.warmup_epochs = 5.0
  c.log_every = 50
  c.checkpoint.every_steps = 500
  c.eval.every_steps = 220
  if arg.runlocal:
    c.total_epochs = 2.0
    c.warmup_epochs = 1.0
    c.log_every = 5
    c.checkpoint.every_steps = 10
    c.eval.every_steps = 11
  return c
