"""Linear probing of the digits demo's MAE encoder with MAE's protocol (CPU, about a minute).

  python -m mim_jax.main --config configs/linear_probe_digits.py --workdir runs/linprobe_digits \
      --config.init_from=runs/mae_digits

Frozen encoder; average of the patch tokens after the final norm (the digits demo pools this way;
MAE's ImageNet protocol takes [CLS]: --config.model.pool=cls); BatchNorm without affine + linear
head; LARS (momentum 0.9, trust 0.001, no weight decay), blr 0.1, 10 warmup epochs, cosine.
Changed for digits: batch 256, 90 epochs (~450 steps), crop scale 0.35-1, no flip, and blr 6.4:
LARS's trust ratio (0.001) makes each step relative to |w|, so the absolute lr must be that of
MAE's ImageNet run (0.1 * 16384 / 256 = 6.4), not the one its scaling rule gives at batch 256
(measured on digits: blr 0.1 -> 0.34 top-1 after 90 epochs, 1.6 -> 0.76, 6.4 -> 0.82).
Measured: RESULTS.md.
"""

from mim_jax import recipes
from mim_jax.config import base_config, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False)
  c = base_config("linear_probe")
  recipes.linear_probe_protocol(c)
  recipes.digits_data(c)
  recipes.digits_encoder(c.model)
  recipes.digits_evaluation(c)
  c.model.pool = "avg"
  c.optimizer.blr = 6.4
  c.batch_size = 256
  c.total_epochs = 90.0
  c.warmup_epochs = 10.0
  c.log_every = 50
  c.checkpoint.every_steps = 500
  c.eval.every_steps = 250
  if arg.runlocal:
    c.total_epochs = 4.0
    c.warmup_epochs = 1.0
    c.log_every = 5
    c.checkpoint.every_steps = 10
    c.eval.every_steps = 10
  return c
