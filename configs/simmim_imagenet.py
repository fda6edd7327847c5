"""SimMIM pre-training of ViT-B/16 on ImageNet-1K (Xie et al., CVPR 2022; simmim.md), or with
``encoder=hierarchical`` of the MixMIM-B encoder with SimMIM's Swin-B recipe.

  python -m mim_jax.main --config configs/simmim_imagenet.py --workdir runs/simmim_b16 \
      --config.data.data_dir=/path/to/tensorflow_datasets
  python -m mim_jax.main --config configs/simmim_imagenet.py:runlocal --workdir /tmp/q
  python -m mim_jax.main --config configs/simmim_imagenet.py:encoder=hierarchical \
      --workdir runs/simmim_mixmim_b --config.data.data_dir=/path/to/tensorflow_datasets

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

``encoder=hierarchical``: the official code's best results are on Swin; here its Swin-B recipe
drives MixMIM-B (models/hierarchical.py) -- this pairing is our choice, nobody reports it.
From configs/swin_base__800ep/simmim_pretrain__swin_base__img192_window6__800ep.yaml over the
config.py defaults, and the README's launch line (16 GPUs x 128):
  * 192 px, 32 px mask cells at ratio 0.6 (6x6 = 36 cells, 22 masked), drop path 0.0 (the yaml
    overrides the default 0.1), head: one linear layer per stride-32 token to 32*32*3 pixels;
  * 800 epochs, 10 warmup epochs from 5e-7 per 512 images, lr 1e-4 per 512 (batch 2048:
    4e-4), then x0.1 at epoch 700 (multistep, per step); AdamW (0.9, 0.999), eps 1e-8, weight
    decay 0.05, gradient clipping 5.0;
  * no weight decay on 1-D parameters, biases, the [MASK] token or the relative position bias
    tables (Swin's no-decay lists);
  * data as for the ViT: RandomResizedCrop(scale (0.67, 1), ratio (3/4, 4/3)) + flip.
What differs from the official Swin-B: MixMIM-B's blocks (width 128, depths 2/2/18/2, heads
4/8/16/32 as Swin-B) but no shifted windows, a fixed 2-D sin-cos absolute position table
(Swin-B uses none), MixMIM's init (xavier-uniform linear layers; Swin uses trunc-normal 0.02),
and MixMIM's window layout instead of Swin's 6x6 windows: at 192 px the stages are 48^2, 24^2,
12^2 and 6^2 tokens, and windows of 12, 12, 12, 6 give 4x4 and 2x2 windows in the first two
stages and global attention in the last two -- MixMIM-B's layout at 224 px (its 14, 14, 14, 7
do not divide 48). The [MASK] token replaces tokens after the patch LayerNorm, before the
position table. The probe and kNN pool by averaging (no [CLS]).
Fine-tuning at 224 with MixMIM-B's windows (14, 14, 14, 7) changes the shape of the relative
position bias tables (23^2 -> 27^2, 11^2 -> 13^2): mim_jax.interop.pretrained resamples them bicubically
on load (PyTorch's bicubic, as MixMIM's loader; SimMIM's own Swin loader uses BEiT's geometric
spacing with SciPy splines). To reuse every table as it is, fine-tune at 192 with
--config.model.window_sizes='(12, 12, 12, 6)' or pre-train at 224 (--config.image_size=224
--config.model.window_sizes='()').
"""

from mim_jax import recipes
from mim_jax.config import base_config, choose, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, encoder="vit", runlocal=False)
  choose("encoder", arg.encoder, ("vit", "hierarchical"))
  c = base_config("simmim")
  recipes.imagenet_run(c)
  recipes.simmim_vit_b(c, batch_size=2048)
  if arg.encoder == "hierarchical":
    # simmim_vit_b's optimizer, warmup lr, crop and mask cells are the Swin-B recipe's too; its
    # ViT options (pos_embed, rel_pos, layer_scale, qkv_bias, init) do not apply here.
    c.image_size = 192
    c.model.encoder = "hierarchical"
    c.model.variant = "B"
    c.model.window_sizes = (12, 12, 12, 6)
    c.model.drop_path = 0.0
    c.optimizer.wd_exclude = ("mask_token", "relative_position_bias_table")
    c.probe.pool = c.knn.pool = "avg"
  c.total_epochs = 800.0
  c.warmup_epochs = 10.0
  c.optimizer.schedule = "multistep"
  c.optimizer.decay_epochs = (700.0,)
  c.optimizer.decay_rate = 0.1
  c.model.mask_ratio = 0.6
  if arg.runlocal:
    recipes.shrink_for_cpu(c)
    c.model.mask_patch_size = 16   # hierarchical: half the stride 32 (per-pixel loss blocks)
    c.image_every = 10
    if arg.encoder == "hierarchical":
      c.model.window_sizes = ()    # tiny_test's own windows
  return c

