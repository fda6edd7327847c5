"""MAE on scikit-learn's handwritten digits: the bundled demo (no download).

  python -m mim_jax.main --config configs/mae_digits.py --workdir runs/mae_digits
  python -m mim_jax.main --config configs/mae_digits.py:runlocal --workdir /tmp/mae_digits_quick

Hardware: 2 CPU cores (also runs on one GPU), under 10 minutes. The 8x8 grey digits (1437 train /
360 test) are upsampled to 16x16 and cut into 4x4 patches (16 tokens, 4 visible at mask 0.75);
encoder 128 wide / 4 blocks, decoder 64 / 2. (With 2x2 patches each patch is one original pixel
and reconstruction becomes interpolation: slower, and the probe gained less.)

The fast probe fits a logistic regression on mean-pooled encoder features of a fixed,
class-stratified draw of 300 labelled training images and scores the evaluation split (digits:
the 360 test images; another dataset: its validation / val / test split). Few labels on
purpose: with all 1437 labels even a random-init encoder reaches ~0.85 (raw pixels ~0.95), which
hides what pre-training learned. At the end the run prints the probe accuracy of the pre-trained
encoder next to the same probe at random init. Measured: README, Results.
"""

from mim_jax import recipes
from mim_jax.config import base_config, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False)
  c = base_config("mae")
  recipes.digits_mae_model(c)
  c.model.mask_ratio = 0.75
  recipes.digits_pretraining(c, arg.runlocal)
  c.optimizer.blr = 1.5e-3
  return c
