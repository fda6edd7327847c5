"""SimMIM + AMT pre-training of ViT-B/16 on ImageNet-1K (guijiejie/AMT, SimMIM-AMT; amt.md): the
recipe of SimMIM-AMT/configs/vit_base/simmim_amt_pretrain__vit_base.yaml over its config.py. Two
variants, differing only in the crop alignment of the attention maps:

  # default: r 0.44 / t 0.26, maps aligned with the crop correctly
  python -m mim_jax.main --config configs/simmim_amt_imagenet.py --workdir runs/simmim_amt_b16 \
      --config.data.data_dir=/path/to/tensorflow_datasets
  # :released: the run the released code makes, r 0.44 / t 0.26, faithful_crop_bug=True
  python -m mim_jax.main --config configs/simmim_amt_imagenet.py:released \
      --workdir runs/simmim_amt_b16_released --config.data.data_dir=/path/to/tensorflow_datasets
  python -m mim_jax.main --config configs/simmim_amt_imagenet.py:runlocal --workdir /tmp/q

Ratios (checked in the released code): unlike MAE-AMT, here the paper's and the released run's
agree. The yaml sets MASK_RATIO 0.44 / THROW_RATIO 0.26, over config.py's defaults of 0.6 / 0.26;
the mask generator's own defaults are 0.44 / 0.26 (SimMIM-AMT/data/amtdatasets.py,
``maskgenerate``); the model's forward takes the mask and has no ratios; the README documents no
SimMIM command, so the yaml is the released run. Counts are rounded up on the 49 cells of 32 px:
22 masked, 13 thrown, 14 visible. The same generator also does the plain masking before AMT
starts, with the same mask count, so the first 40 epochs mask 22 random cells (0.44), not
SimMIM's usual 0.6. The released code slices the cached map with the image size where the cell
size belongs (``maskRandomResizedCrop``, the same slice as in mae-AMT), so it samples from the
top-left 2x2 cells almost always; ``:released`` reproduces that (``faithful_crop_bug=True``), the
default aligns the map with the crop box (mim_jax/masking/amt_align.py).

Shared recipe, checked against the yaml and config.py: ViT-B/16 at 224 with an absolute position
embedding (USE_APE True, a learned table, trunc-normal 0.02) and no relative position bias, layer
scale 0.1, q/v biases, drop path 0.1; 200 epochs, 10 warmup from 5e-7, base lr 1e-4 per 512
images, cosine to 5e-6 per 512, weight decay 0.05, AdamW (0.9, 0.999), clipping 5.0;
RandomResizedCrop(0.67-1) + flip; random masking of 32 px cells until epoch 40
(AMT_START_EPOCH), then AMT with maps refreshed at 40 and every 40 epochs (20% of the schedule).
Our choice: batch 2048, as configs/simmim_imagenet.py.

Reported: AMT improves SimMIM's fine-tuning (abstract; per-table numbers not available).
"""

from mim_jax import recipes
from mim_jax.config import base_config, parse_arg

RATIOS = (0.44, 0.26)   # the paper's; the yaml's and the mask generator's defaults too


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False, released=False)
  c = base_config("simmim")
  recipes.imagenet_run(c)
  recipes.simmim_vit_b(c, batch_size=2048)
  c.model.pos_embed, c.model.rel_pos = "learned", "none"
  c.model.mask_ratio = RATIOS[0]   # plain masking before AMT: the generator's count, 22 cells
  c.total_epochs = 200.0
  c.warmup_epochs = 10.0
  c.optimizer.schedule = "cosine"
  c.optimizer.min_lr = 5e-6 * c.batch_size / 512
  recipes.amt(c, mask_ratio=RATIOS[0], throw_ratio=RATIOS[1], start_epoch=40.0,
              interval_epochs=40.0)
  c.amt.faithful_crop_bug = arg.released
  c.amt.batch_size = 1024
  if arg.runlocal:
    recipes.shrink_for_cpu(c)
    c.image_size, c.model.mask_patch_size = 64, 16   # 16 cells: 8 masked, 5 thrown, 3 visible
    recipes.amt_runlocal(c)
  return c
