"""MLO-MAE on the bundled digits, at the budget of configs/mae_digits.py.

  python -m mim_jax.main --config configs/mlo_mae_digits.py --workdir runs/mlo_mae_digits
  python -m mim_jax.main --config configs/mlo_mae_digits.py:hypergrad=unroll --workdir runs/u
  python -m mim_jax.main --config configs/mlo_mae_digits.py:runlocal --workdir /tmp/mlo_quick

Model, data, probe and the MAE's optimizer: as mae_digits (encoder 128 wide / 4 blocks on 4x4
patches of 16x16 images, 16 tokens, 12 masked; decoder 64 / 2; blr 1.5e-3 at batch 128; pixel
targets). The training split (1437 images) is cut by id: the first 80 % (1150) for the MAE and
the classification head, the last 20 % (287) for the masking network. The probe is mae_digits'
(300 labelled training images, the 360 test images), which the three levels never see as held-out
data.

A step is one round: 2 MAE updates of 128 images, one head update, one masking-network update
(heads of 128 images each). Budget: mae_digits' 1100 MAE updates of 128 images (110 of warmup),
i.e. 550 rounds: 137.5 epochs of the 1150 images at 4 rounds per epoch, 13.75 of them warmup.
Head and masking network: the official code's AdamW lr 1e-3 (the paper's 4e-5 is for ViT-B over
200 CIFAR epochs; here it would barely move them), weight decay 0.01, cosine to 0, no warmup.

``hypergrad``: finite_difference (default, the official method) | jvp | unroll (K = 2).
Hardware: 2 CPU cores, minutes (unroll the slowest). Measured: RESULTS.md.
"""

from mim_jax import recipes
from mim_jax.config import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, hypergrad="finite_difference", runlocal=False)
  c = recipes.mlo_mae(arg.hypergrad)
  recipes.digits_mae_model(c)
  recipes.digits_pretraining(c)
  c.optimizer.blr = 1.5e-3
  c.total_epochs = 137.5
  c.warmup_epochs = 13.75
  c.mlo.head_lr = c.mlo.masker_lr = 1e-3
  c.log_every = 25
  c.image_every = 275
  c.checkpoint.every_steps = 250
  c.probe.every_steps = 275
  if arg.runlocal:  # mae_digits' runlocal: 44 MAE updates
    c.total_epochs = 5.5
    c.warmup_epochs = 1.0
    c.log_every = 5
    c.image_every = c.probe.every_steps = 22
    c.checkpoint.every_steps = 10
  return c
