"""Fine-tuning MAE encoders on ImageNet-1K with MAE's recipe (evaluation.md; the official
FINETUNE.md scripts).

  python -m mim_jax.main --config configs/finetune_mae_imagenet.py:variant=B/16 \
      --workdir runs/ft_mae_b16 --config.init_from=runs/mae_b16 \
      --config.data.data_dir=/path/to/tensorflow_datasets
  python -m mim_jax.main --config configs/finetune_mae_imagenet.py:variant=B/16,runlocal \
      --workdir /tmp/q     # a few steps of a tiny model on CPU, to check the wiring

| variant | epochs | blr  | layer decay | drop path | reported top-1 (official repo) |
| B/16    | 100    | 5e-4 | 0.65        | 0.1       | 83.6 (4 seeds: 83.63 83.66 83.52 83.46) |
| L/16    | 50     | 1e-3 | 0.75        | 0.2       | 85.9 (85.95 85.87 85.76 85.88) |
| H/14    | 50     | 1e-3 | 0.75        | 0.3       | 86.9 |
All: batch 1024 (lr = blr * 1024 / 256), AdamW (0.9, 0.999), weight decay 0.05 (none on 1-D
parameters, position embedding, [CLS]), 5 warmup epochs, cosine to 1e-6, label smoothing 0.1,
mixup 0.8, cutmix 1.0, RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25, average pooling +
fc_norm, learnable position embedding from sin-cos, RandomResizedCrop(224, 0.08-1, bicubic) + flip;
evaluation resize 256 -> center crop 224. Pre-trained with 1600 epochs, normalized pixels.
Meant for GPU nodes or a TPU pod (the official B/16 run: ~7 h on 32 V100s).
"""

from mim_jax import recipes
from mim_jax.config import base_config, choose, parse_arg

RECIPES = {  # epochs, blr, layer decay, drop path
    "B/16": (100.0, 5e-4, 0.65, 0.1),
    "L/16": (50.0, 1e-3, 0.75, 0.2),
    "H/14": (50.0, 1e-3, 0.75, 0.3),
}


def get_config(arg=None):
  arg = parse_arg(arg, variant="B/16", runlocal=False)
  choose("variant", arg.variant, RECIPES)
  epochs, blr, layer_decay, drop_path = RECIPES[arg.variant]
  c = base_config("finetune")
  recipes.finetune_protocol(c)
  recipes.imagenet_run(c)
  c.model.variant = arg.variant
  c.model.drop_path = drop_path
  c.optimizer.blr = blr
  c.optimizer.layer_decay = layer_decay
  c.batch_size = 1024
  c.total_epochs = epochs
  c.warmup_epochs = 5.0
  if arg.runlocal:
    recipes.shrink_for_cpu(c)
  return c
