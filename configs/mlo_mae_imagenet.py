"""MLO-MAE pre-training on ImageNet-1K (Guo et al., TMLR 2025; mlo_mae.md).

  python -m mim_jax.main --config configs/mlo_mae_imagenet.py --workdir runs/mlo_in1k \
      --config.data.data_dir=/path/to/tensorflow_datasets
  python -m mim_jax.main --config configs/mlo_mae_imagenet.py:runlocal --workdir /tmp/q

ViT-B/16 at 224 px (196 tokens, 147 masked; masking network 77.2 M parameters), MAE decoder
512 / 8 / 16, normalized pixels, RandomResizedCrop(0.2-1) + flip, 50 epochs, sin-cos position
tables of encoder and decoder made learnable. The training split is cut 80/20 (stages I and II /
stage III: a seeded draw of 20 %, uniform since ImageNet's training split is too large to read
its labels first); the validation split is never trained on.

The released code (main_imagenet.py, 2 GPUs x 128 images), as it actually runs: it builds its
three AdamW optimizers before it rescales the lrs by batch / 256, so the rescale never reaches
them and the effective lrs are the flags' values: 1.5e-4 for the MAE (weight decay 0.05, none on
biases and norms), 5e-4 for the head, 5e-5 for the masking network (both at PyTorch's default
weight decay 0.01: the code passes none, and its weight-decay flags are unused). All three loaders
use the same batch size, 2 x 128 = 256 per update (the 64-image batch flags are unused too).
Betas (0.9, 0.95), cosine per level, no warmup. Here: batch 256 for every level, blr 1.5e-4
(lr = blr * 256 / 256 = 1.5e-4), head and masking lrs 5e-4 and 5e-5.

Where the code differs (not reproduced):
  stage III trains on the ImageNet val folder, which is also the set it reports accuracy on
  (a leak); here stage III gets the last 20 % of the training split;
  its iteration count, 2 x epochs x (images / 256), counts MAE updates, so the MAE makes 100
  passes over the training set for "50 epochs" (--config.total_epochs=100 matches that);
  each level's cosine spans all those iterations, so the head's and masking network's lrs
  (one update per 2 iterations) only fall to half.
float32: the finite differences perturb theta by 0.01 / ||v|| in all, below bfloat16's resolution.
Reported fine-tune top-1: MLO-MAE 84.8 vs MAE 83.6 vs 77.9 from scratch.
"""

from mim_jax import recipes
from mim_jax.config import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, hypergrad="finite_difference", runlocal=False)
  c = recipes.mlo_mae(arg.hypergrad)
  c.dataset = "tfds:imagenet2012"
  c.train_split = "train"
  c.image_size = 224
  c.model.variant = "B/16"
  c.model.norm_pix_loss = True
  c.batch_size = 256
  c.total_epochs = 50.0
  c.warmup_epochs = 0.0
  c.optimizer.blr = 1.5e-4
  c.optimizer.weight_decay = 0.05
  c.mlo.head_lr, c.mlo.masker_lr = 5e-4, 5e-5   # the code's effective lrs (no batch rescale)
  c.mlo.head_batch_size = c.mlo.masker_batch_size = 0   # = batch_size, as the code's loaders
  c.log_every = 100
  c.checkpoint.every_steps = 2000
  recipes.imagenet_pretraining(c)
  if arg.runlocal:  # a few rounds of a tiny model on CPU, to check the wiring
    recipes.shrink_for_cpu(c)
    c.model.decoder_width, c.model.decoder_depth, c.model.decoder_heads = 32, 1, 2
    c.image_every = 10
  return c
