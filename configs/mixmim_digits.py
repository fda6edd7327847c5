"""MixMIM on the bundled digits: mixed inputs, masked attention and dual reconstruction on a
small hierarchical encoder, with the budget and fast probe of configs/mae_digits.py.

  python -m mim_jax.main --config configs/mixmim_digits.py --workdir runs/mixmim_digits
  python -m mim_jax.main --config configs/mixmim_digits.py:runlocal --workdir /tmp/mixmim_quick
  python -m mim_jax.main --config configs/mixmim_digits.py:encoder=vit --workdir runs/mixmim_vit_digits

Encoder (``encoder=hierarchical``, the default): the "digits" size of models/hierarchical.py, our
choice for 16 px images, which do not divide by MixMIM's stride of 32: 2 px patches, two stages
(8x8 tokens 64 wide in 8x8 windows, 2 blocks; then 4x4 tokens 128 wide, 3 blocks, global), so the
mask lives on a 4x4 grid of 4 px cells, the grid of the ViT demo's patches (8 of 16 cells come
from the partner at ratio 0.5). ``encoder=vit``: our plain-ViT variant on the ViT demo's encoder
(4 px patches, 128 wide, 4 blocks). Decoder 64 wide / 2 blocks / 4 heads and pixel targets
without per-cell normalization, as in mae_digits. MixMIM's optimizer (AdamW 0.9 / 0.95, weight
decay 0.05), blr 1.5e-3 as in mae_digits. Hardware: 2 CPU cores, minutes.
Measured: RESULTS.md.
"""

from mim_jax import recipes
from mim_jax.config import base_config, choose, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, encoder="hierarchical", runlocal=False)
  choose("encoder", arg.encoder, ("hierarchical", "vit"))
  c = base_config("mixmim")
  recipes.digits_data(c)
  recipes.digits_encoder(c.model, arg.encoder)
  c.model.decoder_width, c.model.decoder_depth, c.model.decoder_heads = 64, 2, 4
  c.model.norm_pix_loss = False
  c.model.mask_ratio = 0.5
  recipes.digits_pretraining(c, arg.runlocal)
  c.optimizer.blr = 1.5e-3
  c.optimizer.b1, c.optimizer.b2 = 0.9, 0.95
  c.optimizer.weight_decay = 0.05
  return c
