"""MixMIM pre-training on ImageNet-1K (Liu et al., "MixMAE", CVPR 2023; mixmim.md).

  python -m mim_jax.main --config configs/mixmim_imagenet.py:variant=B,epochs=600 \
      --workdir runs/mixmim_b --config.data.data_dir=/path/to/tensorflow_datasets
  python -m mim_jax.main --config configs/mixmim_imagenet.py:variant=L,epochs=600 --workdir runs/mixmim_l
  python -m mim_jax.main --config configs/mixmim_imagenet.py:runlocal --workdir /tmp/q
  python -m mim_jax.main --config configs/mixmim_imagenet.py:encoder=vit --workdir runs/mixmim_vit_b16

Checked against the official code (Sense-X/MixMIM: exp/base_600ep/pretrain.sh, main_pretrain.py,
models_mixmim.py):
  * encoder: MixMIM-B (C 128, heads 4/8/16/32) or -L (C 192, heads 6/12/24/48); depths
    2/2/18/2, windows 14/14/14/7 without shifting, 4 px patches + LayerNorm, fixed sin-cos
    table, masked attention in every block, no drop path;
  * mixing: one mask per step per device on the 7x7 stride-32 grid, int(49 x 0.5) = 24 cells
    from the partner (the device's batch reversed), upsampled to 14^2, 28^2, 56^2;
  * decoder: Linear(8C -> 512), two complementary copies with [MASK], sin-cos table, 8 blocks
    (512, 16 heads, MLP 4), LayerNorm, Linear(512 -> 32*32*3); MSE over all positions against
    per-32x32 normalized pixels;
  * optimizer: AdamW (0.9, 0.95), weight decay 0.05 (none on 1-D parameters), blr 1.5e-4
    (lr = blr * batch / 256), 40 warmup epochs then cosine to 0, no clipping; batch 2048
    (128 per GPU in the official script);
  * data: RandomResizedCrop(224, scale 0.2-1, bicubic) + flip, ImageNet mean / std.
Sizes of the pre-training model at 224 (mixmim.md): B 114.67 M parameters with the fixed tables,
of which the decoder 27.35 M. Fine-tune with configs/finetune_mixmim_imagenet.py.

Reported ImageNet-1K fine-tune top-1 (paper): MixMIM-B 84.6 (300 epochs), 85.1 (600 epochs);
MixMIM-L 85.9 (600 epochs). The classifier is 88 M / 16.3 G multiply-adds (B), 197 M / 35.9 G (L).

``encoder=vit`` is OUR plain-ViT variant (no official version exists): ViT-B/16 with the same
mixing on the 14x14 patch grid (int(196 x 0.5) = 98 patches from the partner), global masked
attention ([CLS] stays with the example's own image), the same decoder predicting 16x16x3 pixels
per patch, and the same optimizer and epochs. No result has been reported for it.
"""

from mim_jax import recipes
from mim_jax.config import base_config, choose, parse_arg

def get_config(arg=None):
  arg = parse_arg(arg, variant="B", epochs=600, encoder="hierarchical", runlocal=False)
  choose("variant", arg.variant, ("B", "L"))
  choose("epochs", arg.epochs, (300, 600))          # the paper's schedules
  choose("encoder", arg.encoder, ("hierarchical", "vit"))
  c = base_config("mixmim")
  recipes.imagenet_run(c)
  recipes.imagenet_pretraining(c)
  if arg.encoder == "vit":
    c.model.encoder, c.model.variant = "vit", f"{arg.variant}/16"
  else:
    c.model.encoder, c.model.variant = "hierarchical", arg.variant
  c.model.mask_ratio = 0.5
  c.model.norm_pix_loss = True
  c.model.drop_path = 0.0
  c.batch_size = 2048
  c.total_epochs = float(arg.epochs)
  c.warmup_epochs = 40.0
  c.optimizer.blr = 1.5e-4
  c.optimizer.b1, c.optimizer.b2 = 0.9, 0.95
  c.optimizer.weight_decay = 0.05
  c.data.crop_scale = (0.2, 1.0)
  c.probe.pool = "avg"
  if arg.runlocal:
    recipes.shrink_for_cpu(c)
    if arg.encoder == "hierarchical":
      c.image_size = 64    # 2x2 cells of 32 px (at 32 px there would be one)
    c.model.decoder_width, c.model.decoder_depth, c.model.decoder_heads = 32, 1, 2
    c.image_every = 10
  return c
