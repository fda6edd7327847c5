"""Learning-rate schedule and weight-decay rule."""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ml_collections import ConfigDict

from mim_jax import train
from mim_jax import config as config_lib
from mim_jax.config import base_config
from mim_jax.core import optim
from mim_jax.methods.mae import MAE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def official_lr(epoch, lr, min_lr, warmup_epochs, epochs):
  """MAE's per-iteration rule written over fractional epochs."""
  if epoch < warmup_epochs:
    return lr * epoch / warmup_epochs
  return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * (epoch - warmup_epochs) /
                                                      (epochs - warmup_epochs)))


@pytest.mark.parametrize("step", [0, 1, 50, 99, 100, 101, 550, 999, 1000])
def test_schedule_matches_official_rule(step):
  steps_per_epoch, warmup, epochs = 10, 10, 100
  lr = optim.learning_rate(1.5e-4, 4096)
  assert lr == pytest.approx(2.4e-3)
  sched = optim.warmup_cosine(lr, warmup * steps_per_epoch, epochs * steps_per_epoch, 1e-6)
  expected = official_lr(step / steps_per_epoch, lr, 1e-6, warmup, epochs)
  assert float(sched(step)) == pytest.approx(expected, rel=1e-5, abs=1e-9)


def test_schedule_landmarks():
  sched = optim.warmup_cosine(1.0, 10, 110, 0.0)
  assert float(sched(0)) == 0.0
  assert float(sched(5)) == pytest.approx(0.5)
  assert float(sched(10)) == pytest.approx(1.0)
  assert float(sched(60)) == pytest.approx(0.5, abs=1e-6)
  assert float(sched(110)) == pytest.approx(0.0, abs=1e-7)


def test_weight_decay_follows_mae_rule():
  c = base_config("mae")
  c.image_size = 32
  c.model.variant = "tiny_test/8"
  params = jax.jit(MAE(c, 3).init)(jax.random.key(0))
  mask = optim.decay_mask(params)
  flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(mask)}
  for name, decayed in flat.items():
    if name.endswith("['kernel']") or "token" in name:
      assert decayed, name
    else:  # biases, LayerNorm scale / bias
      assert not decayed, name
  assert any("cls_token" in n for n in flat) and any("mask_token" in n for n in flat)
  # and the optimizer applies it: with zero gradients only decayed parameters move
  opt_cfg = ConfigDict(dict(b1=0.9, b2=0.95, weight_decay=0.05, grad_clip_norm=0.0))
  tx = optim.make_optimizer(opt_cfg, lambda step: 0.1)
  params = jax.tree.map(lambda p: p + 1.0, params)   # nonzero everywhere
  updates, _ = jax.jit(tx.update)(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  for (path, u), decayed in zip(jax.tree_util.tree_leaves_with_path(updates),
                                jax.tree.leaves(mask)):
    moved = bool(np.any(np.asarray(u) != 0))
    assert moved == decayed, jax.tree_util.keystr(path)


def test_gradient_clipping_option():
  """With clipping, the chain equals plain AdamW fed the clipped gradients (over two steps,
  so that Adam's moments remember the clipped magnitude)."""
  make = lambda clip: optim.make_optimizer(
      ConfigDict(dict(b1=0.9, b2=0.95, weight_decay=0.0, grad_clip_norm=clip)), lambda s: 1.0)
  params = {"w": jnp.ones((3, 3))}
  grads = [{"w": jnp.full((3, 3), 100.0)}, {"w": jnp.full((3, 3), 0.01)}]
  clipped_tx, plain_tx = make(1.0), make(0.0)
  s1, s2 = clipped_tx.init(params), plain_tx.init(params)
  for g in grads:
    u1, s1 = clipped_tx.update(g, s1, params)
    norm = float(optax.tree.norm(g))
    g_clipped = jax.tree.map(lambda x: x * min(1.0, 1.0 / norm), g)
    u2, s2 = plain_tx.update(g_clipped, s2, params)
    np.testing.assert_allclose(u1["w"], u2["w"], rtol=1e-5)
  u3 = plain_tx.update(grads[1], plain_tx.update(grads[0], plain_tx.init(params), params)[1],
                       params)[0]
  assert not np.allclose(u1["w"], u3["w"], rtol=1e-3)   # clipping changed the second step


def test_simmim_recipe_schedule_warms_up_from_warmup_lr_then_steps_down():
  """configs/simmim_imagenet.py: lr 1e-4 * 2048 / 512, warmup 10 epochs from 5e-7 * 2048 / 512,
  x0.1 from epoch 700 (timm's multistep, set per step); 625 steps per epoch at batch 2048."""
  c = config_lib.load(os.path.join(ROOT, "configs", "simmim_imagenet.py"))
  sched, total = train.schedule_for(c, 1_281_167)
  spe, peak, start = 625, 1e-4 * 2048 / 512, 5e-7 * 2048 / 512
  assert total == 800 * spe
  for step, want in ((0, start), (5 * spe, start + 0.5 * (peak - start)), (10 * spe, peak),
                     (700 * spe - 1, peak), (700 * spe, 0.1 * peak), (800 * spe - 1, 0.1 * peak)):
    np.testing.assert_allclose(float(sched(step)), want, rtol=1e-5)
  c.optimizer.schedule = "linear"
  with pytest.raises(ValueError, match="optimizer.schedule"):
    train.schedule_for(c, 1_281_167)
