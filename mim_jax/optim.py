"""Optimizer and learning-rate schedule: AdamW, per-step linear warmup then half-cycle cosine."""

import jax
import jax.numpy as jnp
import optax


def learning_rate(blr: float, batch_size: int) -> float:
  """MAE's linear scaling rule: lr = blr * batch / 256."""
  return blr * batch_size / 256


def warmup_cosine(peak_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0):
  """lr(step): linear from 0 to ``peak_lr`` over ``warmup_steps``, then cosine to ``min_lr``."""
  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = peak_lr * step / max(warmup_steps, 1)
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    progress = jnp.clip(progress, 0.0, 1.0)
    cos = min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    return jnp.where(step < warmup_steps, warm, cos)
  return schedule


def decay_mask(params):
  """MAE's rule: weight decay on every parameter with more than one dimension.

  Biases and LayerNorm scales/offsets (1-D) are not decayed; [CLS] / [MASK] tokens (1x1xD) are.
  """
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(opt_config, schedule):
  """optax AdamW with MAE's betas and decay mask, optionally after global-norm clipping."""
  adamw = optax.adamw(schedule, b1=opt_config.b1, b2=opt_config.b2,
                      weight_decay=opt_config.weight_decay, mask=decay_mask)
  if opt_config.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(opt_config.grad_clip_norm), adamw)
  return adamw
