"""Linear probing of MAE encoders on ImageNet-1K with MAE's protocol (evaluation.md).

  python -m mim_jax.main --config configs/linear_probe_imagenet.py:variant=B/16 \
      --workdir runs/lin_mae_b16 --config.init_from=runs/mae_b16 \
      --config.data.data_dir=/path/to/tensorflow_datasets

Frozen encoder, [CLS] after the final norm, BatchNorm without affine (eps 1e-6) + linear head
(trunc-normal std 0.01); LARS (momentum 0.9, trust coefficient 0.001, no trust ratio or decay on
1-D parameters), weight decay 0, blr 0.1 at batch 16384 (lr 6.4), 10 warmup epochs, cosine;
90 epochs for B/16, 50 for L/16 and H/14; RandomResizedCrop(0.08-1) + flip only; evaluation resize
256 -> center crop 224. Reported (paper, TPU): ViT-B 68.0, ViT-L 75.8, ViT-H 76.6.
BatchNorm statistics here are over the global batch (the PyTorch code keeps them per device).
"""

from mim_jax import recipes
from mim_jax.config import base_config, choose, parse_arg

EPOCHS = {"B/16": 90.0, "L/16": 50.0, "H/14": 50.0}


def get_config(arg=None):
  arg = parse_arg(arg, variant="B/16", runlocal=False)
  choose("variant", arg.variant, EPOCHS)
  c = base_config("linear_probe")
  recipes.linear_probe_protocol(c)
  recipes.imagenet_run(c)
  c.model.variant = arg.variant
  c.batch_size = 16384
  c.total_epochs = EPOCHS[arg.variant]
  c.log_every = 20
  c.checkpoint.every_steps = 1000
  c.eval.every_steps = 1000
  if arg.runlocal:
    recipes.shrink_for_cpu(c)
  return c
