"""MLO-MAE pre-training on CIFAR-10: the paper's recipe (Guo et al., TMLR 2025; mlo_mae.md).

  python -m mim_jax.main --config configs/mlo_mae_cifar10.py --workdir runs/mlo_cifar10 \
      --config.data.data_dir=/path/to/tensorflow_datasets
  python -m mim_jax.main --config configs/mlo_mae_cifar10.py:hypergrad=jvp --workdir runs/j

CIFAR-10 from tfds (`cifar10`). ViT-B with 2x2 patches on 32x32 images (256 tokens, 192 masked
by the masking network, 100.8 M parameters in it), sin-cos position tables of encoder and
decoder made learnable (as the official models), MAE decoder 512 / 8 / 16, normalized-pixel
targets (as the official code: its main sets norm_pix_loss=True and the store_true flag cannot
turn it off). The training split (50,000) is cut in two: a seeded, class-stratified draw of
10,000 for the masking network, the other 40,000 for the MAE and the head (the official code:
the first 40,000 and the last 10,000); the official test split is never used in training. 200
epochs of the 40,000 (a round = 2 MAE updates), batch 256 for every level, AdamW (0.9, 0.95),
cosine per level, no warmup; lrs 1e-4 (MAE, weight decay 1e-3), 4e-5 (head and masking network,
weight decay 0.01); head dropout 0.1. float32: the finite differences perturb theta by
0.01 / ||v|| in all, below bfloat16's resolution.

Where the official code (main_cifar10.py) differs from the paper (set them to reproduce it):
  batch 128 per level (--config.batch_size=128)
  head and masking lr 1e-3 (--config.mlo.head_lr=1e-3 --config.mlo.masker_lr=1e-3)
  stage I on all 50,000 images, leaking stage III's part (--config.mlo.stage1_uses_all_train=True)
  augmentation RandomCrop(32, pad 4) + flip (ours: RandomResizedCrop(0.2-1) + flip, as MAE)
  its iteration count, 2 x 200 x (40,000 // 128 + 1) = 125,200, counts MAE updates of 128: 320
  passes over the 50,000 images its stage I reads (as many MAE updates: batch 128 with
  --config.total_epochs=320 and stage1_uses_all_train, or 400 on the 40,000)
  each level's cosine spans all theta updates, so the head's and masker's lr only fall to half.
Reported fine-tune top-1 (ViT-B/2, 100 epochs, configs of evaluation.md): MLO-MAE 96.2 vs MAE
93.7 vs 82.3 from scratch.
"""

from mim_jax import recipes
from mim_jax.config import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, hypergrad="finite_difference", runlocal=False)
  c = recipes.mlo_mae(arg.hypergrad)
  c.dataset = "tfds:cifar10"
  c.train_split = "train"
  c.image_size = 32
  c.data.mean = (0.4914, 0.4822, 0.4465)
  c.data.std = (0.2470, 0.2435, 0.2616)
  c.model.variant = "B/2"
  c.model.norm_pix_loss = True
  c.batch_size = 256
  c.total_epochs = 200.0
  c.warmup_epochs = 0.0
  c.optimizer.blr = 1e-4          # lr = blr * 256 / 256 = 1e-4
  c.optimizer.weight_decay = 1e-3
  c.mlo.head_lr = c.mlo.masker_lr = 4e-5
  c.log_every = 50
  c.image_every = 2000
  c.checkpoint.every_steps = 1000
  c.probe.train_split, c.probe.test_split = "train", "evaluation"   # cifar10: test
  c.probe.train_examples = c.probe.test_examples = 10_000
  c.probe.every_steps = 5000
  if arg.runlocal:  # a few rounds of a tiny model on CPU, to check the wiring
    c.model.variant = "tiny_test/4"
    c.model.decoder_width, c.model.decoder_depth, c.model.decoder_heads = 32, 1, 2
    c.batch_size = 16
    c.total_steps = 6
    c.log_every = 2
    c.image_every = c.checkpoint.every_steps = 3
    c.probe.train_examples = c.probe.test_examples = 64
    c.probe.batch_size, c.probe.every_steps = 16, 6
  return c
