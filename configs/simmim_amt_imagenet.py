"""SimMIM + AMT pre-training of ViT-B/16 on ImageNet-1K: the released SimMIM-AMT recipe
(guijiejie/AMT, SimMIM-AMT/configs/vit_base/simmim_amt_pretrain__vit_base.yaml over its
config.py; amt.md).

  python -m mim_jax.main --config configs/simmim_amt_imagenet.py --workdir runs/simmim_amt_b16 \
      --config.data.data_dir=/path/to/tensorflow_datasets
  python -m mim_jax.main --config configs/simmim_amt_imagenet.py:runlocal --workdir /tmp/q

Checked against that file: ViT-B/16 at 224 with an absolute position embedding (USE_APE True,
a learned table, trunc-normal 0.02) and no relative position bias, layer scale 0.1, q/v biases,
drop path 0.1; 32 px mask cells, r 0.44 / t 0.26 (22 masked, 13 thrown, 14 visible of 49 cells,
rounded up); 200 epochs, 10 warmup from 5e-7, base lr 1e-4 per 512 images, cosine to 5e-6 per
512, weight decay 0.05, AdamW (0.9, 0.999), clipping 5.0; RandomResizedCrop(0.67-1) + flip;
block masking at 0.6 until epoch 40 (AMT_START_EPOCH), then AMT with maps refreshed at 40 and
every 40 epochs (20% of the schedule). Our choice: batch 2048, as configs/simmim_imagenet.py.

Reported: AMT improves SimMIM's fine-tuning (abstract; per-table numbers not available).
"""

from mim_jax import recipes
from mim_jax.config import base_config, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False)
  c = base_config("simmim")
  recipes.imagenet_run(c)
  recipes.simmim_vit_b(c, batch_size=2048)
  c.model.pos_embed, c.model.rel_pos = "learned", "none"
  c.model.mask_ratio = 0.6
  c.total_epochs = 200.0
  c.warmup_epochs = 10.0
  c.optimizer.schedule = "cosine"
  c.optimizer.min_lr = 5e-6 * c.batch_size / 512
  recipes.amt(c, mask_ratio=0.44, throw_ratio=0.26, start_epoch=40.0, interval_epochs=40.0)
  c.amt.batch_size = 1024
  if arg.runlocal:
    recipes.shrink_for_cpu(c)
    c.model.mask_patch_size = 16
    recipes.amt_runlocal(c)
  return c

