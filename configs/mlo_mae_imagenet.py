"""MLO-MAE pre-training on ImageNet-1K (Guo et al., TMLR 2025; mlo_mae.md).

  python -m mim_jax.main --config configs/mlo_mae_imagenet.py --workdir runs/mlo_in1k \
      --config.data.data_dir=/path/to/tensorflow_datasets
  python -m mim_jax.main --config configs/mlo_mae_imagenet.py:runlocal --workdir /tmp/q

ViT-B/16 at 224 px (196 tokens, 147 masked; masking network 77.2 M parameters), MAE decoder
512 / 8 / 16, normalized pixels, RandomResizedCrop(0.2-1) + flip, 50 epochs. The training split
is cut by id 80/20 (stages I and II / stage III); the validation split is never trained on.
From the released command (main_imagenet.py, 2 GPUs x 128 images): blr 1.5e-4 with MAE's
weight decay 0.05; head and masking network at the code's base lrs 5e-4 and 5e-5 scaled by
128 / 256, on batches of 128 (2 x 64), AdamW weight decay 0.01 (PyTorch's default: the code
passes none); cosine per level, no warmup, betas (0.9, 0.95). Our lr rule scales blr by the
global batch (256: lr 1.5e-4); the code scales it by the per-GPU batch (lr 7.5e-5).
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
  c.mlo.head_lr, c.mlo.masker_lr = 2.5e-4, 2.5e-5
  c.mlo.head_batch_size = c.mlo.masker_batch_size = 128
  c.log_every = 100
  c.checkpoint.every_steps = 2000
  recipes.imagenet_pretraining(c)
  if arg.runlocal:  # a few rounds of a tiny model on CPU, to check the wiring
    recipes.shrink_for_cpu(c)
    c.model.decoder_width, c.model.decoder_depth, c.model.decoder_heads = 32, 1, 2
    c.mlo.head_batch_size = c.mlo.masker_batch_size = 16
    c.image_every = 10
  return c
