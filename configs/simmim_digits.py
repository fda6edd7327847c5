"""SimMIM on the bundled digits: SimMIM's ViT options and loss on the digits demo's encoder, with
the budget and fast probe of configs/mae_digits.py; ``encoder=hierarchical`` runs it on the
hierarchical (MixMIM / Swin-style) encoder instead.

  python -m mim_jax.main --config configs/simmim_digits.py --workdir runs/simmim_digits
  python -m mim_jax.main --config configs/simmim_digits.py:runlocal --workdir /tmp/simmim_quick
  python -m mim_jax.main --config configs/simmim_digits.py:encoder=hierarchical \
      --workdir runs/simmim_hier_digits

Encoder (vit, the default): 16x16 digits in 4x4 patches, 128 wide / 4 blocks / 4 heads (as
mae_digits), with SimMIM's ViT-B options (no absolute position embedding, shared relative
position bias, layer scale 0.1, q/v biases, BEiT init, drop path 0.1). Mask cells are the 4 px
patches themselves (a 32 px cell would cover a quarter of the image; 16 cells, 10 masked at 0.6).
AdamW (0.9, 0.999), weight decay 0.05, clipping 5.0, 10 warmup epochs from 0, then x0.1 at 7/8 of
the epochs (the shape of the official ViT-B schedule). Hardware: 2 CPU cores, a few minutes.

Encoder ``hierarchical`` (our choice of size): the "digits" size of models/hierarchical.py, 2 px
patches, an 8x8 stage 64 wide (2 blocks, one 8x8 window) and a 4x4 stage 128 wide (3 blocks),
stride 4; no shifted windows, a fixed sin-cos position table, [MASK] after the patch LayerNorm.
The same 4 px cells (one last-stage token, 2x2 stage-0 tokens each; 10 of 16 masked), the same
optimizer and schedule, with what the official Swin pre-training does differently from its ViT:
no drop path, and no weight decay on the [MASK] token or the relative position bias tables.
Measured: RESULTS.md.
"""

from mim_jax import recipes
from mim_jax.config import base_config, choose, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, encoder="vit", runlocal=False)
  choose("encoder", arg.encoder, ("vit", "hierarchical"))
  c = base_config("simmim")
  recipes.digits_data(c)
  recipes.digits_encoder(c.model, arg.encoder)
  if arg.encoder == "vit":
    c.model.pos_embed, c.model.rel_pos = "none", "shared"
    c.model.layer_scale, c.model.qkv_bias, c.model.init = 0.1, "qv", "beit"
    c.model.drop_path = 0.1
  else:
    c.model.drop_path = 0.0
  c.model.mask_patch_size = 4
  c.model.mask_ratio = 0.6
  recipes.digits_pretraining(c, arg.runlocal)
  c.optimizer.blr = 1.5e-3
  c.optimizer.b1, c.optimizer.b2 = 0.9, 0.999
  c.optimizer.weight_decay = 0.05
  if arg.encoder == "vit":
    c.optimizer.wd_exclude = ("pos_embed", "cls_token")
  else:
    c.optimizer.wd_exclude = ("mask_token", "relative_position_bias_table")
  c.optimizer.grad_clip_norm = 5.0
  c.optimizer.schedule = "multistep"
  c.optimizer.decay_epochs = (0.875 * c.total_epochs,)
  return c
