"""MI-MAE pre-training of ViT-B/16 on ImageNet-1K (Huang et al., ICLR 2025; mi_mae.md).

  python -m mim_jax.main --config configs/mi_mae_imagenet.py --workdir runs/mi_mae_b16 \
      --config.data.data_dir=/path/to/tensorflow_datasets
  python -m mim_jax.main --config configs/mi_mae_imagenet.py:runlocal --workdir /tmp/q

Recipe (the seed summary; no official code exists): MAE's ViT-B/16 model and settings, batch 1024
images x 4 complementary masks = 4096 views per step, AdamW (0.9, 0.95), weight decay 0.05,
blr 1.5e-4 with lr = blr x images per batch / 256 (our choice: 6e-4), 10 warmup epochs then
cosine, 400 epochs, InfoNCE T 0.07, lambdas 1 / 1 / 10 (which lambda weighs which term is our
choice: max 1, min 1, V's fit 10), normalized-pixel loss. lambda 10 weighs V's NLL in V's own
loss, where its AdamW normalizes it away: it has no effect on V (kept as the seed's number).
Our choices, carried over from digits (not measured at this scale): V's own AdamW, 5 updates at
lr 3e-3 per step before the encoder's; L_min in nats per latent dimension, on after one epoch
(1,251 steps). Epochs count images: 400 MI-MAE epochs
x 4 views = 1600 MAE view-epochs, the MAE run it is compared with
(``--config.mi_mae.epoch_unit=views --config.total_epochs=1600`` says the same in views).

Reported (as quoted; per-table numbers could not be obtained): 400-epoch MI-MAE ViT-B 83.9
ImageNet-1K fine-tune top-1 (some summaries: 84.1), +0.5 over 1600-epoch MAE (83.6); larger gains
in linear probing and 1%-label fine-tuning.
"""

from mim_jax import recipes
from mim_jax.config import base_config, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False)
  c = base_config("mi_mae")
  recipes.imagenet_run(c)
  c.model.variant = "B/16"
  c.model.norm_pix_loss = True
  c.mi_mae.num_masks = 4
  c.mi_mae.mask_mode = "partition"
  c.batch_size = 1024
  c.total_epochs = 400.0
  c.warmup_epochs = 10.0
  c.optimizer.blr = 1.5e-4
  c.optimizer.b1, c.optimizer.b2 = 0.9, 0.95
  c.optimizer.weight_decay = 0.05
  c.mi_mae.club_start = 1251   # one epoch of 1,281,167 images at 1024 per step
  recipes.imagenet_pretraining(c)
  if arg.runlocal:
    recipes.shrink_for_cpu(c)
    c.model.decoder_width, c.model.decoder_depth, c.model.decoder_heads = 32, 1, 2
    c.mi_mae.club_start = c.total_steps // 2
  return c
