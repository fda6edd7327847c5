"""Relative position bias tables resampled when the window (hierarchical encoder) or the patch
grid (ViT) differs between the checkpoint and the model (mim_jax.interop.pretrained.resize_tables).

The rule is PyTorch's F.interpolate(mode='bicubic', align_corners=False) (Keys kernel, a = -0.75,
half-pixel centres, border samples repeated, no antialiasing), as MixMIM's fine-tuning loader
applies it to each head's (2w - 1) x (2w - 1) grid of offsets. The references here are written
out by hand (3 -> 5) or computed one output sample at a time (``reference_resize``), never with
the library's matrices.
"""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from mim_jax import methods
from mim_jax import config as config_lib
from mim_jax.core import checkpoint as ckpt_lib
from mim_jax.interop import pretrained
from mim_jax.models import encoders
from mim_jax.models.vit import bicubic_matrix, resize_offset_table

# 1-D weights of 3 -> 5 samples. Output i reads x = 0.6 (i + 0.5) - 0.5 = -0.2, 0.4, 1, 1.6, 2.2,
# i.e. t = x - floor(x) = 0.8, 0.4, 0, 0.6, 0.2. With a = -0.75 the four taps floor(x) - 1 ..
# floor(x) + 2 weigh k(1 + t), k(t), k(1 - t), k(2 - t), where k(s) = 1.25 s^3 - 2.25 s^2 + 1 on
# [0, 1] and -0.75 s^3 + 3.75 s^2 - 6 s + 3 on [1, 2]:
#   t = 0.8: -0.024, 0.2, 0.92, -0.096   taps -2, -1, 0, 1 -> inputs 0, 0, 0, 1
#   t = 0.4: -0.108, 0.72, 0.46, -0.072  taps -1, 0, 1, 2 -> inputs 0, 0, 1, 2
#   t = 0:    0, 1, 0, 0
#   t = 0.6: -0.072, 0.46, 0.72, -0.108  taps 0, 1, 2, 3 -> inputs 0, 1, 2, 2
#   t = 0.2: -0.096, 0.92, 0.2, -0.024   taps 1, 2, 3, 4 -> inputs 1, 2, 2, 2
# and the taps that land on the same (border) input add up.
W_3_TO_5 = np.array([
    [1.096, -0.096, 0.0],
    [0.612, 0.46, -0.072],
    [0.0, 1.0, 0.0],
    [-0.072, 0.46, 0.612],
    [0.0, -0.096, 1.096],
])


def keys_kernel(s):
  s = abs(s)
  if s <= 1:
    return 1.25 * s ** 3 - 2.25 * s ** 2 + 1
  if s < 2:
    return -0.75 * s ** 3 + 3.75 * s ** 2 - 6 * s + 3
  return 0.0


def reference_resize(grid, size):
  """[n, n, heads] -> [size, size, heads], one output sample at a time (PyTorch's bicubic)."""
  n = grid.shape[0]
  out = np.zeros((size, size, grid.shape[2]))
  taps = lambda i: [(min(max(int(np.floor(x)) + k, 0), n - 1), keys_kernel(x - np.floor(x) - k))
                    for x in [(i + 0.5) * n / size - 0.5] for k in (-1, 0, 1, 2)]
  for a in range(size):
    for b in range(size):
      for r, wr in taps(a):
        for c, wc in taps(b):
          out[a, b] += wr * wc * grid[r, c]
  return out


def reference_table(table, side_in, side_out, extra=0):
  """A [side_in^2 + extra, heads] table for side_out, through ``reference_resize``."""
  table = np.asarray(table, np.float64)
  grid = table[:side_in ** 2].reshape(side_in, side_in, -1)
  out = reference_resize(grid, side_out).reshape(side_out ** 2, -1)
  return np.concatenate([out, table[side_in ** 2:]])


def random_like(shapes, seed):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype), shapes)


def flat(tree):
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {jax.tree_util.keystr(p, simple=True, separator="/"): np.asarray(v) for p, v in leaves}


# ----------------------------------------------------------------------------- the resampling


def test_bicubic_weights_match_the_hand_computed_ones():
  np.testing.assert_allclose(bicubic_matrix(3, 5), W_3_TO_5, atol=1e-12)
  np.testing.assert_array_equal(bicubic_matrix(7, 7), np.eye(7))
  np.testing.assert_allclose(bicubic_matrix(13, 11).sum(axis=1), 1.0, atol=1e-12)


def test_3x3_table_to_5x5_by_hand():
  rng = np.random.default_rng(0)
  table = rng.normal(size=(9, 2)).astype(np.float32)              # a 3x3 grid of offsets, 2 heads
  out = resize_offset_table(table, (3, 3), (5, 5))
  assert out.shape == (25, 2) and out.dtype == np.float32
  for h in range(2):
    z = table[:, h].astype(np.float64).reshape(3, 3)
    np.testing.assert_allclose(out[:, h].reshape(5, 5), W_3_TO_5 @ z @ W_3_TO_5.T, atol=1e-6)
  # The centre offset (0, 0) lands on an input sample: kept exactly.
  np.testing.assert_allclose(out.reshape(5, 5, 2)[2, 2], table.reshape(3, 3, 2)[1, 1], atol=1e-7)
  # A ViT (BEiT) table: the three [CLS] entries after the grid are copied.
  beit = np.concatenate([table, [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]]).astype(np.float32)
  out_beit = resize_offset_table(beit, (3, 3), (5, 5), extra=3)
  np.testing.assert_array_equal(out_beit[:25], out)
  np.testing.assert_array_equal(out_beit[25:], beit[9:])
  # Stacked blocks (a scanned layout) are resampled one by one.
  stacked = resize_offset_table(np.stack([table, 2 * table]), (3, 3), (5, 5))
  np.testing.assert_allclose(stacked[1], 2 * out, rtol=1e-6)


@pytest.mark.parametrize("n_in,n_out", [(11, 13), (13, 11), (23, 27)])
def test_resampling_matches_pytorch_bicubic(n_in, n_out):
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(n_in)
  table = rng.normal(size=(n_in * n_in, 3))
  ours = resize_offset_table(table, (n_in, n_in), (n_out, n_out))
  np.testing.assert_allclose(ours, reference_table(table, n_in, n_out), atol=1e-12)
  grid = torch.tensor(table.T.reshape(1, 3, n_in, n_in))
  theirs = torch.nn.functional.interpolate(grid, size=(n_out, n_out), mode="bicubic",
                                           align_corners=False)
  np.testing.assert_allclose(ours, theirs.numpy().reshape(3, -1).T, atol=1e-10)


# ----------------------------------------------------------------------------- hierarchical


def hier_model(windows=(6, 6), heads=(1, 2)):
  m = ConfigDict(encoders.encoder_config())
  m.update(encoder="hierarchical", variant="tiny_test", stage_depths=(1, 1), stage_heads=heads,
           window_sizes=windows, patch_size=4)
  return m


def hier_finetune(image_size, **model):
  c = config_lib.base_config("finetune")
  c.image_size = image_size
  c.model.update(dict(hier_model(**model)))
  return methods.get("finetune")(c, 1, num_classes=5)


def test_hierarchical_encoder_fine_tunes_with_larger_windows(monkeypatch, caplog):
  """SimMIM's Swin recipe in miniature: pre-trained at 48 px (stages 12^2 and 6^2 tokens,
  windows 6 -> tables 11^2), fine-tuned at 56 px with windows 7 (tables 13^2)."""
  spec = encoders.build(hier_model(), 48)
  saved = {"encoder": random_like(jax.eval_shape(spec.init, jax.random.key(0),
                                                 jnp.zeros((1, 48, 48, 1))), seed=1)}
  monkeypatch.setattr(pretrained, "read_params", lambda workdir, step: (3, saved))
  method = hier_finetune(56, windows=(7, 7))
  params = random_like(jax.eval_shape(method.init, jax.random.key(0)), seed=2)
  with caplog.at_level(logging.INFO, logger="mim_jax"):
    step, restored, _, what = method.load_pretrained(params, {}, "pre")
  assert (step, what) == (3, "encoder")
  have, got = flat(saved["encoder"]), flat(restored["encoder"])
  assert set(have) == set(got)
  tables = sorted(n for n in have if n.endswith("relative_position_bias_table"))
  assert tables == ["stage_0/block_0/attn/relative_position_bias_table",
                    "stage_1/block_0/attn/relative_position_bias_table"]
  for name in tables:
    assert have[name].shape[0] == 11 ** 2 and got[name].shape == (13 ** 2, have[name].shape[1])
    np.testing.assert_allclose(got[name], reference_table(have[name], 11, 13), atol=1e-5)
  for name in set(have) - set(tables):
    np.testing.assert_array_equal(got[name], have[name], err_msg=name)
  np.testing.assert_array_equal(restored["head"]["kernel"], params["head"]["kernel"])
  logged = caplog.text
  assert "resampled bicubically from (121, 2) to (169, 2)" in logged
  assert "stage_1/block_0/attn/relative_position_bias_table" in logged


def test_fine_tuned_classifier_restores_at_other_windows(monkeypatch):
  """A checkpoint with a head (a fine-tuned run) restored whole into a model with larger
  windows: its tables are resampled too; the head is the checkpoint's."""
  small = hier_finetune(48, windows=(6, 6))
  saved = random_like(jax.eval_shape(small.init, jax.random.key(0)), seed=3)
  monkeypatch.setattr(pretrained, "read_params", lambda workdir, step: (9, saved))
  big = hier_finetune(56, windows=(7, 7))
  params = random_like(jax.eval_shape(big.init, jax.random.key(0)), seed=4)
  _, restored, _, what = big.load_pretrained(params, {}, "ft")
  assert what == "classifier"
  name = "encoder/stage_0/block_0/attn/relative_position_bias_table"
  have, got = flat(saved), flat(restored)
  np.testing.assert_allclose(got[name], reference_table(have[name], 11, 13), atol=1e-5)
  np.testing.assert_array_equal(got["head/kernel"], have["head/kernel"])


def test_tables_that_cannot_be_resampled_still_fail():
  """Other head counts are a mismatch, reported as before."""
  spec = encoders.build(hier_model(heads=(1, 2)), 48)
  saved = random_like(jax.eval_shape(spec.init, jax.random.key(0), jnp.zeros((1, 48, 48, 1))), 5)
  other = encoders.build(hier_model(windows=(7, 7), heads=(1, 4)), 56)
  target = jax.eval_shape(other.init, jax.random.key(0), jnp.zeros((1, 56, 56, 1)))
  with pytest.raises(ckpt_lib.CheckpointMismatchError,
                     match=r"shape mismatch: stage_1/block_0/attn/relative_position_bias_table "
                           r"checkpoint \(121, 2\) vs model \(169, 4\)"):
    pretrained.adapt_encoder(saved, target, other, "test")


# ----------------------------------------------------------------------------- ViT


def vit_model(rel_pos):
  m = ConfigDict(encoders.encoder_config())
  m.update(variant="tiny_test/4", width=16, depth=2, heads=2, pos_embed="none", rel_pos=rel_pos,
           layer_scale=0.1, qkv_bias="qv", init="beit")
  return m


def test_vit_shared_bias_copied_into_blocks_on_a_larger_grid():
  """SimMIM's ViT: a shared table on a 3x3 patch grid (12 px, 5^2 offsets + 3 [CLS] entries)
  becomes a per-block table on 4x4 patches (16 px, 7^2 + 3)."""
  pre = encoders.build(vit_model("shared"), 12)
  saved = random_like(jax.eval_shape(pre.init, jax.random.key(0), jnp.zeros((1, 12, 12, 1))), 6)
  shared = np.asarray(saved["rel_pos_bias"]["table"])
  assert shared.shape == (5 * 5 + 3, 2)
  ft = encoders.build(vit_model("per_block"), 16, learnable_pos=True, final_norm=False)
  target = jax.eval_shape(ft.init, jax.random.key(0), jnp.zeros((1, 16, 16, 1)))
  out = pretrained.adapt_encoder(saved, target, ft, "test")
  expected = reference_table(shared, 5, 7, extra=3)
  for i in range(2):
    table = out["transformer"][f"block_{i}"]["attn"]["rel_pos_bias"]["table"]
    assert table.shape == (7 * 7 + 3, 2)
    np.testing.assert_allclose(table, expected, atol=1e-5)
    np.testing.assert_array_equal(table[-3:], shared[-3:])
  have, got = flat(saved), flat(out)
  for name in set(got) & set(have):
    np.testing.assert_array_equal(got[name], have[name], err_msg=name)
  # The same table kept shared (e.g. a linear probe) is resampled in place.
  probe = encoders.build(vit_model("shared"), 16, learnable_pos=True)
  target = jax.eval_shape(probe.init, jax.random.key(0), jnp.zeros((1, 16, 16, 1)))
  out = pretrained.adapt_encoder(saved, target, probe, "test")
  np.testing.assert_allclose(out["rel_pos_bias"]["table"], expected, atol=1e-5)
