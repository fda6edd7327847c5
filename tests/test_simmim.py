"""SimMIM (simmim.md): block masking, the L1 loss, SimMIM's ViT options on the shared ViT module,
its parameter count, fine-tuning from its shared relative position bias, and a run with AMT."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mim_jax import checkpoint as ckpt_lib, config as config_lib, losses, masking, methods
from mim_jax import pretrained, train
from mim_jax.models import encoders
from mim_jax.models.vit import RelativePositionBias
from mim_jax.patches import patchify, unpatchify
from test_amt import IMAGENET_INFO
from test_train import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_block_masking_counts_and_cells():
  cells = masking.block_masking(jax.random.key(0), 64, 49, 0.6)
  assert np.all(np.asarray(cells).sum(1) == 30)             # 49 cells at 224 / 32: 30 masked
  assert masking.num_masked_cells(36, 0.6) == 22             # Swin at 192 px
  # Cells are spread over all positions.
  assert np.all(np.asarray(cells).mean(0) > 0.3)
  patches = np.asarray(masking.cells_to_patches(cells, (7, 7), 2)).reshape(64, 14, 14)
  grid = np.asarray(cells).reshape(64, 7, 7)
  np.testing.assert_array_equal(patches[:, ::2, ::2], grid)
  np.testing.assert_array_equal(patches[:, 1::2, 1::2], grid)
  ids = masking.cell_patch_ids((7, 7), 2)
  assert sorted(ids.reshape(-1).tolist()) == list(range(196))
  assert ids[8].tolist() == [30, 31, 44, 45]                 # cell (1, 1): patch rows 2-3, cols 2-3


def test_l1_loss_equals_a_pixel_level_computation():
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  images = jax.random.normal(k1, (2, 8, 8, 3))
  pred_images = jax.random.normal(k2, (2, 8, 8, 3))
  mask = (jax.random.uniform(k3, (2, 4)) < 0.5).astype(jnp.float32)       # 2x2 grid of 4 px
  got = losses.masked_l1(patchify(pred_images, 4), patchify(images, 4), mask, 3)
  pixel_mask = np.repeat(np.repeat(np.asarray(mask).reshape(2, 2, 2), 4, 1), 4, 2)[..., None]
  diff = np.abs(np.asarray(pred_images) - np.asarray(images)) * pixel_mask
  want = diff.sum() / (pixel_mask.sum() + 1e-5) / 3
  np.testing.assert_allclose(float(got), want, rtol=1e-6)


def test_relative_position_index_and_gathered_bias():
  h, w = 3, 2
  index = RelativePositionBias.index((h, w))
  coords = [(r, c) for r in range(h) for c in range(w)]
  offsets = {}
  for i, (ri, ci) in enumerate(coords):
    for j, (rj, cj) in enumerate(coords):
      offsets.setdefault((ri - rj, ci - cj), set()).add(index[1 + i, 1 + j])
  assert all(len(v) == 1 for v in offsets.values())         # one entry per 2-D offset
  assert len({v.pop() for v in offsets.values()}) == (2 * h - 1) * (2 * w - 1)
  n = (2 * h - 1) * (2 * w - 1)
  assert set(index[0, 1:]) == {n} and set(index[1:, 0]) == {n + 1} and index[0, 0] == n + 2

  module = RelativePositionBias((h, w), 2)
  params = {"params": {"table": jax.random.normal(jax.random.key(0), (n + 3, 2))}}
  full = np.asarray(module.apply(params))[0]                # [heads, 7, 7]
  ids = jnp.asarray([[0, 3, 1, 6], [0, 2, 5, 4]])
  got = np.asarray(module.apply(params, ids))
  for b in range(2):
    i = np.asarray(ids[b])
    np.testing.assert_array_equal(got[b], full[:, i][:, :, i])


def simmim_tiny(**model):
  c = config_lib.load(os.path.join(ROOT, "configs", "simmim_digits.py:runlocal"))
  c.model.update(dict(dict(width=32, depth=4, heads=2), **model))
  return c


def test_simmim_vit_options():
  c = simmim_tiny(width=64)
  method = methods.get("simmim")(c, 1)
  params = jax.jit(method.init)(jax.random.key(0))
  enc = params["encoder"]
  attn = enc["transformer"]["block_0"]["attn"]
  assert set(attn) == {"qkv", "q_bias", "v_bias", "proj"} and "bias" not in attn["qkv"]
  assert "pos_embed" not in enc and "rel_pos_bias" in enc
  assert "rel_pos_bias" not in attn                          # one table shared by all blocks
  block = enc["transformer"]["block_2"]
  np.testing.assert_array_equal(block["gamma_1"], np.full(64, 0.1, np.float32))
  token = np.asarray(enc["mask_token"])
  assert np.abs(token).max() <= 0.02 and token.std() > 0.005
  # BEiT init: proj / fc2 of block i (1-based) have std 0.02 / sqrt(2 i).
  for i in (0, 3):
    std = float(np.std(enc["transformer"][f"block_{i}"]["mlp"]["fc2"]["kernel"]))
    np.testing.assert_allclose(std, 0.02 / np.sqrt(2 * (i + 1)), rtol=0.05)
  np.testing.assert_allclose(float(np.std(enc["transformer"]["block_3"]["mlp"]["fc1"]["kernel"])),
                             0.02, rtol=0.05)

  # [MASK] replaces the patch embedding: an all-masked image's tokens ignore its pixels.
  spec = method.encoder
  x1, x2 = (jax.random.normal(jax.random.key(k), (1, 16, 16)) for k in (1, 2))
  ones = jnp.ones((1, 16))
  out1 = spec.module.apply({"params": enc}, x1, mask=ones)
  out2 = spec.module.apply({"params": enc}, x2, mask=ones)
  np.testing.assert_allclose(out1, out2, atol=1e-6)

  # With a non-zero shared bias, encoding a subset of tokens is equivariant to their order:
  # the bias follows the tokens' positions.
  enc = dict(enc, rel_pos_bias={"table": jax.random.normal(jax.random.key(3), (52, 2))})
  ids = jnp.asarray([[3, 7, 0, 12, 9]])
  perm = jnp.asarray([2, 0, 4, 1, 3])
  a = spec.module.apply({"params": enc}, x1, ids)
  b = spec.module.apply({"params": enc}, x1, ids[:, perm])
  np.testing.assert_allclose(np.asarray(a)[:, 1:][:, perm], np.asarray(b)[:, 1:], atol=1e-5)
  c = spec.module.apply({"params": dict(enc, rel_pos_bias={"table": jnp.zeros((52, 2))})},
                        x1, ids)
  assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-3


def test_simmim_vit_b_parameter_count():
  """SimMIM's ViT-B/16 pre-training model, counted from its description in simmim.md."""
  c = config_lib.load(os.path.join(ROOT, "configs", "simmim_imagenet.py"))
  method = methods.get("simmim")(c, 3)
  params = jax.eval_shape(method.init, jax.random.key(0))
  d, mlp, depth, heads = 768, 3072, 12, 12
  block = (2 * d                      # norm1
           + d * 3 * d + 2 * d        # qkv without bias, q_bias, v_bias
           + d * d + d                # proj
           + 2 * d                    # gamma_1, gamma_2
           + 2 * d                    # norm2
           + d * mlp + mlp + mlp * d + d)
  encoder = (16 * 16 * 3 * d + d      # patch embedding
             + d + d                  # [CLS], [MASK]
             + (27 * 27 + 3) * heads  # shared relative position bias table
             + depth * block + 2 * d)  # blocks, final norm
  head = d * 16 * 16 * 3 + 16 * 16 * 3
  count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
  assert count(params["encoder"]) == encoder
  assert count(params) == encoder + head


def test_finetune_copies_the_shared_bias_into_every_block():
  pre = simmim_tiny()
  method = methods.get("simmim")(pre, 1)
  params = jax.jit(method.init)(jax.random.key(0))["encoder"]
  shared = np.asarray(jax.random.normal(jax.random.key(1), (52, 2)))
  params["rel_pos_bias"]["table"] = shared

  ft = config_lib.base_config("finetune")
  ft.model.update({k: pre.model[k] for k in encoders.encoder_config()})
  ft.model.rel_pos = "per_block"
  ft.image_size = 16
  spec = encoders.build(ft.model, 16, learnable_pos=True, final_norm=False)
  target = jax.eval_shape(spec.init, jax.random.key(0), jnp.zeros((1, 16, 16, 1)))
  out = pretrained.adapt_encoder(params, target, spec, "test")
  assert "rel_pos_bias" not in out and "mask_token" not in out
  for i in range(4):
    np.testing.assert_array_equal(out["transformer"][f"block_{i}"]["attn"]["rel_pos_bias"]["table"],
                                  shared)
  # An encoder without any relative position bias does not silently drop the table.
  ft.model.rel_pos = "none"
  spec = encoders.build(ft.model, 16, learnable_pos=True, final_norm=False)
  target = jax.eval_shape(spec.init, jax.random.key(0), jnp.zeros((1, 16, 16, 1)))
  with pytest.raises(ckpt_lib.CheckpointMismatchError, match="rel_pos_bias/table"):
    pretrained.adapt_encoder(params, target, spec, "test")


def test_simmim_amt_runs_through_a_refresh(tmp_path):
  c = simmim_tiny(depth=1)
  for key, value in {"model.masking": "amt", "train_split": "train[:160]", "batch_size": 16,
                     "total_steps": 5, "amt.start_epoch": 0.2, "amt.interval_epochs": 0.2,
                     "amt.batch_size": 80, "amt.mask_ratio": 0.44, "amt.throw_ratio": 0.26,
                     "probe.random_init": False, "probe.enabled": False, "image_every": 5,
                     "log_every": 1}.items():
    config_lib.override(c, key, str(value))
  workdir = str(tmp_path / "simmim_amt")
  train.train_and_evaluate(c, workdir)
  rows = read_metrics(workdir)
  assert [r["step"] for r in rows if "amt/attention_entropy" in r] == [2, 4]
  losses_ = [r["loss"] for r in rows if "loss" in r]
  assert len(losses_) == 5 and all(np.isfinite(losses_))
  cache = pretrained.read_item(workdir, 5, "extra")["amt_cache"]
  assert not np.all(cache[:160] == 1) and np.all(cache[160:] == 1)
  method = methods.get("simmim")(c, 1, data_info=IMAGENET_INFO)
  assert method.amt.counts == (8, 5, 3)                      # 16 cells at 0.44 / 0.26, rounded up
