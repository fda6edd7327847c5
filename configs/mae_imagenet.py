"""MAE pre-training on ImageNet-1K: the paper's recipe (He et al., CVPR 2022; mae.md).

  python -m mim_jax.main --config configs/mae_imagenet.py:variant=B/16 --workdir runs/mae_b16 \
      --config.data.data_dir=/path/to/tensorflow_datasets
  python -m mim_jax.main --config configs/mae_imagenet.py:variant=B/16,runlocal --workdir /tmp/q

ImageNet comes from tfds (`imagenet2012`, prepared with tfds' manual download) or from a folder
(`--config.dataset=folder:/data/imagenet` with train/ and val/ class directories).

Recipe: batch 4096, AdamW (0.9, 0.95), weight decay 0.05, base lr 1.5e-4 (lr = blr * batch / 256
= 2.4e-3), 40 warmup epochs then half-cycle cosine to 0, 800 epochs (1600 for the released
checkpoints: --config.total_epochs=1600), mask ratio 0.75, normalized-pixel loss, decoder
512 wide / 8 deep / 16 heads, RandomResizedCrop(224, scale 0.2-1) + flip. Meant for a TPU pod
or GPU nodes (the paper used 128 TPU-v3 cores; ViT-L 800 epochs took 15.4 h there).

Reported (official repo, 1600 epochs): ViT-B/16 fine-tune 83.6 / linear probe 68.0;
ViT-L/16 85.9 / 75.8; ViT-H/14 fine-tune 86.9. (Fine-tuning and linear probing are separate
evaluation runs; the fast probe logged here is only a training curve.)
"""

from mim_jax import recipes
from mim_jax.config import base_config, choose, parse_arg

VARIANTS = ("B/16", "L/16", "H/14")


def get_config(arg=None):
  arg = parse_arg(arg, variant="B/16", runlocal=False)
  choose("variant", arg.variant, VARIANTS)
  c = base_config("mae")
  c.dataset = "tfds:imagenet2012"
  c.train_split = "train"
  c.image_size = 224
  c.model.variant = arg.variant
  c.model.mask_ratio = 0.75
  c.model.norm_pix_loss = True
  c.batch_size = 4096
  c.total_epochs = 800.0
  c.warmup_epochs = 40.0
  c.optimizer.blr = 1.5e-4
  c.optimizer.weight_decay = 0.05
  c.compute_dtype = "bfloat16"
  c.log_every = 100
  c.checkpoint.every_steps = 2000
  recipes.imagenet_pretraining(c)
  if arg.runlocal:  # a few steps of a tiny model on CPU, to check the wiring
    recipes.shrink_for_cpu(c)
    c.model.decoder_width, c.model.decoder_depth, c.model.decoder_heads = 32, 1, 2
    c.image_every = 10
  return c
