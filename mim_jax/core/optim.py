"""Optimizers and the learning-rate schedule.

* AdamW (pre-training, fine-tuning) or LARS (linear probing, evaluation.md), each after optional
  global-norm clipping;
* per-step linear warmup (from ``optimizer.warmup_lr``), then half-cycle cosine or steps
  (``optimizer.schedule``);
* weight decay on parameters with more than one dimension, minus names matched by
  ``optimizer.wd_exclude`` (regexes over 'a/b/c' parameter paths);
* layer-wise lr decay: the update of each parameter is multiplied by its scale
  ``layer_decay ** (num_layers + 1 - layer_id)``; scaling the whole AdamW update also scales
  its decoupled weight decay, as PyTorch's per-group lr does;
* frozen parameters (``frozen``: a pytree of bools) get no update and no optimizer state.
"""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mim_jax.core.tree_paths import path_names
from mim_jax.models import layout


def learning_rate(blr: float, batch_size: int) -> float:
  """MAE's linear scaling rule: lr = blr * batch / 256."""
  return blr * batch_size / 256


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Optimizer steps in one pass over ``num_examples`` (the last partial batch dropped)."""
  return max(1, num_examples // batch_size)


def run_length(config, num_examples: int, step_images: int = 0):
  """(total steps, warmup steps, steps per epoch) of a run over ``num_examples`` per epoch, a
  step taking ``step_images`` of them (default ``config.batch_size``)."""
  per_epoch = steps_per_epoch(num_examples, step_images or config.batch_size)
  total = config.total_steps or max(1, math.ceil(config.total_epochs * per_epoch))
  return total, round(config.warmup_epochs * per_epoch), per_epoch


def _warmup(step, peak_lr, warmup_steps, init_lr):
  return init_lr + (peak_lr - init_lr) * step / max(warmup_steps, 1)


def warmup_cosine(peak_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0,
                  init_lr: float = 0.0):
  """lr(step): linear from ``init_lr`` to ``peak_lr`` over ``warmup_steps``, then cosine to
  ``min_lr``."""
  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = _warmup(step, peak_lr, warmup_steps, init_lr)
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    progress = jnp.clip(progress, 0.0, 1.0)
    cos = min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    return jnp.where(step < warmup_steps, warm, cos)
  return schedule


def warmup_multistep(peak_lr: float, warmup_steps: int, milestones, rate: float,
                     init_lr: float = 0.0):
  """lr(step): linear warmup from ``init_lr``, then ``peak_lr`` times ``rate`` per milestone
  passed (SimMIM's ViT pre-training: x0.1 at epoch 700 of 800, set per step)."""
  milestones = jnp.asarray(sorted(milestones), jnp.float32)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    passed = jnp.sum(step >= milestones) if milestones.size else 0
    return jnp.where(step < warmup_steps, _warmup(step, peak_lr, warmup_steps, init_lr),
                     peak_lr * rate ** passed)
  return schedule


def decay_mask(params, exclude=()):
  """Weight decay on every parameter with more than one dimension, except names matching one of
  the ``exclude`` regexes (searched in the 'a/b/c' path).

  MAE pre-training: biases and LayerNorm parameters (1-D) are not decayed; [CLS] / [MASK] tokens
  (1x1xD) are. Fine-tuning adds ``pos_embed`` and ``cls_token`` to ``exclude``. A block's
  parameter stacked by ``model.scan_blocks`` counts without its leading [depth] axis.
  """
  patterns = [re.compile(p) for p in exclude]
  return jax.tree.map(
      lambda p, name: layout.block_ndim(name, p.ndim) > 1 and not any(
          r.search(name) for r in patterns), params, path_names(params))


def layer_decay_scales(layer_ids, num_layers: int, decay: float):
  """Per-parameter lr multipliers ``decay ** (num_layers + 1 - layer_id)``; an array of ids
  (scanned blocks) gives an array of multipliers."""
  def scale(i):
    s = np.power(float(decay), num_layers + 1 - np.asarray(i, np.float64))
    return float(s) if s.ndim == 0 else s.astype(np.float32)
  return jax.tree.map(scale, layer_ids)


def scale_by_tree(scales) -> optax.GradientTransformation:
  """Multiplies each update by the matching leaf of ``scales`` (a pytree of floats)."""
  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, s: u * jnp.asarray(s, u.dtype), updates, scales), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def lars(schedule, momentum: float, trust_coefficient: float, weight_decay: float,
         mask) -> optax.GradientTransformation:
  """LARS as MAE's linear probe uses it: parameters in ``mask`` get weight decay and the trust
  ratio ``trust_coefficient * |w| / |g + wd w|`` (1 where a norm is 0); then heavy-ball momentum;
  then the learning rate (applied after the momentum buffer, as in the PyTorch code)."""
  return optax.chain(
      optax.add_decayed_weights(weight_decay, mask=mask),
      optax.masked(optax.scale_by_trust_ratio(trust_coefficient=trust_coefficient),
                   mask),
      optax.trace(decay=momentum, nesterov=False),
      optax.scale_by_learning_rate(schedule))


def make_optimizer(opt_config, schedule, params=None, lr_scales=None, frozen=None,
                   eps_root: float = 0.0):
  """The optimizer that ``opt_config`` names.

  ``params`` (arrays or shapes) is needed for ``wd_exclude``; ``lr_scales`` (pytree of floats,
  e.g. from ``layer_decay_scales``) and ``frozen`` (pytree of bools) are optional. ``eps_root``
  goes to AdamW (> 0 to differentiate through its update: ``hypergrad.optax_update``).
  """
  exclude = tuple(opt_config.get("wd_exclude", ()))
  if exclude and params is None:
    raise ValueError("optimizer.wd_exclude needs the parameters to build the decay mask")
  mask = (lambda p: decay_mask(p, exclude))
  name = opt_config.get("name", "adamw")
  if name == "adamw":
    tx = optax.adamw(schedule, b1=opt_config.b1, b2=opt_config.b2, eps_root=eps_root,
                     weight_decay=opt_config.weight_decay, mask=mask)
  elif name == "lars":
    tx = lars(schedule, opt_config.momentum, opt_config.trust_coefficient,
              opt_config.weight_decay, mask)
  else:
    raise ValueError(f"optimizer.name must be 'adamw' or 'lars', got {name!r}")
  if frozen is not None:
    labels = jax.tree.map(lambda f: "frozen" if f else "train", frozen)
    tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
  parts = []
  if opt_config.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(opt_config.grad_clip_norm))
  parts.append(tx)
  if lr_scales is not None:
    parts.append(scale_by_tree(lr_scales))
  return optax.chain(*parts) if len(parts) > 1 else tx
