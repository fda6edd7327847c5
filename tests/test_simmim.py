"""SimMIM (simmim.md): block masking, the L1 loss, SimMIM's ViT options on the shared ViT module,
its parameter count, fine-tuning from its shared relative position bias, a run with AMT, and
SimMIM on the hierarchical encoder ([MASK] placement, pixel-level loss, a short run)."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mim_jax import methods, train
from mim_jax import config as config_lib
from mim_jax.core import checkpoint as ckpt_lib
from mim_jax.interop import pretrained
from mim_jax.masking import sampling
from mim_jax.models import encoders
from mim_jax.models.patches import patchify, unpatchify
from mim_jax.models.posembed import sincos_2d
from mim_jax.models.vit import RelativePositionBias
from mim_jax.objectives import losses
from test_amt import IMAGENET_INFO
from test_train import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_block_masking_counts_and_cells():
  cells = sampling.block_masking(jax.random.key(0), 64, 49, 0.6)
  assert np.all(np.asarray(cells).sum(1) == 30)             # 49 cells at 224 / 32: 30 masked
  assert sampling.num_masked_cells(36, 0.6) == 22             # Swin at 192 px
  # Cells are spread over all positions.
  assert np.all(np.asarray(cells).mean(0) > 0.3)
  patches = np.asarray(sampling.cells_to_patches(cells, (7, 7), 2)).reshape(64, 14, 14)
  grid = np.asarray(cells).reshape(64, 7, 7)
  np.testing.assert_array_equal(patches[:, ::2, ::2], grid)
  np.testing.assert_array_equal(patches[:, 1::2, 1::2], grid)
  ids = sampling.cell_patch_ids((7, 7), 2)
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


def test_finetune_restores_the_encoder_of_a_vit_simmim_checkpoint(monkeypatch):
  """A SimMIM pre-training checkpoint ({encoder, decoder}) gives a fine-tune model its encoder,
  with the shared bias copied into every block (it is not mistaken for a classifier)."""
  pre = simmim_tiny()
  saved = jax.device_get(jax.jit(methods.get("simmim")(pre, 1).init)(jax.random.key(0)))
  assert set(saved) == {"encoder", "decoder"}
  monkeypatch.setattr(pretrained, "read_params", lambda workdir, step: (7, saved))
  ft = config_lib.base_config("finetune")
  ft.model.update({k: pre.model[k] for k in encoders.encoder_config()})
  ft.model.rel_pos, ft.image_size = "per_block", 16
  method = methods.get("finetune")(ft, 1, num_classes=10)
  params = jax.device_get(method.init(jax.random.key(1)))
  step, restored, _, what = method.load_pretrained(params, {}, "a SimMIM run")
  assert (step, what) == (7, "encoder")
  block = restored["encoder"]["transformer"]["block_3"]
  np.testing.assert_array_equal(block["attn"]["rel_pos_bias"]["table"],
                                saved["encoder"]["rel_pos_bias"]["table"])
  np.testing.assert_array_equal(block["mlp"]["fc1"]["kernel"],
                                saved["encoder"]["transformer"]["block_3"]["mlp"]["fc1"]["kernel"])
  np.testing.assert_array_equal(restored["head"]["kernel"], params["head"]["kernel"])


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


# -------------------------------------------------------------------------------- hierarchical
HIER_DIGITS = "simmim_digits.py:encoder=hierarchical,runlocal"


def hier_config(spec=HIER_DIGITS, **overrides):
  c = config_lib.load(os.path.join(ROOT, "configs", spec))
  for key, value in overrides.items():
    config_lib.override(c, key, str(value))
  return c


def pixel_mask(cells, image_size, cell):
  """[B, cells] -> [B, H, W] by explicit cell boxes (row-major cells)."""
  cells = np.asarray(cells)
  side = image_size // cell
  out = np.zeros((cells.shape[0], image_size, image_size), np.float32)
  for n in range(side * side):
    r, c = divmod(n, side)
    out[:, r * cell:(r + 1) * cell, c * cell:(c + 1) * cell] = cells[:, n, None, None]
  return out


def slow_hier_l1(pred, images, cells, cell, stride):
  """SimMIM's loss written out: token t's output unit (i * s + j) * C + k is pixel
  (t_row * s + i, t_col * s + j) of channel k; the L1 over masked pixels, divided by
  (masked pixels + 1e-5) and by C."""
  pred, images = np.asarray(pred, np.float64), np.asarray(images, np.float64)
  b, h, _, ch = images.shape
  side = h // stride
  image_pred = np.zeros_like(images)
  for t in range(side * side):
    r, c = divmod(t, side)
    for i in range(stride):
      for j in range(stride):
        for k in range(ch):
          image_pred[:, r * stride + i, c * stride + j, k] = pred[:, t, (i * stride + j) * ch + k]
  mask = pixel_mask(cells, h, cell)[..., None]
  return (np.abs(image_pred - images) * mask).sum() / (mask.sum() + 1e-5) / ch


@pytest.fixture(scope="module")
def hier_digits():
  """The digits SimMIM on the hierarchical encoder, one block per stage, initialized."""
  method = methods.get("simmim")(hier_config(**{"model.stage_depths": "(1, 1)"}), 1)
  return method, jax.jit(method.init)(jax.random.key(0))


def test_hier_mask_token_replaces_masked_tokens_before_positions(hier_digits):
  method, params = hier_digits
  module = method.encoder.module                      # digits: 2 px patches, 8x8 stage-0 tokens
  assert (module.patch_size, method.stride, method.unit) == (2, 4, 4)
  images = jax.random.normal(jax.random.key(1), (2, 16, 16, 1))
  assert "mask_token" not in jax.eval_shape(module.init, jax.random.key(0), images)["params"]
  enc = params["encoder"]
  token = np.asarray(enc["mask_token"])
  assert token.shape == (1, 1, 64) and 0.01 < token.std() < 0.03

  cells = np.zeros((2, 16), np.float32)
  cells[0, [0, 5, 6, 15]] = 1
  cells[1, [3, 9]] = 1
  # Stage-0 token mask by hand: cell (r, c) of the 4x4 grid covers tokens 2r..2r+1, 2c..2c+1.
  token_mask = np.repeat(np.repeat(cells.reshape(2, 4, 4), 2, 1), 2, 2).reshape(2, 64)
  np.testing.assert_array_equal(method._token_mask(jnp.asarray(cells)), token_mask)
  noise = jax.random.normal(jax.random.key(2), images.shape)
  changed = images + 3.0 * noise * pixel_mask(cells, 16, 4)[..., None]
  zeros = np.zeros_like(token_mask)

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.module.name in ("patch_norm", "stage_0") and context.method_name == "__call__":
      seen[context.module.name] = args[0] if context.module.name == "stage_0" else out
    return out

  @jax.jit
  def apply(x, m):
    """Encoder output, and the patch LayerNorm's output and the first stage's input."""
    seen.clear()
    with nn.intercept_methods(record):
      out = module.apply({"params": enc}, x, token_mask=m)
    return out, seen["patch_norm"], seen["stage_0"]

  seen = {}
  out1, normed, stage_in = apply(images, token_mask)
  out2 = apply(changed, token_mask)[0]
  np.testing.assert_array_equal(out1, out2)          # masked pixels are never seen
  assert np.abs(np.asarray(apply(images, zeros)[0] - apply(changed, zeros)[0])).max() > 1e-2
  # Placement: the first stage receives LN(patch_embed) * (1 - w) + mask_token * w + sin-cos.
  w = token_mask.reshape(2, 8, 8, 1)
  pos = sincos_2d(64, 8, 8).reshape(1, 8, 8, 64)
  want = np.asarray(normed) * (1 - w) + token.reshape(1, 1, 1, 64) * w + pos
  np.testing.assert_allclose(np.asarray(stage_in), want, atol=1e-6)


def test_hier_loss_equals_a_slow_pixel_computation(hier_digits):
  # Digits: 4 px cells = the stride (one last-stage token per cell).
  method, params = hier_digits
  images = jax.random.normal(jax.random.key(1), (3, 16, 16, 1))
  rngs = {"mask": jax.random.key(2), "drop_path": jax.random.key(3)}
  loss, (metrics_, _) = jax.jit(method.loss)(params, {}, {"image": images}, rngs)
  cells = np.asarray(sampling.block_masking(rngs["mask"], 3, 16, 0.6))
  assert np.all(cells.sum(1) == 10)                       # ceil(16 * 0.6)
  token_mask = np.repeat(np.repeat(cells.reshape(3, 4, 4), 2, 1), 2, 2).reshape(3, 64)
  pred = jax.jit(method.model.apply)({"params": params}, images, token_mask)
  assert pred.shape == (3, 16, 16)                        # 4x4 tokens, 4 * 4 * 1 pixels each
  np.testing.assert_allclose(float(loss), slow_hier_l1(pred, images, cells, 4, 4), rtol=1e-5)
  assert float(metrics_["loss"]) == float(loss)
  assert "head" not in params and params["decoder"]["kernel"].shape == (128, 16)

  # Cells smaller than the stride (16 px cells, stride 32: the ImageNet runlocal) and cells
  # that are neither (48 px cells, stride 32, 96 px images: 16 px loss blocks).
  cases = [(hier_config("simmim_imagenet.py:encoder=hierarchical,runlocal"), 16, 16),
           (hier_config("simmim_imagenet.py:encoder=hierarchical,runlocal", image_size=96,
                        **{"model.mask_patch_size": 48,
                           "model.window_sizes": "(3, 3, 3, 3)"}), 48, 16)]
  for k, (c, cell, unit) in enumerate(cases):
    method = methods.get("simmim")(c, 3)
    assert (method.stride, method.cell, method.unit) == (32, cell, unit)
    size = c.image_size
    keys = jax.random.split(jax.random.key(10 + k), 3)
    images = jax.random.normal(keys[0], (2, size, size, 3))
    pred = jax.random.normal(keys[1], (2, (size // 32) ** 2, 32 * 32 * 3))
    cells = sampling.block_masking(keys[2], 2, method.num_cells, 0.6)
    got = float(method.hier_l1(pred, images, cells))
    np.testing.assert_allclose(got, slow_hier_l1(pred, images, cells, cell, 32), rtol=1e-5)


def test_hier_short_run_and_finetune_init(tmp_path):
  c = hier_config(**{"model.stage_depths": "(1, 1)", "batch_size": 16, "total_steps": 3,
                     "checkpoint.every_steps": 3, "image_every": 3, "log_every": 1,
                     "probe.enabled": False, "probe.random_init": False})
  workdir = str(tmp_path / "simmim_hier")
  train.train_and_evaluate(c, workdir)
  losses_ = [r["loss"] for r in read_metrics(workdir) if "loss" in r]
  assert len(losses_) == 3 and all(np.isfinite(losses_)) and 0 < losses_[0] < 5
  assert os.listdir(os.path.join(workdir, "images"))      # the reconstruction grid

  # A fine-tune model of the same encoder takes it, without the [MASK] token and the pixel head.
  _, saved = pretrained.read_params(workdir)
  assert "mask_token" in saved["encoder"]
  ft = config_lib.load(os.path.join(ROOT, "configs", "finetune_digits.py:runlocal"))
  for key, value in {"model.encoder": "hierarchical", "model.variant": "digits",
                     "model.width": "0", "model.stage_depths": "(1, 1)"}.items():
    config_lib.override(ft, key, value)
  method = methods.get("finetune")(ft, 1, num_classes=10)
  shapes = jax.eval_shape(method.init, jax.random.key(0))
  fresh = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  step, params, _, what = method.load_pretrained(fresh, {}, workdir)
  assert (step, what) == (3, "encoder") and "mask_token" not in params["encoder"]
  want = dict(saved["encoder"])
  del want["mask_token"]
  jax.tree.map(np.testing.assert_array_equal, params["encoder"], want)


def test_hier_rejects_amt_and_bad_cells():
  with pytest.raises(ValueError, match="amt.*vit"):
    methods.get("simmim")(hier_config(**{"model.masking": "amt"}), 1)
  for cell in (3, 6):                   # not a multiple of the 2 px patch; does not divide 16
    with pytest.raises(ValueError, match="mask_patch_size"):
      methods.get("simmim")(hier_config(**{"model.mask_patch_size": cell}), 1)
