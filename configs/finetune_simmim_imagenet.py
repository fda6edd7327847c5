"""Fine-tuning a SimMIM ViT-B/16 on ImageNet-1K with SimMIM's recipe (the official
configs/vit_base__800ep/simmim_finetune__vit_base__img224__800ep.yaml over config.py defaults).

  python -m mim_jax.main --config configs/finetune_simmim_imagenet.py --workdir runs/ft_simmim_b16 \
      --config.init_from=runs/simmim_b16 --config.data.data_dir=/path/to/tensorflow_datasets
  python -m mim_jax.main --config configs/finetune_simmim_imagenet.py:runlocal --workdir /tmp/q

Recipe: 100 epochs, batch 2048 (16 GPUs x 128 in the official example), AdamW (0.9, 0.999,
eps 1e-8), base lr 1.25e-3 per 512 images (here blr 6.25e-4 per 256: lr 5e-3 at 2048), min lr
2.5e-7 per 512 (1e-6 at 2048), 20 warmup epochs rising from that same lr, cosine, weight decay
0.05, layer decay 0.65, drop path 0.1, gradient clipping 5.0, label smoothing 0.1, mixup 0.8, cutmix 1.0, RandAugment
rand-m9-mstd0.5-inc1, random erasing 0.25, bicubic; average pooling. Reported: 83.8 top-1
(800 pre-training epochs).

Architecture (the same file): SimMIM's ViT-B/16 with a relative position bias per block
(USE_RPB; each starts as a copy of the pre-training's shared table), no absolute position
embedding, layer scale, q/v-only biases, average pooling + fc_norm. A checkpoint pre-trained on
another patch grid (another image size) loads with each table's (2g - 1)^2 offsets resampled
bicubically and its three [CLS] entries kept (mim_jax.interop.pretrained; SimMIM's own loader resamples
with BEiT's geometric spacing and SciPy splines instead, which we do not reproduce).
"""

from mim_jax import recipes
from mim_jax.config import base_config, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False)
  c = base_config("finetune")
  recipes.finetune_protocol(c)
  recipes.imagenet_run(c)
  c.model.variant = "B/16"
  c.model.pos_embed, c.model.rel_pos = "none", "per_block"
  c.model.layer_scale, c.model.qkv_bias, c.model.init = 0.1, "qv", "beit"
  c.model.drop_path = 0.1
  c.batch_size = 2048
  c.optimizer.blr = 1.25e-3 / 2      # SimMIM scales per 512 images, this project per 256
  c.optimizer.min_lr = 2.5e-7 * 2048 / 512
  c.optimizer.warmup_lr = 2.5e-7 * 2048 / 512
  c.optimizer.layer_decay = 0.65
  c.optimizer.grad_clip_norm = 5.0
  c.total_epochs = 100.0
  c.warmup_epochs = 20.0
  if arg.runlocal:
    recipes.shrink_for_cpu(c)
  return c
