"""SimMIM pre-training of ViT-B/16 on ImageNet-1K (Xie et al., CVPR 2022; simmim.md).

  python -m mim_jax.main --config configs/simmim_imagenet.py --workdir runs/simmim_b16 \
      --config.data.data_dir=/path/to/tensorflow_datasets
  python -m mim_jax.main --config configs/simmim_imagenet.py:runlocal --workdir /tmp/q

Checked against the official configs/vit_base__800ep/simmim_pretrain__vit_base__img224__800ep.yaml
and the defaults of its config.py (microsoft/SimMIM):
  * model: ViT-B/16 at 224, no absolute position embedding (USE_APE False), one shared relative
    position bias (USE_SHARED_RPB True, zero init), layer scale 0.1 (INIT_VALUES), q/v biases
    (QKV_BIAS True: q and v only), drop path 0.1, final LayerNorm, BEiT init (trunc-normal 0.02,
    proj / fc2 of block i divided by sqrt(2 i)); [MASK] token trunc-normal 0.02 cut at +-0.02;
    head: one linear layer 768 -> 16*16*3 (PyTorch default init);
  * masking: 32 px mask cells, ratio 0.6 (49 cells, 30 masked, rounded up); L1 on masked pixels
    of the normalized image;
  * optimizer: AdamW (0.9, 0.999), eps 1e-8, weight decay 0.05 (none on 1-D parameters, biases,
    pos_embed, cls_token; the [MASK] token and the bias table are decayed), gradient clipping 5.0;
  * schedule: lr = 1e-4 * batch / 512 (blr 5e-5 per 256 here), 10 warmup epochs rising from
    5e-7 * batch / 512, then constant with x0.1 at epoch 700 of 800, per step;
  * data: RandomResizedCrop(224, scale (0.67, 1), ratio (3/4, 4/3)) + flip, ImageNet mean / std.
Our choices: batch 2048 (the official ViT batch is not stated; its Swin example uses 2048), and
bicubic resizing as everywhere in mim_jax (the official crop is bilinear).

Reported (official README): ViT-B/16, 800 epochs: 83.8 fine-tune top-1
(configs/finetune_simmim_imagenet.py).
"""

from mim_jax import recipes
from mim_jax.config import base_config, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False)
  c = base_config("simmim")
  recipes.imagenet_run(c)
  recipes.simmim_vit_b(c, batch_size=2048)
  c.total_epochs = 800.0
  c.warmup_epochs = 10.0
  c.optimizer.schedule = "multistep"
  c.optimizer.decay_epochs = (700.0,)
  c.optimizer.decay_rate = 0.1
  c.model.mask_ratio = 0.6
  if arg.runlocal:
    recipes.shrink_for_cpu(c)
    c.model.mask_patch_size = 16
    c.image_every = 10
  return c

