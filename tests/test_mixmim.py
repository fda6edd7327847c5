"""MixMIM pre-training (mixmim.md): sizes of the pre-training model, masks, partners and
un-mixing, the information each prediction may use, the loss against a slow reference, the
plain-ViT variant's isolation, and a short digits run whose encoder a fine-tune restores.

Big models are only traced (jax.eval_shape); behaviour is tested on tiny encoders."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mim_jax import methods, train
from mim_jax import config as config_lib
from mim_jax.interop import pretrained
from mim_jax.masking import mixing
from mim_jax.models import vit_encoder
from mim_jax.models.patches import patchify
from test_train import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def mixmim(encoder="hierarchical", variant="tiny_test", image_size=32, channels=3, **model):
  """A tiny MixMIM: hierarchical ``tiny_test`` cut to two stages (8x8 tokens in 4x4 windows,
  then 4x4 tokens; 4x4 cells of 8 px at 32 px), or a 2-block ViT; batch 4."""
  c = config_lib.base_config("mixmim")
  c.model.encoder, c.model.variant = encoder, variant
  c.image_size = image_size
  c.batch_size = 4
  c.model.decoder_width, c.model.decoder_depth, c.model.decoder_heads = 32, 1, 2
  if encoder == "hierarchical":
    c.model.stage_depths, c.model.stage_heads, c.model.window_sizes = (1, 1), (1, 2), (4, 4)
  else:
    c.model.width, c.model.depth, c.model.heads = 32, 2, 2
  c.model.update(model)
  return methods.get("mixmim")(c, channels)


@pytest.fixture(scope="module")
def tiny_hier():
  """MixMIM on the tiny two-stage hierarchical encoder at 32 px, 2 mask groups, initialized."""
  method = mixmim(mask_groups=2)
  return method, jax.jit(method.init)(jax.random.key(0))


# ----------------------------------------------------------------------------- sizes


def test_pretraining_model_counts_of_mixmim_b():
  """114.67 M with the two fixed sin-cos tables (56*56*128 and 7*7*512), decoder 27.35 M."""
  c = config_lib.base_config("mixmim")
  c.image_size, c.batch_size = 224, 16
  method = methods.get("mixmim")(c, 3)
  shapes = jax.eval_shape(method.init, jax.random.key(0))
  assert set(shapes) == {"encoder", "decoder"}
  encoder_table, decoder_table = 56 * 56 * 128, 7 * 7 * 512
  decoder = count(shapes["decoder"]) + decoder_table
  total = count(shapes) + encoder_table + decoder_table
  assert round(total / 1e6, 2) == 114.67 and round(decoder / 1e6, 2) == 27.35
  # The encoder is the classifier's minus its 1000-way head (tests/test_hierarchical.py).
  assert count(shapes["encoder"]) == 87_942_944 - (1024 * 1000 + 1000)
  assert "mask_token" not in shapes["encoder"]          # mixing needs no [MASK] in the encoder
  assert shapes["decoder"]["embed"]["kernel"].shape == (1024, 512)
  assert shapes["decoder"]["pred"]["kernel"].shape == (512, 32 * 32 * 3)
  assert method.cell_grid == (7, 7) and method.factor == 8


# ----------------------------------------------------------------------------- masks, partners


def test_one_mask_per_group_upsampled_to_the_first_grid():
  c = config_lib.base_config("mixmim")
  c.image_size, c.batch_size, c.model.mask_groups = 224, 8, 2
  method = methods.get("mixmim")(c, 3)
  tokens, cells = (np.asarray(x) for x in method.masks(jax.random.key(3), 8, 2))
  assert cells.shape == (8, 49) and tokens.shape == (8, 56 * 56)
  assert np.all(cells.sum(1) == 24)                      # int(49 * 0.5)
  assert np.all(cells[:4] == cells[0]) and np.all(cells[4:] == cells[4])
  assert np.any(cells[0] != cells[4])                    # each group draws its own
  for b in (0, 4):
    grid = np.kron(cells[b].reshape(7, 7), np.ones((8, 8)))
    np.testing.assert_array_equal(tokens[b].reshape(56, 56), grid)
  # Masks of successive draws cover every cell about equally.
  draws = np.stack([np.asarray(mixing.group_masks(jax.random.key(i), 1, 49, 0.5))[0]
                    for i in range(200)])
  assert 0.35 < draws.mean(0).min() and draws.mean(0).max() < 0.65


def test_partners_reverse_each_group():
  x = jnp.arange(8)
  np.testing.assert_array_equal(mixing.partners(x, 2), [3, 2, 1, 0, 7, 6, 5, 4])
  np.testing.assert_array_equal(mixing.partners(x, 1), x[::-1])
  np.testing.assert_array_equal(mixing.partners(mixing.partners(x, 4), 4), x)
  with pytest.raises(ValueError, match="does not split into 3"):
    mixing.partners(x, 3)


def test_unmixing_bookkeeping():
  """Label every decoder output by (copy, sequence, position): each image's prediction at each
  position comes from a copy where that position is [MASK] and every kept token is of that
  image, and every (image, position) is predicted exactly once."""
  b, n, groups = 6, 9, 2
  cells = np.asarray(mixing.per_example(mixing.group_masks(jax.random.key(1), groups, n, 0.5),
                                        b))
  source = np.asarray(mixing.mix(jnp.arange(b)[:, None].repeat(n, 1)[..., None],
                                 jnp.asarray(cells), groups))[..., 0]   # image behind each token
  kept = np.concatenate([1 - cells, cells])            # copy 1 keeps m = 0, copy 2 keeps m = 1
  labels = np.stack(np.meshgrid(np.arange(2 * b), np.arange(n), indexing="ij"), -1)
  out = np.asarray(mixing.unmix(jnp.asarray(labels, jnp.float32), jnp.asarray(cells), groups))
  seen = set()
  for i in range(b):
    for p in range(n):
      row, pos = (int(v) for v in out[i, p])
      assert pos == p and kept[row, p] == 0
      seq = row % b
      assert np.all(source[seq][kept[row] == 1] == i)
      seen.add((row, p))
  assert len(seen) == b * n


# ----------------------------------------------------------------------------- information flow


@pytest.mark.parametrize("encoder", ["hierarchical", "vit"])
def test_each_prediction_uses_only_the_other_half_of_its_own_image(encoder, tiny_hier):
  """The un-mixed prediction of image i depends on image i alone (the partner and the other
  group change nothing), and at a cell with mask value v only on i's cells of value 1 - v."""
  if encoder == "hierarchical":
    (method, params), size = tiny_hier, 32
  else:
    method, size = mixmim("vit", "tiny_test/4", 16, mask_groups=2), 16
    params = jax.jit(method.init)(jax.random.key(0))
  rng = jax.random.key(5)
  predict = jax.jit(lambda x: method.predict(params, x, rng, 2))
  x = jax.random.normal(jax.random.key(1), (4, size, size, 3))
  base, cells = (np.asarray(a) for a in predict(x))
  s = method.stride

  def changed(y):
    return np.abs(np.asarray(predict(y)[0]) - base).max(-1) > 1e-4   # [B, N]

  for j in (0, 2):                          # image 1's partner, and an image of the other group
    diff = changed(x.at[j].add(1.0))
    assert not diff[1].any() and diff[j].any()
  for v in (0, 1):                          # image 1's cells of value v
    pixels = mixing.upsample(jnp.asarray(cells[1:2] == v, jnp.float32), method.cell_grid, s)
    diff = changed(x.at[1].add(pixels.reshape(size, size, 1)))[1]
    assert not diff[cells[1] == v].any() and diff[cells[1] != v].all()


def test_plain_vit_isolation_needs_the_attention_bias(monkeypatch):
  """Exact in bfloat16 compute too: the -1e30 bias meets float32 logits."""
  method = mixmim("vit", "tiny_test/4", 16, mask_groups=1)
  params = jax.jit(method.init)(jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
  y = x.at[3].add(1.0)                        # image 0's partner
  rng = jax.random.key(2)

  def leak(method=method):
    predict = jax.jit(lambda images: method.predict(params, images, rng, 1)[0][0])
    return float(jnp.abs(predict(x) - predict(y)).max())
  assert leak() < 1e-5
  half = mixmim("vit", "tiny_test/4", 16, mask_groups=1)
  half.config.compute_dtype = "bfloat16"
  half = methods.get("mixmim")(half.config, 3)
  assert half.dtype == jnp.bfloat16 and leak(half) == 0.0
  monkeypatch.setattr(vit_encoder, "isolation_bias", lambda groups: jnp.zeros(
      (groups.shape[0], 1, groups.shape[1], groups.shape[1])))
  assert leak() > 1e-3
  with pytest.raises(ValueError, match="ids_keep must be None"):
    method.encoder.module.apply({"params": params["encoder"]}, patchify(x, 4),
                                jnp.zeros((4, 8), jnp.int32), mix_mask=jnp.zeros((4, 16)))


# ----------------------------------------------------------------------------- loss


def test_loss_matches_a_slow_reference(tiny_hier):
  method, params = tiny_hier
  assert method.norm_pix
  images = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  rngs = {"mask": jax.random.key(2), "drop_path": jax.random.key(3)}
  loss = float(jax.jit(method.loss)(params, {}, {"image": images}, rngs)[0])
  token_mask, cells = method.masks(rngs["mask"], 4, 2)
  raw = np.asarray(jax.jit(method.model.apply, static_argnums=4)(
      {"params": params}, images, token_mask, cells, 2))
  cells, x = np.asarray(cells), np.asarray(images, np.float64)
  partner = {0: 1, 1: 0, 2: 3, 3: 2}
  (side, _), s = method.cell_grid, method.stride
  assert (side, s) == (4, 8)
  total = 0.0
  for i in range(4):
    for p in range(side * side):
      r, col = divmod(p, side)
      target = x[i, r * s:(r + 1) * s, col * s:(col + 1) * s].reshape(-1)
      target = (target - target.mean()) / np.sqrt(target.var(ddof=1) + 1e-6)
      pred = raw[i, p] if cells[i, p] else raw[4 + partner[i], p]
      total += np.sum((pred - target) ** 2)
  assert loss == pytest.approx(total / (4 * side * side * s * s * 3), rel=1e-5)


def test_configuration_errors():
  with pytest.raises(ValueError, match="does not split into 3 mask groups"):
    mixmim(mask_groups=3)
  with pytest.raises(ValueError, match="mixed with itself"):
    mixmim(mask_groups=4)                           # batch 4: one image per group
  with pytest.raises(ValueError, match="mixes 0 of 16 cells"):
    mixmim(mask_ratio=0.05)
  with pytest.raises(ValueError, match="mixes 16 of 16 cells"):
    mixmim(mask_ratio=1.0)


# ----------------------------------------------------------------------------- a run


def test_digits_run_and_fine_tune_restores_its_encoder(tmp_path):
  workdir = str(tmp_path / "mixmim")
  c = config_lib.load(os.path.join(ROOT, "configs", "mixmim_digits.py:runlocal"))
  for key, value in {"total_steps": "4", "batch_size": "16", "warmup_epochs": "0.0",
                     "checkpoint.every_steps": "4", "image_every": "4", "log_every": "2",
                     "probe.enabled": "False", "probe.random_init": "False",
                     "model.stage_depths": "(1, 1)", "model.decoder_depth": "1"}.items():
    config_lib.override(c, key, value)
  train.train_and_evaluate(c, workdir)
  losses = [r["loss"] for r in read_metrics(workdir) if "loss" in r]
  assert losses and np.all(np.isfinite(losses))
  assert os.path.exists(os.path.join(workdir, "images", "reconstruction_00000004.png"))
  ft = config_lib.load(os.path.join(ROOT, "configs", "finetune_digits.py:runlocal"))
  for key, value in {"model.encoder": "hierarchical", "model.variant": "digits",
                     "model.width": "0",    # the ViT demo sets width 128
                     "model.stage_depths": "(1, 1)"}.items():
    config_lib.override(ft, key, value)
  method = methods.get("finetune")(ft, 1, num_classes=10)
  params = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype),
                        jax.eval_shape(method.init, jax.random.key(0)))
  _, restored, _, what = method.load_pretrained(params, {}, workdir)
  _, saved = pretrained.read_params(workdir)
  assert what == "encoder"
  jax.tree.map(np.testing.assert_array_equal, restored["encoder"], saved["encoder"])
  features = jax.jit(method.features, static_argnums=2)(restored, jnp.zeros((2, 16, 16, 1)),
                                                        "avg")
  assert features.shape == (2, 128) and np.all(np.isfinite(features))


def test_imagenet_recipe_matches_mixmim_md():
  load = lambda arg: config_lib.load(os.path.join(ROOT, "configs", f"mixmim_imagenet.py:{arg}"))
  for variant, epochs in (("B", 300), ("B", 600), ("L", 600)):
    c = load(f"variant={variant},epochs={epochs}")
    assert (c.model.encoder, c.model.variant, c.total_epochs) == ("hierarchical", variant, epochs)
    assert (c.batch_size, c.optimizer.blr, c.warmup_epochs, c.optimizer.min_lr) == \
        (2048, 1.5e-4, 40.0, 0.0)
    assert (c.optimizer.b1, c.optimizer.b2, c.optimizer.weight_decay) == (0.9, 0.95, 0.05)
    assert (c.model.mask_ratio, c.model.norm_pix_loss, c.model.drop_path) == (0.5, True, 0.0)
    assert (c.model.decoder_width, c.model.decoder_depth, c.model.decoder_heads) == (512, 8, 16)
    assert c.data.crop_scale == (0.2, 1.0) and c.optimizer.grad_clip_norm == 0.0
  assert load("encoder=vit").model.variant == "B/16"
  with pytest.raises(ValueError, match="epochs must be one of"):
    load("epochs=800")
