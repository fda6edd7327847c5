"""Fine-tuning MixMIM encoders (the hierarchical encoder of mixmim.md) on ImageNet-1K with
MixMIM's recipe (the official exp/base_600ep/finetune.sh and main_finetune.py defaults).

  python -m mim_jax.main --config configs/finetune_mixmim_imagenet.py:variant=B \
      --workdir runs/ft_mixmim_b --config.init_from=runs/mixmim_b \
      --config.data.data_dir=/path/to/tensorflow_datasets
  python -m mim_jax.main --config configs/finetune_mixmim_imagenet.py:variant=B,runlocal \
      --workdir /tmp/q     # a few steps of a tiny model on CPU, to check the wiring

Recipe (B): 100 epochs, batch 1024, AdamW (0.9, 0.999), blr 5e-4 (lr = blr * 1024 / 256), layer
decay 0.7 (MixMIM's layer ids: block j of stage i -> sum(depths[:i]) + j + 1, merging layers with
the next stage, final norm and head at sum(depths)), weight decay 0.05, drop path 0.1, 5 warmup
epochs, cosine to 1e-6, label smoothing 0.1, mixup 0.8, cutmix 1.0, RandAugment
rand-m9-mstd0.5-inc1, random erasing 0.25; final norm + average pooling + head; the sin-cos
position table stays fixed. Reported top-1 (MixMIM paper / repo): MixMIM-B 84.6 (300 pre-training
epochs), 85.1 (600); MixMIM-L 85.9 (600). Classifier size at 224: B 88.34 M parameters
(16.35 G multiply-adds), L 197.40 M (35.86 G).

Checkpoints pre-trained with other windows load with every relative position bias table
resampled to this model's windows (mim_jax.interop.pretrained; PyTorch's bicubic over the (2w - 1)^2
offsets of each head, as MixMIM's own loader, util/pos_embed.py, does): e.g. SimMIM on this
encoder at 192 px (configs/simmim_imagenet.py:encoder=hierarchical, windows 12 / 12 / 12 / 6,
tables 23^2 and 11^2) fine-tunes here at 224 px (windows 14 / 14 / 14 / 7, tables 27^2 and 13^2).

L: the official repository ships only B's script; we use B's recipe with drop path 0.2 (our
choice, following MAE's ViT-L) -- check it against the paper before quoting an L result.
"""

from mim_jax import recipes
from mim_jax.config import base_config, choose, parse_arg

DROP_PATH = {"B": 0.1, "L": 0.2}


def get_config(arg=None):
  arg = parse_arg(arg, variant="B", runlocal=False)
  choose("variant", arg.variant, DROP_PATH)
  c = base_config("finetune")
  recipes.finetune_protocol(c)
  recipes.imagenet_run(c)
  c.model.encoder = "hierarchical"
  c.model.variant = arg.variant
  c.model.drop_path = DROP_PATH[arg.variant]
  c.optimizer.blr = 5e-4
  c.optimizer.layer_decay = 0.7
  c.optimizer.wd_exclude = ()     # 1-D parameters only: the position table is not a parameter
  c.batch_size = 1024
  c.total_epochs = 100.0
  c.warmup_epochs = 5.0
  if arg.runlocal:
    recipes.shrink_for_cpu(c)
  return c
